/**
 * The history bound of the most trials a pipeline's sweeps may run together
 * (MAX_PIPELINE_SWEEP_TRIALS), shown at scale: that many trials as asha sweeps of
 * the largest size (MAX_SWEEP_TRIALS trials, MAX_SWEEP_RUNGS rungs, eta 2: 510
 * trial-rungs each), all started at once beside each other, so that every
 * trial-rung lands in one execution (a run continues as new only between
 * stages). The dev server's history limit is the bound docs/sweeps.md states
 * (~6 events per trial-rung) for all of them; the payload limit is Temporal's
 * own 2 MiB. The activities are the scriptable fakes: the events and payloads
 * are the workflow's, whatever the stage does.
 *
 * Then a sweep whose trials report large results, past what 50 MB of history
 * holds: it stops starting trial-rungs at SWEEP_HISTORY_BYTES, runs the best of
 * the rung it reached on to the end, and the run completes instead of being
 * terminated by the server.
 *
 * `make test-scale` runs this; it is not part of `make test`.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { fetchRun } from '../../cli/run-status.js';
import { MAX_PIPELINE_SWEEP_TRIALS, MAX_SWEEP_RUNGS, MAX_SWEEP_TRIALS } from '../../schemas/pipeline.js';
import { validatePipelineSpec } from '../../schemas/validate.js';
import type { RunResult } from '../../workflows/pipeline.js';
import { SWEEP_HISTORY_BYTES, SWEEP_HISTORY_PATCH } from '../../workflows/sweep.js';
import { startFakeWorker } from '../helpers/fake-activities.js';
import { executions, largeMessageClient, patchIds, startLimitedServer } from '../helpers/history.js';
import { startDevServer } from '../helpers/servers.js';
import { unique } from '../helpers/env.js';

/** docs/sweeps.md's bound per trial-rung, as test/workflow/sweep-history.test.ts checks it for one sweep. */
const EVENTS_PER_TRIAL_RUNG = 6;
const SWEEPS = MAX_PIPELINE_SWEEP_TRIALS / MAX_SWEEP_TRIALS;
/** 256 + 128 + … + 2 trial-rungs of one sweep. */
const TRIAL_RUNGS_PER_SWEEP = Array.from({ length: MAX_SWEEP_RUNGS }, (_, k) => MAX_SWEEP_TRIALS / 2 ** k).reduce((a, b) => a + b, 0);
const TRIAL_RUNGS = SWEEPS * TRIAL_RUNGS_PER_SWEEP;
const HISTORY_LIMIT = EVENTS_PER_TRIAL_RUNG * TRIAL_RUNGS + 200;
const PAYLOAD_LIMIT = 2 * 1024 * 1024;

describe(`the most trials a pipeline may sweep, side by side, on a dev server with limit.historyCount.error=${HISTORY_LIMIT}`, () => {
  let env: TestWorkflowEnvironment;

  before(async () => {
    env = await startLimitedServer(HISTORY_LIMIT);
  });
  after(async () => {
    await env?.teardown();
  });

  it(
    `${SWEEPS} asha sweeps of ${MAX_SWEEP_TRIALS} trials (${MAX_PIPELINE_SWEEP_TRIALS} in all, ${TRIAL_RUNGS} trial-rungs) in one execution: within the history and payload limits`,
    { timeout: 900_000 },
    async () => {
      assert.equal(TRIAL_RUNGS_PER_SWEEP, 510);
      const { taskQueue, fake, worker } = await startFakeWorker(env, 'sweeps-scale');
      const sweep = (seed: number) => ({
        scheduler: 'asha',
        space: { x: { uniform: [0, 100] } },
        metric: { name: 'score', goal: 'max' },
        budget: { trials: MAX_SWEEP_TRIALS, steps: 1 },
        rungs: MAX_SWEEP_RUNGS,
        eta: 2,
        seed,
        parallel: 32,
      });
      const trains = Array.from({ length: SWEEPS }, (_, i) => ({
        id: `train${i}`,
        run: ['x'],
        needs: ['data'],
        with: { x: 0, scoreFrom: 'x' },
        sweep: sweep(i + 1),
      }));
      const spec = {
        name: 'sweeps-scale',
        queues: { cpu: taskQueue, gpu: taskQueue },
        stages: [{ id: 'data', run: ['x'] }, ...trains, { id: 'eval', run: ['x'], needs: trains.map((t) => t.id) }],
      };
      assert.ok(validatePipelineSpec(spec).ok, 'the spec is within the limit');
      const over = { ...spec, stages: [...spec.stages, { ...trains[0], id: 'one-more', sweep: { ...sweep(99), budget: { trials: 1, steps: 1 } } }] };
      assert.ok(!validatePipelineSpec(over).ok, 'one trial more is refused');

      const workflowId = unique('sweeps-scale');
      const started = Date.now();
      const { result, shown } = await worker.runUntil(async () => {
        const handle = await env.client.workflow.start('pipelineWorkflow', { taskQueue, workflowId, args: [{ spec, options: {} }] });
        const result = (await handle.result()) as RunResult;
        return { result, shown: await fetchRun(env.client, workflowId) };
      });
      const seconds = (Date.now() - started) / 1000;
      assert.deepEqual(
        result.stages.map((s) => s.state),
        spec.stages.map(() => 'succeeded'),
      );
      for (const s of result.stages.filter((x) => x.id.startsWith('train'))) assert.equal(s.sweep?.trials.length, MAX_SWEEP_TRIALS, s.id);
      assert.equal(fake.attempts.filter((a) => a.stage.includes('.trial-')).length, TRIAL_RUNGS);
      assert.equal(shown.status?.stages.filter((s) => s.sweep).length, SWEEPS);

      const runs = await executions(env.client, workflowId);
      assert.equal(runs.at(-1)!.status, 'COMPLETED');
      // Every trial-rung in the first execution: the sweeps ran side by side, and the run may continue as new only
      // after them (before `eval`, when the server suggests it).
      const trialRungsIn = (r: (typeof runs)[number]) =>
        (r.history.events ?? []).filter((e) => e.activityTaskScheduledEventAttributes?.activityId?.includes('.trial-')).length;
      assert.equal(trialRungsIn(runs[0]), TRIAL_RUNGS);
      const events = runs[0].events;
      assert.ok(
        runs.every((r) => r.events <= HISTORY_LIMIT),
        runs.map((r) => r.events).join(', '),
      );
      const resultBytes = Buffer.byteLength(JSON.stringify(result));
      const statusBytes = Buffer.byteLength(JSON.stringify(shown.status));
      assert.ok(resultBytes < PAYLOAD_LIMIT && statusBytes < PAYLOAD_LIMIT, `result ${resultBytes} bytes, status ${statusBytes} bytes`);
      console.log(
        `# ${SWEEPS} sweeps × ${MAX_SWEEP_TRIALS} trials side by side: ${events} events in the first of ${runs.length} execution(s) (limit ${HISTORY_LIMIT}), ` +
          `${(events / TRIAL_RUNGS).toFixed(2)} per trial-rung; result ${resultBytes} bytes, status ${statusBytes} bytes; ${seconds.toFixed(0)} s`,
      );
    },
  );
});

/** Temporal's default `limit.historySize.error`: the server terminates a run whose history passes it. */
const HISTORY_SIZE_LIMIT = 50 * 1024 * 1024;
/** Each trial-rung's result: under the 128 KiB a stage's result may have (activities/stage-env.ts). */
const RESULT_BYTES = 120 * 1024;

describe(`a sweep whose trials' results outgrow a run's history (limit.historySize.error=${HISTORY_SIZE_LIMIT})`, () => {
  let env: TestWorkflowEnvironment;

  before(async () => {
    env = await startDevServer(`limit.historySize.error=${HISTORY_SIZE_LIMIT}`);
  });
  after(async () => {
    await env?.teardown();
  });

  it(
    `stops starting trial-rungs at ${SWEEP_HISTORY_BYTES / 2 ** 20} MiB, finishes the best one reached, and the run completes`,
    { timeout: 900_000 },
    async () => {
      const trials = MAX_SWEEP_TRIALS;
      const rungs = 3;
      // 256 + 128 + 64 trial-rungs of 120 KiB: 52.5 MiB of results alone, past the limit.
      const trialRungs = trials + trials / 2 + trials / 4;
      assert.ok(trialRungs * RESULT_BYTES > HISTORY_SIZE_LIMIT);
      const { taskQueue, fake, worker } = await startFakeWorker(env, 'sweep-bytes');
      const spec = {
        name: 'sweep-bytes',
        queues: { cpu: taskQueue, gpu: taskQueue },
        stages: [
          {
            id: 'train',
            run: ['x'],
            with: { x: 0, scoreFrom: 'x', resultBytes: RESULT_BYTES },
            sweep: {
              scheduler: 'asha',
              space: { x: { uniform: [0, 100] } },
              metric: { name: 'score', goal: 'max' },
              budget: { trials, steps: 1 },
              rungs,
              eta: 2,
              seed: 5,
              parallel: 32,
            },
          },
          { id: 'eval', run: ['x'], needs: ['train'] },
        ],
      };
      const workflowId = unique('sweep-bytes');
      const result = await worker.runUntil(async () => {
        const handle = await env.client.workflow.start('pipelineWorkflow', { taskQueue, workflowId, args: [{ spec, options: {} }] });
        return (await handle.result()) as RunResult;
      });
      assert.deepEqual(
        result.stages.map((s) => s.state),
        ['succeeded', 'succeeded'],
      );
      const sweep = result.stages[0].sweep!;
      const best = sweep.trials.find((t) => t.state === 'best')!;
      assert.equal(best.rung, rungs, 'the best trial ran the last rung');
      assert.match(sweep.reason ?? '', /the sweep stopped early: the run's history reached \d+ MiB/);
      const notRun = sweep.trials.filter((t) => t.reason?.startsWith('not run at rung'));
      assert.ok(notRun.length > 0, 'some trials were not run');
      // The best is the best of the rung the sweep stopped in, among those that ran it.
      const stoppedIn = Number(/not run at rung (\d+)/.exec(notRun[0].reason!)![1]);
      const ranIt = sweep.trials.filter((t) => t.runs.some((r) => r.rung === stoppedIn));
      assert.equal(best.params.x, Math.max(...ranIt.map((t) => t.params.x as number)));
      const ran = fake.attempts.filter((a) => a.stage.includes('.trial-')).length;
      assert.ok(ran < trialRungs, `${ran} of ${trialRungs} trial-rungs ran`);

      const reader = await largeMessageClient(env);
      const runs = await executions(reader.client, workflowId).finally(reader.close);
      assert.equal(runs.at(-1)!.status, 'COMPLETED');
      const history = runs[0].history;
      const patches = patchIds(history);
      assert.ok(
        patches.some((p) => p.includes(SWEEP_HISTORY_PATCH)),
        'the patch marker is recorded',
      );
      const bytes = Buffer.byteLength(JSON.stringify(history));
      console.log(
        `# sweep of ${trials} trials × ${RESULT_BYTES / 1024} KiB results: stopped in rung ${stoppedIn}, ${ran} of ${trialRungs} trial-rungs ran, ` +
          `${notRun.length} trials not run; history ${runs[0].events} events, ~${Math.round(bytes / 2 ** 20)} MiB as JSON`,
      );
    },
  );
});
