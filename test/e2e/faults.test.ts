/**
 * Fault injection against the real services: each test runs a pipeline and
 * breaks one thing — MinIO, the Temporal server, memory, a cached object —
 * and checks that the run still completes with nothing lost, or says why not.
 * Tests wait on conditions (events, objects, states), never on fixed sleeps,
 * except where the fault itself is "down for 20 s".
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { Client, Connection } from '@temporalio/client';
import { listCheckpoints } from '../../activities/checkpoints/manifest.js';
import { keys } from '../../activities/storage/keys.js';
import { createObjectStore, type ObjectStore } from '../../activities/storage/store.js';
import type { OutputManifest } from '../../activities/types.js';
import { fetchRun } from '../../cli/run-status.js';
import { loadSpecFile, renderRunInput } from '../../cli/spec-file.js';
import type { PipelineSpec } from '../../schemas/pipeline.js';
import { s3Credentials } from '../../worker/config.js';
import type { RunResult } from '../../workflows/pipeline.js';
import { ROOT, stagesPython, stateDir, unique, waitFor } from '../helpers/env.js';
import { startTestWorkers, type TestWorkers } from '../helpers/workers.js';
import { startWorkerProcess, stopWorkerProcess, type WorkerProcess } from '../helpers/worker-process.js';

const exec = promisify(execFile);
/** The services' state directory: make test's own (TANREN_STATE_DIR), never the user's. */
const STATE = stateDir();

function pidOf(service: 'minio' | 'temporal'): number {
  return Number(readFileSync(path.join(STATE, 'pids', `${service}.pid`), 'utf8').trim());
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Stops one dev service the way a crash or an operator would. */
async function stopService(service: 'minio' | 'temporal'): Promise<void> {
  const pid = pidOf(service);
  process.kill(pid, 'SIGTERM');
  await waitFor(`${service} to stop`, () => !alive(pid), 30_000);
}

/** Starts the dev services again (the stopped one comes back on its data). */
async function startServices(): Promise<void> {
  await exec(path.join(ROOT, 'infra', 'dev'), ['up'], { env: { ...process.env, TANREN_SKIP_INSTALL: '1' } });
}

describe('fault injection', () => {
  let workers: TestWorkers;
  let client: Client;
  let storage: ObjectStore;

  let gpuWorker: WorkerProcess | undefined;
  const gpuEnv = (extra: Record<string, string> = {}) => ({
    TANREN_GPU_QUEUE: workers.queues.gpu,
    TANREN_WORK_DIR: workers.workRoot,
    TANREN_PYTHON: stagesPython(),
    TANREN_PROGRESS_INTERVAL_MS: '200',
    TANREN_KILL_GRACE_MS: '5000',
    TANREN_LOG_LEVEL: 'info',
    ...extra,
  });
  const restartGpuWorker = async (signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM', extra: Record<string, string> = {}) => {
    await stopWorkerProcess(gpuWorker, signal);
    gpuWorker = await startWorkerProcess('gpu', gpuEnv(extra), workers.workRoot);
  };

  before(async () => {
    // The GPU worker is a separate process, so a test can SIGKILL it like a crash.
    workers = await startTestWorkers({ prefix: 'faults', python: stagesPython(), gpu: false });
    gpuWorker = await startWorkerProcess('gpu', gpuEnv(), workers.workRoot);
    client = new Client({ connection: await Connection.connect({ address: workers.env.TEMPORAL_ADDRESS }), namespace: workers.env.TEMPORAL_NAMESPACE });
    storage = createObjectStore({ endpoint: workers.env.TANREN_S3_ENDPOINT, bucket: workers.env.TANREN_BUCKET, ...s3Credentials(workers.env) });
  });
  after(async () => {
    // A failed test must not leave the services down for the next one.
    if (!existsSync(path.join(STATE, 'pids', 'minio.pid')) || !alive(pidOf('minio')) || !alive(pidOf('temporal'))) await startServices();
    await stopWorkerProcess(gpuWorker, 'SIGKILL');
    await workers?.stop();
    await client?.connection.close();
  });

  function render(
    file: string,
    mutate: (spec: PipelineSpec) => void = () => {},
    opts: { noCache?: boolean; overrides?: Record<string, string | number | boolean> } = {},
  ) {
    const spec = loadSpecFile(path.join(ROOT, file));
    mutate(spec);
    const input = renderRunInput(spec, { file, env: workers.env, noCache: opts.noCache, overrides: opts.overrides });
    (input.spec as PipelineSpec).queues = { cpu: workers.queues.cpu, gpu: workers.queues.gpu };
    return input;
  }

  const start = (workflowId: string, input: unknown) =>
    client.workflow.start('pipelineWorkflow', { taskQueue: workers.queues.control, workflowId, args: [input] });

  /** Starts the faults pipeline and returns its handle. */
  const startFaults = (workflowId: string, overrides: Record<string, string | number | boolean> = {}, mutate: (spec: PipelineSpec) => void = () => {}) =>
    start(workflowId, render('test/fixtures/faults.yaml', mutate, { overrides }));

  const modelDigest = async (workflowId: string) => {
    const m = JSON.parse(await storage.getText(keys.manifest(workflowId, 'pretrain'))) as OutputManifest;
    return m.files.find((f) => f.path === 'model/model.safetensors')!.sha256;
  };

  it('1. the GPU worker SIGKILLed mid-pretraining: the run resumes from the last checkpoint and ends with the same weights', { timeout: 600_000 }, async () => {
    const baselineId = unique('ckpt-baseline');
    const baseline = (await (await startFaults(baselineId)).result()) as RunResult;
    assert.equal(baseline.stages.find((s) => s.id === 'pretrain')!.attempt, 1);

    const workflowId = unique('ckpt-kill');
    const handle = await startFaults(workflowId);
    const published = await waitFor(
      'a checkpoint at step 16 or later in MinIO',
      async () => {
        const refs = await listCheckpoints(storage, workflowId, 'pretrain');
        return refs.find((r) => r.step >= 16);
      },
      300_000,
      50,
    );
    const stepAtKill = (await fetchRun(client, workflowId)).status!.stages.find((s) => s.id === 'pretrain')!.step ?? 0;
    const killedAttemptDir = path.join(workers.workRoot, workflowId, 'pretrain', 'attempt-1');
    assert.ok(existsSync(path.join(killedAttemptDir, 'checkpoints')), `${killedAttemptDir} holds the attempt's checkpoints`);
    // Restarted as `infra/dev workers-up` does after a crash: nothing exported, the worker finds the stages environment itself.
    await restartGpuWorker('SIGKILL', { TANREN_PYTHON: '' });
    // The killed worker could not remove its attempt's directory (checkpoints and all): the restarted one did, as it started.
    assert.ok(!existsSync(killedAttemptDir), `${killedAttemptDir} removed by the restarted worker`);
    // What was complete in object storage once the worker was dead. Checkpoints go up from a process at the lowest
    // priority (so training keeps the CPU): on a busy host the newest announced ones may not be up yet, and those
    // are redone, so the steps redone are reported, not bounded by the interval.
    const completeAtKill = Math.max(...(await listCheckpoints(storage, workflowId, 'pretrain')).map((r) => r.step));
    const result = (await handle.result()) as RunResult;
    const pre = result.stages.find((s) => s.id === 'pretrain')!;
    assert.equal(pre.state, 'succeeded');
    assert.ok(pre.attempt >= 2, 'a second attempt ran');
    const resumed = Number(pre.result!.resumed_from_step);
    assert.ok(resumed >= published.step, `resumed from step ${resumed}, a checkpoint of step ${published.step} was complete`);
    assert.ok(resumed >= completeAtKill, `resumed from step ${resumed}, the newest complete checkpoint at the kill was of step ${completeAtKill}`);
    console.log(
      `[faults] the run's status said step ${stepAtKill} at the kill (heartbeats lag the trainer); resumed from step ${resumed} (checkpoint interval 8)`,
    );
    assert.equal(await modelDigest(workflowId), await modelDigest(baselineId), "final weights equal the uninterrupted run's");
    // Each attempt's directory goes as it ends, the run's with the last (the removal does not hold up the result).
    await waitFor('no work directory of the run left', () => !existsSync(path.join(workers.workRoot, workflowId)), 30_000);
  });

  it('2. the worker SIGKILLed during a checkpoint upload: the partial checkpoint is never used, the run completes', { timeout: 600_000 }, async () => {
    const workflowId = unique('ckpt-upload');
    // A bigger model, so a checkpoint upload takes long enough to be caught in the middle.
    const handle = await startFaults(workflowId, { steps: 24 }, (spec) => {
      Object.assign(spec.stages.find((s) => s.id === 'pretrain')!.with, { hidden_size: 384, num_layers: 4, num_heads: 4 });
    });
    const root = `runs/${workflowId}/pretrain/checkpoints/`;
    const partial = await waitFor(
      'a checkpoint upload in progress (files, no manifest yet)',
      async () => {
        const objects = await storage.list(root);
        const withFiles = new Set(objects.filter((o) => o.key.includes('/files/')).map((o) => o.key.slice(root.length).split('/')[0]));
        const complete = new Set(objects.filter((o) => o.key.endsWith('/manifest.json')).map((o) => o.key.slice(root.length).split('/')[0]));
        return [...withFiles].find((p) => !complete.has(p));
      },
      300_000,
      10,
    );
    await restartGpuWorker('SIGKILL');
    const result = (await handle.result()) as RunResult;
    const pre = result.stages.find((s) => s.id === 'pretrain')!;
    assert.equal(pre.state, 'succeeded');
    assert.notEqual(pre.result!.resumed_from, partial, `resumed from ${String(pre.result!.resumed_from)}, not the half-uploaded ${partial}`);
  });

  it('5. the newest checkpoint corrupted in MinIO, then the worker lost: resume uses the previous one and says so', { timeout: 600_000 }, async () => {
    const workflowId = unique('ckpt-corrupt');
    const handle = await startFaults(workflowId);
    const refs = await waitFor(
      'two complete checkpoints',
      async () => {
        const r = await listCheckpoints(storage, workflowId, 'pretrain');
        return r.length >= 2 ? r : undefined;
      },
      300_000,
      50,
    );
    // Lose the worker first, so no newer checkpoint can be published after the corruption.
    await stopWorkerProcess(gpuWorker, 'SIGKILL');
    const newest = (await listCheckpoints(storage, workflowId, 'pretrain'))[0];
    const manifest = JSON.parse(await storage.getText(newest.key)) as { files: Array<{ path: string }> };
    const victim = `runs/${workflowId}/pretrain/checkpoints/${newest.path}/files/${manifest.files[0].path}`;
    await storage.putText(victim, 'not a checkpoint', 'application/octet-stream');
    gpuWorker = await startWorkerProcess('gpu', gpuEnv(), workers.workRoot);
    const result = (await handle.result()) as RunResult;
    const pre = result.stages.find((s) => s.id === 'pretrain')!;
    assert.equal(pre.state, 'succeeded');
    assert.ok(refs.length >= 2);
    assert.notEqual(pre.result!.resumed_from, newest.path);
    assert.match(String(pre.result!.checkpoints_skipped), new RegExp(`${newest.path}: .*(sha256|size)`));
  });

  it('3. MinIO stopped for 20 s in the middle of an output upload: the run completes, nothing missing', { timeout: 180_000 }, async () => {
    const workflowId = unique('minio-outage');
    const files = 300;
    const script = `
import os
out = os.environ["TANREN_OUTPUT"]
for i in range(${files}):
    with open(os.path.join(out, f"part-{i:04d}.bin"), "wb") as f:
        f.write(os.urandom(256 * 1024))
`;
    const input = {
      spec: {
        name: 'minio-outage',
        queues: { cpu: workers.queues.cpu, gpu: workers.queues.gpu },
        stages: [
          { id: 'write', run: ['python3', '-c', script] },
          { id: 'read', needs: ['write'], run: ['python3', '-c', 'import os; assert len(os.listdir(os.environ["TANREN_INPUT_WRITE"])) == 300'] },
        ],
      },
      options: { noCache: true },
    };
    const handle = await start(workflowId, input);
    // Every attempt's outputs go under runs/<run>/write/attempts/<n>-<token>/outputs/.
    const prefix = `${keys.stagePrefix(workflowId, 'write')}attempts/`;
    await waitFor('the output upload to begin', async () => (await storage.list(prefix)).length > 0, 60_000, 20);
    const uploadedBefore = (await storage.list(prefix)).length;
    await stopService('minio');
    await new Promise((r) => setTimeout(r, 20_000));
    await startServices();
    const result = (await handle.result()) as RunResult;
    assert.ok(uploadedBefore < files, `MinIO went down mid-upload (${uploadedBefore}/${files} objects were up)`);
    assert.deepEqual(
      result.stages.map((s) => [s.id, s.state]),
      [
        ['write', 'succeeded'],
        ['read', 'succeeded'],
      ],
    );
    const manifest = JSON.parse(await storage.getText(keys.manifest(workflowId, 'write'))) as OutputManifest;
    assert.equal(manifest.files.length, files);
    for (const f of manifest.files) assert.equal((await storage.stat(f.key!))?.size, f.size, f.path);
  });

  it('4. the Temporal server stopped mid-run and started again on the same database: the run completes', { timeout: 180_000 }, async () => {
    const workflowId = unique('temporal-outage');
    const script = `
import json, os, time
ev = open(os.environ["TANREN_EVENTS"], "a")
for i in range(1, 13):
    ev.write(json.dumps({"event": "progress", "step": i, "total": 12}) + "\\n"); ev.flush()
    time.sleep(0.5)
open(os.path.join(os.environ["TANREN_OUTPUT"], "done.txt"), "w").write("ok")
`;
    const input = {
      spec: {
        name: 'temporal-outage',
        queues: { cpu: workers.queues.cpu, gpu: workers.queues.gpu },
        defaults: { heartbeatTimeout: '1m' },
        stages: [
          { id: 'long', run: ['python3', '-c', script] },
          { id: 'next', needs: ['long'], run: ['true'] },
        ],
      },
      options: { noCache: true },
    };
    await start(workflowId, input);
    await waitFor('the stage to make progress', async () => ((await fetchRun(client, workflowId)).status?.stages[0]!.step ?? 0) >= 2, 60_000, 100);
    await stopService('temporal');
    await new Promise((r) => setTimeout(r, 3000));
    await startServices();
    const result = (await client.workflow.getHandle(workflowId).result()) as RunResult;
    assert.deepEqual(
      result.stages.map((s) => s.state),
      ['succeeded', 'succeeded'],
    );
  });

  it('6. injected OutOfMemory: pretraining retries with half the micro-batch and twice the accumulation, and completes', { timeout: 600_000 }, async () => {
    const workflowId = unique('oom');
    await restartGpuWorker('SIGTERM', { TANREN_TEST_INJECT_OOM_ABOVE_MICRO_BATCH: '2' });
    try {
      const result = (await client.workflow.execute('pipelineWorkflow', {
        taskQueue: workers.queues.control,
        workflowId,
        args: [render('test/fixtures/faults.yaml', () => {}, { overrides: { steps: 12, checkpoint_every: 100 } })],
      })) as RunResult;
      const pre = result.stages.find((s) => s.id === 'pretrain')!;
      assert.equal(pre.state, 'succeeded');
      assert.equal(pre.attempt, 3, 'micro-batch 8 → 4 → 2');
      assert.match(pre.attempts![0].failure!, /OutOfMemory: .*next attempt: micro_batch_size=4, gradient_accumulation_steps=2/);
      assert.match(pre.attempts![1].failure!, /OutOfMemory: .*next attempt: micro_batch_size=2, gradient_accumulation_steps=4/);
      const history = await client.workflow.getHandle(workflowId).fetchHistory();
      const started = history.events!.filter((e) => e.activityTaskStartedEventAttributes).length;
      assert.ok(started >= 4, 'the attempts are in the history (visible in the UI)');
    } finally {
      await restartGpuWorker('SIGTERM');
    }
  });

  it('7. resubmitting a failed run reuses every verified stage; a deleted object makes that stage run again, saying why', { timeout: 300_000 }, async () => {
    const name = unique('resubmit').toLowerCase();
    // The cache is shared by every pipeline: a salt keeps this test's stages its own.
    const salted = (spec: PipelineSpec) => {
      spec.name = name;
      for (const st of spec.stages) st.with = { ...st.with, salt: name };
    };
    const failing = (spec: PipelineSpec) => {
      salted(spec);
      spec.stages.find((s) => s.id === 'merge')!.run = ['python3', '-c', 'import sys; print("merge broke", file=sys.stderr); sys.exit(2)'];
    };
    const fixed = salted;
    const first = await client.workflow
      .execute('pipelineWorkflow', { taskQueue: workers.queues.control, workflowId: `${name}-1`, args: [render('pipelines/demo.yaml', failing)] })
      .then(
        () => assert.fail('the first run should fail'),
        (e: unknown) => e,
      );
    assert.ok(first);
    const second = (await client.workflow.execute('pipelineWorkflow', {
      taskQueue: workers.queues.control,
      workflowId: `${name}-2`,
      args: [render('pipelines/demo.yaml', fixed)],
    })) as RunResult;
    const states = Object.fromEntries(second.stages.map((s) => [s.id, s.state]));
    assert.deepEqual(states, { count: 'cached', shard: 'cached', 'freq-0': 'cached', 'freq-1': 'cached', chars: 'cached', merge: 'succeeded' });
    for (const s of second.stages.filter((x) => x.state === 'cached')) assert.equal(s.cache, `cache hit: outputs of run ${name}-1`);
    assert.equal(second.stages.find((s) => s.id === 'merge')!.cache, 'cache miss: no earlier run of this stage');

    const firstFreq = JSON.parse(await storage.getText(keys.manifest(`${name}-1`, 'freq-0'))) as OutputManifest;
    const victim = firstFreq.files.find((f) => f.path === 'freq.json')!.key!;
    await storage.remove([victim]);
    const third = (await client.workflow.execute('pipelineWorkflow', {
      taskQueue: workers.queues.control,
      workflowId: `${name}-3`,
      args: [render('pipelines/demo.yaml', fixed)],
    })) as RunResult;
    const freq0 = third.stages.find((s) => s.id === 'freq-0')!;
    assert.equal(freq0.state, 'succeeded');
    assert.equal(freq0.cache, `cache hit rejected: object missing: ${victim}`);
    assert.equal(third.stages.find((s) => s.id === 'count')!.state, 'cached');
  });
});
