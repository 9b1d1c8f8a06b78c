/**
 * The history bound of the largest sweep a spec may ask for, shown at scale:
 * an asha sweep of MAX_SWEEP_TRIALS trials over MAX_SWEEP_RUNGS rungs (eta 2:
 * 256 + 128 + … + 2 = 510 trial-rungs, each one `runStage`) runs on a dev
 * server of its own whose history limit is lowered to a little above the bound
 * docs/sweeps.md states (~6 events per trial-rung, ≤ ~3,100 for 256 trials).
 * A sweep that added more per trial-rung would be terminated by the server and
 * the test would fail. The activities are the scriptable fakes: the events are
 * the workflow's, whatever the stage does.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { fetchRun } from '../../cli/run-status.js';
import { MAX_SWEEP_RUNGS, MAX_SWEEP_TRIALS } from '../../schemas/pipeline.js';
import type { RunResult } from '../../workflows/pipeline.js';
import { startFakeWorker } from '../helpers/fake-activities.js';
import { executions, startLimitedServer } from '../helpers/history.js';
import { unique } from '../helpers/env.js';

/** docs/sweeps.md's bound: ~6 events per trial-rung, plus the run's own (start, the stages around the sweep, completion). */
const EVENTS_PER_TRIAL_RUNG = 6;
const TRIAL_RUNGS = Array.from({ length: MAX_SWEEP_RUNGS }, (_, k) => MAX_SWEEP_TRIALS / 2 ** k).reduce((a, b) => a + b, 0);
const HISTORY_LIMIT = EVENTS_PER_TRIAL_RUNG * TRIAL_RUNGS + 100;

describe(`the largest sweep on a dev server with limit.historyCount.error=${HISTORY_LIMIT}`, () => {
  let env: TestWorkflowEnvironment;

  before(async () => {
    env = await startLimitedServer(HISTORY_LIMIT);
  });
  after(async () => {
    await env?.teardown();
  });

  it(
    `asha, ${MAX_SWEEP_TRIALS} trials, ${MAX_SWEEP_RUNGS} rungs (${TRIAL_RUNGS} trial-rungs) stays within ${EVENTS_PER_TRIAL_RUNG} events per trial-rung`,
    { timeout: 600_000 },
    async () => {
      assert.equal(TRIAL_RUNGS, 510);
      const { taskQueue, fake, worker } = await startFakeWorker(env, 'sweep-scale');
      const spec = {
        name: 'sweep-scale',
        queues: { cpu: taskQueue, gpu: taskQueue },
        stages: [
          { id: 'data', run: ['x'] },
          {
            id: 'train',
            run: ['x'],
            needs: ['data'],
            with: { x: 0, scoreFrom: 'x' },
            sweep: {
              scheduler: 'asha',
              space: { x: { uniform: [0, 100] } },
              metric: { name: 'score', goal: 'max' },
              budget: { trials: MAX_SWEEP_TRIALS, steps: 1 },
              rungs: MAX_SWEEP_RUNGS,
              eta: 2,
              seed: 11,
              parallel: 32,
            },
          },
          { id: 'eval', run: ['x'], needs: ['train'] },
        ],
      };
      const workflowId = unique('sweep-scale');
      const { result, shown } = await worker.runUntil(async () => {
        const handle = await env.client.workflow.start('pipelineWorkflow', { taskQueue, workflowId, args: [{ spec, options: {} }] });
        const result = (await handle.result()) as RunResult;
        // What `tanren status` reads: the whole trial table through the query.
        return { result, shown: await fetchRun(env.client, workflowId) };
      });
      assert.deepEqual(
        result.stages.map((s) => s.state),
        ['succeeded', 'succeeded', 'succeeded'],
      );
      const sweep = result.stages[1].sweep!;
      assert.equal(sweep.trials.length, MAX_SWEEP_TRIALS);
      assert.equal(fake.attempts.filter((a) => a.stage.startsWith('train.trial-')).length, TRIAL_RUNGS);
      const best = sweep.trials.find((t) => t.state === 'best')!;
      assert.equal(best.params.x, Math.max(...sweep.trials.filter((t) => t.rung === MAX_SWEEP_RUNGS).map((t) => t.params.x as number)));
      assert.equal(shown.status?.stages[1].sweep?.trials.length, MAX_SWEEP_TRIALS);

      const runs = await executions(env.client, workflowId);
      const events = runs.reduce((n, r) => n + r.events, 0);
      assert.equal(runs.at(-1)!.status, 'COMPLETED');
      assert.ok(events <= HISTORY_LIMIT, `${events} events`);
      // The per-trial-rung cost, measured: the events beyond a plain three-stage run's, per trial-rung.
      const perTrialRung = events / TRIAL_RUNGS;
      assert.ok(perTrialRung <= EVENTS_PER_TRIAL_RUNG + 0.2, `${perTrialRung.toFixed(2)} events per trial-rung`);
      // The result (every trial's params, rung, metric, state) is one payload: far below Temporal's 2 MB.
      const bytes = Buffer.byteLength(JSON.stringify(result));
      assert.ok(bytes < 512 * 1024, `result is ${bytes} bytes`);
      console.log(
        `# ${MAX_SWEEP_TRIALS}-trial asha: ${events} events in ${runs.length} execution(s), ${perTrialRung.toFixed(2)} per trial-rung; result ${bytes} bytes`,
      );
    },
  );
});
