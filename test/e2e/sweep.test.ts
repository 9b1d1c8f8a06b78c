/**
 * Hyperparameter sweeps against the real services: an asha sweep of 8 tiny
 * pretraining trials (test/fixtures/sweep.yaml) on the GPU queue, served on
 * the CPU by a GPU worker in a child process; then the same sweep with that
 * worker SIGKILLed during rung 2 and restarted.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Client, Connection } from '@temporalio/client';
import { keys } from '../../activities/storage/keys.js';
import { createObjectStore, type ObjectStore } from '../../activities/storage/store.js';
import type { OutputManifest } from '../../activities/types.js';
import { fetchRun, renderStatus } from '../../cli/run-status.js';
import { loadSpecFile, renderRunInput } from '../../cli/spec-file.js';
import type { PipelineSpec } from '../../schemas/pipeline.js';
import { s3Credentials } from '../../worker/config.js';
import type { RunResult, StageStatus } from '../../workflows/pipeline.js';
import type { SweepStatus } from '../../workflows/sweep.js';
import { expectedOutcome } from '../../workflows/sweep-plan.js';
import { ROOT, stagesPython, unique, waitFor } from '../helpers/env.js';
import { startTestWorkers, type TestWorkers } from '../helpers/workers.js';
import { startWorkerProcess, stopWorkerProcess, type WorkerProcess } from '../helpers/worker-process.js';

const FIXTURE = 'test/fixtures/sweep.yaml';

describe('sweeps on one GPU queue', () => {
  let workers: TestWorkers;
  let client: Client;
  let storage: ObjectStore;
  let gpuWorker: WorkerProcess | undefined;
  let undisturbed: { best: string; promoted: string[][]; value: number } | undefined;

  const gpuEnv = () => ({
    TANREN_GPU_QUEUE: workers.queues.gpu,
    TANREN_WORK_DIR: workers.workRoot,
    TANREN_PYTHON: stagesPython(),
    TANREN_PROGRESS_INTERVAL_MS: '200',
    TANREN_KILL_GRACE_MS: '5000',
    TANREN_LOG_LEVEL: 'info',
  });

  before(async () => {
    workers = await startTestWorkers({ prefix: 'sweep', python: stagesPython(), gpu: false, envOverrides: { TANREN_CPU_CONCURRENCY: 2 } });
    gpuWorker = await startWorkerProcess('gpu', gpuEnv(), workers.workRoot);
    client = new Client({ connection: await Connection.connect({ address: workers.env.TEMPORAL_ADDRESS }), namespace: workers.env.TEMPORAL_NAMESPACE });
    storage = createObjectStore({ endpoint: workers.env.TANREN_S3_ENDPOINT, bucket: workers.env.TANREN_BUCKET, ...s3Credentials(workers.env) });
  });
  after(async () => {
    await stopWorkerProcess(gpuWorker, 'SIGKILL');
    await workers?.stop();
    await client?.connection.close();
  });

  const start = (workflowId: string, mutate: (spec: PipelineSpec) => void = () => {}) => {
    const spec = loadSpecFile(path.join(ROOT, FIXTURE));
    mutate(spec);
    const input = renderRunInput(spec, { file: FIXTURE, env: workers.env });
    (input.spec as PipelineSpec).queues = { cpu: workers.queues.cpu, gpu: workers.queues.gpu };
    return client.workflow.start('pipelineWorkflow', { taskQueue: workers.queues.control, workflowId, args: [input] });
  };

  /** The trials promoted out of each rung, in trial order. */
  const promotedByRung = (sweep: SweepStatus) => [2, 3].map((rung) => sweep.trials.filter((t) => t.runs.some((r) => r.rung === rung)).map((t) => t.trial));

  it(
    'asha: 4 trials stop at rung 1, 2 at rung 2, the best of 2 finishers is chosen; promotion resumes; trials never overlap; SFT gets the best model',
    { timeout: 900_000 },
    async (tc) => {
      const workflowId = unique('sweep-asha');
      const result = (await (await start(workflowId)).result()) as RunResult;
      const pre = result.stages.find((s) => s.id === 'pretrain') as StageStatus;
      assert.equal(pre.state, 'succeeded');
      const sweep = pre.sweep!;
      assert.ok(sweep, 'the run result carries the sweep');
      assert.deepEqual(sweep.rungs, [3, 6, 12]);
      assert.equal(sweep.trials.length, 8);

      const expected = expectedOutcome(8, 2, 3);
      assert.deepEqual(expected, { stoppedAtRung: [4, 2], finished: 2 });
      const count = (state: string, rung?: number) => sweep.trials.filter((t) => t.state === state && (rung === undefined || t.rung === rung)).length;
      assert.equal(count('stopped-early', 1), 4, JSON.stringify(sweep.trials.map((t) => [t.trial, t.state, t.rung])));
      assert.equal(count('stopped-early', 2), 2);
      assert.equal(count('completed', 3), 1);
      assert.equal(count('best', 3), 1);
      assert.equal(count('failed'), 0);

      // Promotion continues the step count from the rung checkpoint.
      for (const t of sweep.trials) {
        assert.deepEqual(
          t.runs.map((r) => r.rung),
          Array.from({ length: t.rung }, (_, k) => k + 1),
          t.trial,
        );
        assert.deepEqual(
          t.runs.map((r) => r.step),
          [3, 6, 12].slice(0, t.rung),
          t.trial,
        );
        assert.equal(t.runs[0].resumedFrom, undefined, `${t.trial} started fresh`);
        for (const r of t.runs.slice(1)) assert.equal(r.resumedFrom, `step-${String(sweep.rungs[r.rung - 2]).padStart(6, '0')}`, `${t.trial} rung ${r.rung}`);
        assert.equal(typeof t.metric, 'number');
      }
      const best = sweep.trials.find((t) => t.state === 'best')!;
      const other = sweep.trials.find((t) => t.state === 'completed')!;
      assert.ok(best.metric! <= other.metric!, 'the best finisher has the lower loss');
      assert.equal(sweep.best, best.trial);
      assert.match(sweep.reason!, /lowest loss/);
      // The promoted trials were the best of their rung (loss at the rung boundary).
      const trialManifest = JSON.parse(await storage.getText(keys.manifest(workflowId, `${best.trial}`))) as OutputManifest;
      assert.equal(trialManifest.result.resumed_from, 'step-000006', 'the last rung resumed from the rung-2 checkpoint');
      assert.equal(trialManifest.result.steps, 12);

      // One GPU: no two trial-rungs ever overlapped in time.
      const runs = sweep.trials.flatMap((t) => t.runs.map((r) => ({ ...r, trial: t.trial }))).sort((a, b) => Date.parse(a.startedAt) - Date.parse(b.startedAt));
      assert.equal(runs.length, 8 + 4 + 2);
      for (let i = 1; i < runs.length; i++) {
        assert.ok(
          Date.parse(runs[i].startedAt) >= Date.parse(runs[i - 1].endedAt),
          `${runs[i - 1].trial} r${runs[i - 1].rung} and ${runs[i].trial} r${runs[i].rung} overlapped`,
        );
      }

      // The stage's result and manifest record the choice; downstream got the best trial's model.
      const choice = pre.result!.sweep as { best_trial: string; params: Record<string, unknown>; metric: string; reason: string };
      assert.equal(choice.best_trial, best.trial);
      assert.deepEqual(choice.params, best.params);
      assert.equal(choice.metric, 'loss');
      const stageManifest = JSON.parse(await storage.getText(keys.manifest(workflowId, 'pretrain'))) as OutputManifest & { sweptFrom?: string };
      assert.equal(stageManifest.sweptFrom, best.trial);
      assert.deepEqual(stageManifest.files, trialManifest.files);
      const model = (m: OutputManifest) => m.files.find((f) => f.path === 'model/model.safetensors')!.sha256;
      assert.equal(model(stageManifest), model(trialManifest));
      const sft = result.stages.find((s) => s.id === 'sft')!;
      assert.equal(sft.state, 'succeeded');
      const sftManifest = JSON.parse(await storage.getText(sft.manifestKey!)) as OutputManifest;
      assert.ok(sftManifest.files.some((f) => f.path === 'model/model.safetensors'));

      // `tanren status` shows the trials as a group.
      const text = renderStatus(await fetchRun(client, workflowId));
      assert.match(text, /pretrain sweep: asha, 8 trials, metric loss \(min\)/);
      for (const t of sweep.trials) assert.ok(text.includes(t.trial.replace(/^pretrain\./, '')), t.trial);
      assert.match(text, /stopped-early/);
      assert.match(text, /best/);
      undisturbed = { best: best.trial, promoted: promotedByRung(sweep), value: best.metric! };

      // Bounded history: a handful of events per trial-rung (docs/sweeps.md says ~6).
      const { historyLength } = await client.workflow.getHandle(workflowId).describe();
      tc.diagnostic(`history: ${historyLength} events for 3 data stages, 14 trial-rungs, the publish and SFT`);
      assert.ok(historyLength <= 14 * 7 + 80, `${historyLength} events`);
    },
  );

  it('the GPU worker SIGKILLed during rung 2: the sweep completes with the same best trial as the undisturbed run', { timeout: 900_000 }, async () => {
    assert.ok(undisturbed, 'needs the undisturbed run of the first test');
    const workflowId = unique('sweep-kill');
    // Only the sweep: the data stages are cache hits, the SFT was checked above.
    const handle = await start(workflowId, (spec) => {
      spec.stages = spec.stages.filter((s) => s.id !== 'sft');
    });
    await waitFor(
      'a rung-2 trial heartbeating on the GPU worker',
      async () => {
        const desc = await handle.describe();
        return (desc.raw.pendingActivities ?? []).find(
          (p) => /@r2$/.test(p.activityId ?? '') && p.lastHeartbeatTime && (p.heartbeatDetails?.payloads?.length ?? 0) > 0,
        );
      },
      600_000,
      100,
    );
    // `tanren status` sees the trial running at rung 2, with its live step.
    const live = (await fetchRun(client, workflowId)).status!.stages.find((s) => s.id === 'pretrain')!.sweep!;
    assert.deepEqual(
      live.trials.filter((t) => t.state === 'running').map((t) => t.rung),
      [2],
    );
    assert.equal(live.trials.filter((t) => t.state === 'stopped-early').length, 4);
    await stopWorkerProcess(gpuWorker, 'SIGKILL');
    gpuWorker = await startWorkerProcess('gpu', gpuEnv(), workers.workRoot);
    const result = (await handle.result()) as RunResult;
    const sweep = (result.stages.find((s) => s.id === 'pretrain') as StageStatus).sweep!;
    const retried = sweep.trials.flatMap((t) => t.runs.filter((r) => r.attempt >= 2).map((r) => ({ trial: t.trial, ...r })));
    assert.equal(retried.length, 1, `one trial-rung was retried after the kill: ${JSON.stringify(retried)}`);
    assert.equal(retried[0].rung, 2);
    assert.equal(retried[0].step, 6, 'the retried rung still ends at its boundary');
    assert.equal(sweep.best, undisturbed.best);
    assert.deepEqual(promotedByRung(sweep), undisturbed.promoted);
    assert.equal(sweep.trials.find((t) => t.state === 'best')!.metric, undisturbed.value, 'same loss: the resumed trial trained exactly as before');
  });
});
