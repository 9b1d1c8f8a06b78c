/**
 * pipelineWorkflow on real Temporal servers (the installed dev server, and
 * the Java time-skipping server for long backoffs and timeouts), with a
 * scriptable fake runStage activity.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { WorkflowFailedError } from '@temporalio/client';
import { ActivityFailure, ApplicationFailure, CancelledFailure, TimeoutFailure } from '@temporalio/common';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import protos from '@temporalio/proto';
import { Runtime, DefaultLogger, Worker, type WorkflowBundle } from '@temporalio/worker';
import { workflowBundle } from '../../worker/run-worker.js';
import { MAX_PIPELINE_SWEEP_PARAMS_BYTES, MAX_PIPELINE_SWEEP_TRIALS, MAX_SWEEP_TRIALS } from '../../schemas/pipeline.js';
import { pauseSignal, resumeSignal, statusQuery, SWEEP_PARAMS_PATCH, SWEEP_TRIALS_PATCH, type RunResult } from '../../workflows/pipeline.js';
import { createFakeActivities } from '../helpers/fake-activities.js';
import { searchAttributeKeys, unique, waitFor } from '../helpers/env.js';
import { startDevServer, startTimeSkippingServer } from '../helpers/servers.js';
import { patchIds } from '../helpers/history.js';

const { temporal } = protos;
Runtime.install({ logger: new DefaultLogger('WARN') });

function input(taskQueue: string, stages: unknown[], extra: Record<string, unknown> = {}) {
  return { spec: { name: 'wf-test', queues: { cpu: taskQueue, gpu: taskQueue }, stages, ...extra }, options: {} };
}

describe('pipelineWorkflow on the local dev server', () => {
  let env: TestWorkflowEnvironment;
  let bundle: WorkflowBundle;

  before(async () => {
    env = await startDevServer();
    bundle = await workflowBundle();
  });
  after(async () => {
    await env?.teardown();
  });

  async function withWorker<T>(fake: ReturnType<typeof createFakeActivities>, fn: (taskQueue: string) => Promise<T>): Promise<T> {
    const taskQueue = unique('wf');
    const worker = await Worker.create({ connection: env.nativeConnection, taskQueue, workflowBundle: bundle, activities: fake.activities });
    return worker.runUntil(fn(taskQueue));
  }

  it('runs a diamond in dependency order, independent stages concurrently', async () => {
    const fake = createFakeActivities();
    const result = await withWorker(fake, (tq) =>
      env.client.workflow.execute('pipelineWorkflow', {
        taskQueue: tq,
        workflowId: unique('diamond'),
        args: [
          input(tq, [
            { id: 'a', run: ['x'] },
            { id: 'b', needs: ['a'], run: ['x'], with: { sleepMs: 300 } },
            { id: 'c', needs: ['a'], run: ['x'], with: { sleepMs: 300 } },
            { id: 'd', needs: ['b', 'c'], run: ['x'] },
          ]),
        ],
      }),
    );
    const r = result as RunResult;
    assert.equal(r.state, 'succeeded');
    assert.deepEqual(
      r.stages.map((s) => [s.id, s.state]),
      [
        ['a', 'succeeded'],
        ['b', 'succeeded'],
        ['c', 'succeeded'],
        ['d', 'succeeded'],
      ],
    );
    const at = (id: string) => fake.attempts.find((x) => x.stage === id)!;
    assert.ok(at('b').start >= at('a').end!, 'b started after a ended');
    assert.ok(at('b').start < at('c').end! && at('c').start < at('b').end!, 'b and c overlapped');
    assert.ok(at('d').start >= Math.max(at('b').end!, at('c').end!), 'd waited for b and c');
    assert.deepEqual(r.stages.find((s) => s.id === 'd')!.result, { inputs: ['b', 'c'] });
  });

  it('uses cache hits without running the stage, and says why a stage ran', async () => {
    const fake = createFakeActivities();
    const r = (await withWorker(fake, (tq) =>
      env.client.workflow.execute('pipelineWorkflow', {
        taskQueue: tq,
        workflowId: unique('cache'),
        args: [
          input(tq, [
            { id: 'old', run: ['x'], with: { cached: true } },
            { id: 'new', needs: ['old'], run: ['x'] },
            { id: 'off', run: ['x'], cache: false, with: { cached: true } },
          ]),
        ],
      }),
    )) as RunResult;
    assert.deepEqual(
      r.stages.map((s) => [s.id, s.state, s.cache]),
      [
        ['old', 'cached', 'cache hit: outputs of run earlier'],
        ['new', 'succeeded', 'cache miss: no earlier run of this stage'],
        ['off', 'succeeded', 'cache: off for this stage'],
      ],
    );
    assert.deepEqual(fake.attempts.map((a) => a.stage).sort(), ['new', 'off']);
    assert.deepEqual(r.stages[1].result, { inputs: ['old'] });
  });

  it('retries a failing stage with backoff until it succeeds', async () => {
    const fake = createFakeActivities();
    const r = (await withWorker(fake, (tq) =>
      env.client.workflow.execute('pipelineWorkflow', {
        taskQueue: tq,
        workflowId: unique('retry'),
        args: [
          input(tq, [{ id: 'flaky', run: ['x'], with: { failAttempts: 2 }, retry: { maximumAttempts: 5, initialInterval: '300ms', backoffCoefficient: 2 } }]),
        ],
      }),
    )) as RunResult;
    const tries = fake.attempts.filter((a) => a.stage === 'flaky');
    assert.deepEqual(
      tries.map((t) => [t.attempt, t.outcome]),
      [
        [1, 'failed'],
        [2, 'failed'],
        [3, 'ok'],
      ],
    );
    const gap1 = tries[1].start - tries[0].end!;
    const gap2 = tries[2].start - tries[1].end!;
    assert.ok(gap1 >= 250, `first backoff ${gap1} ms`);
    assert.ok(gap2 >= 550, `second backoff ${gap2} ms (coefficient 2)`);
    assert.equal(r.stages[0].attempt, 3);
  });

  it('stops at once on a non-retryable failure, skips what depends on it, and reports the whole chain', async () => {
    const fake = createFakeActivities();
    const err = await withWorker(fake, (tq) =>
      env.client.workflow
        .execute('pipelineWorkflow', {
          taskQueue: tq,
          workflowId: unique('nonretry'),
          args: [
            input(tq, [
              { id: 'bad', run: ['x'], with: { failAttempts: 9, failType: 'InvalidStageInput' }, retry: { maximumAttempts: 5 } },
              { id: 'after', needs: ['bad'], run: ['x'] },
              { id: 'other', run: ['x'] },
            ]),
          ],
        })
        .then(
          () => assert.fail('expected the run to fail'),
          (e: unknown) => e,
        ),
    );
    assert.ok(err instanceof WorkflowFailedError);
    assert.ok(err.cause instanceof ApplicationFailure);
    assert.equal(err.cause.type, 'InvalidStageInput');
    assert.match(err.cause.message, /stage "bad" failed/);
    assert.ok(err.cause.cause instanceof ActivityFailure);
    assert.ok(err.cause.cause.cause instanceof ApplicationFailure);
    assert.equal(err.cause.cause.cause.type, 'InvalidStageInput');
    assert.equal(fake.attempts.filter((a) => a.stage === 'bad').length, 1, 'no retry');
    assert.ok(
      fake.attempts.some((a) => a.stage === 'other' && a.outcome === 'ok'),
      'the independent branch still ran',
    );
    assert.ok(!fake.attempts.some((a) => a.stage === 'after'), 'the dependent stage never ran');
    const stages = (err.cause.details![0] as { stages: Array<{ id: string; state: string }> }).stages;
    assert.deepEqual(
      stages.map((s) => [s.id, s.state]),
      [
        ['bad', 'failed'],
        ['after', 'skipped'],
        ['other', 'succeeded'],
      ],
    );
  });

  it('fails an invalid spec sent as raw JSON with InvalidPipelineSpec listing every problem', async () => {
    const fake = createFakeActivities();
    const err = await withWorker(fake, (tq) =>
      env.client.workflow
        .execute('pipelineWorkflow', {
          taskQueue: tq,
          workflowId: unique('invalid'),
          args: [
            input(tq, [
              { id: 'a', needs: ['b'], run: ['x'] },
              { id: 'b', needs: ['a'], run: ['x'], timeout: 'forever' },
            ]),
          ],
        })
        .then(
          () => assert.fail('expected the run to fail'),
          (e: unknown) => e,
        ),
    );
    assert.ok(err instanceof WorkflowFailedError);
    assert.ok(err.cause instanceof ApplicationFailure);
    assert.equal(err.cause.type, 'InvalidPipelineSpec');
    assert.equal(err.cause.nonRetryable, true);
    assert.match(err.cause.message, /stage "b": stages\[1\]\.timeout: not a duration/);
    assert.match(err.cause.message, /cycle in needs: a → b → a/);
    assert.equal(fake.attempts.length, 0);
  });

  /** Runs `stages`, which must fail at the start as InvalidPipelineSpec behind `patch` with no stage run; returns the failure's message. */
  async function refusedAtStart(name: string, stages: object[], patch: string): Promise<string> {
    const fake = createFakeActivities();
    const workflowId = unique(name);
    const err = await withWorker(fake, (tq) =>
      env.client.workflow.execute('pipelineWorkflow', { taskQueue: tq, workflowId, args: [input(tq, stages)] }).then(
        () => assert.fail('expected the run to fail'),
        (e: unknown) => e,
      ),
    );
    assert.ok(err instanceof WorkflowFailedError && err.cause instanceof ApplicationFailure);
    assert.equal(err.cause.type, 'InvalidPipelineSpec');
    assert.equal(fake.attempts.length, 0);
    const patches = patchIds(await env.client.workflow.getHandle(workflowId).fetchHistory());
    assert.ok(
      patches.some((p) => p.includes(patch)),
      `the patch marker is recorded: ${patches.join(', ')}`,
    );
    return err.cause.message;
  }

  it(`fails a spec whose sweeps pass ${MAX_PIPELINE_SWEEP_TRIALS} trials in all, naming the sweep, behind ${SWEEP_TRIALS_PATCH}`, async () => {
    const swept = (id: string, trials: number) => ({
      id,
      run: ['x'],
      with: { x: 0 },
      sweep: { scheduler: 'random', space: { x: { uniform: [0, 1] } }, metric: { name: 'score' }, budget: { trials } },
    });
    const stages = [...Array.from({ length: MAX_PIPELINE_SWEEP_TRIALS / MAX_SWEEP_TRIALS }, (_, i) => swept(`s${i}`, MAX_SWEEP_TRIALS)), swept('last', 1)];
    const message = await refusedAtStart('too-many-trials', stages, SWEEP_TRIALS_PATCH);
    assert.match(message, new RegExp(`stage "last": stages\\[4\\]\\.sweep\\.budget\\.trials: ${MAX_PIPELINE_SWEEP_TRIALS + 1} trials in all`));
  });

  it(`fails a spec whose sweeps' trials would carry more than ${MAX_PIPELINE_SWEEP_PARAMS_BYTES} bytes of parameters, behind ${SWEEP_PARAMS_PATCH}`, async () => {
    // 256 trials drawing among 64 prompts of 9,000 characters (a 576 kB spec): up to 2.3 MB of parameters in the
    // sweep's status, past the 2 MB its result may take.
    const prompts = Array.from({ length: 64 }, (_, i) => `${i}`.padEnd(9000, '.'));
    const sweep = { scheduler: 'random', space: { prompt: prompts }, metric: { name: 'score' }, budget: { trials: MAX_SWEEP_TRIALS } };
    const message = await refusedAtStart('long-sweep-values', [{ id: 'tune', run: ['x'], with: { prompt: '' }, sweep }], SWEEP_PARAMS_PATCH);
    // 256 × {"prompt":"<9,000>"} = 256 × (2 + 8 + 1 + 9,002) bytes.
    assert.match(message, /stage "tune": stages\[0\]\.sweep\.space: 2307328 bytes of trial parameters in all/);
  });

  it('sweeps: grid trials with a failure among them, then asha rung by rung with two lanes; downstream gets the best trial', async () => {
    const fake = createFakeActivities();
    const grid = {
      id: 'g',
      run: ['x'],
      with: { x: 0, scoreFrom: 'x', failWhenX: 2 },
      sweep: { scheduler: 'grid', space: { x: [1, 2, 3] }, metric: { name: 'score', goal: 'max' } },
    };
    const asha = {
      id: 'a',
      run: ['x'],
      needs: ['g'],
      with: { x: 0, scoreFrom: 'x', sleepMs: 100 },
      sweep: {
        scheduler: 'asha',
        space: { x: { uniform: [0, 10] } },
        metric: { name: 'score', goal: 'max' },
        budget: { trials: 4, steps: 2 },
        rungs: 2,
        seed: 3,
        parallel: 2,
      },
    };
    const result = (await withWorker(fake, (tq) =>
      env.client.workflow.execute('pipelineWorkflow', {
        taskQueue: tq,
        workflowId: unique('sweep'),
        args: [input(tq, [grid, asha, { id: 'down', needs: ['a'], run: ['x'] }])],
      }),
    )) as RunResult;
    const g = result.stages.find((s) => s.id === 'g')!;
    assert.equal(g.state, 'succeeded');
    assert.deepEqual(
      g.sweep!.trials.map((t) => [t.trial, t.state]),
      [
        ['g.trial-00', 'completed'],
        ['g.trial-01', 'failed'],
        ['g.trial-02', 'best'],
      ],
    );
    assert.match(g.sweep!.trials[1].reason!, /StageConfigError: planned failure at x=2/);
    assert.equal((g.result!.sweep as { best_trial: string }).best_trial, 'g.trial-02');
    assert.equal(g.metrics!.score, 3);

    const a = result.stages.find((s) => s.id === 'a')!.sweep!;
    assert.deepEqual(a.rungs, [2, 4]);
    assert.equal(a.trials.filter((t) => t.state === 'stopped-early' && t.rung === 1).length, 2);
    assert.equal(a.trials.filter((t) => t.state === 'best' || t.state === 'completed').length, 2);
    const xs = a.trials.map((t) => t.params.x as number);
    const best = a.trials.find((t) => t.state === 'best')!;
    assert.equal(best.params.x, Math.max(...xs), 'the highest x scores best');
    // Rung 2 starts only when rung 1 is done; never more than two trials at once.
    const runs = fake.attempts.filter((r) => r.stage.startsWith('a.trial-'));
    assert.equal(runs.length, 4 + 2);
    const lastRung1 = Math.max(...runs.slice(0, 4).map((r) => r.end!));
    for (const r of runs.slice(4)) assert.ok(r.start >= lastRung1, 'a rung-2 run started before rung 1 ended');
    for (const r of runs) assert.ok(runs.filter((o) => o.start < r.end! && r.start < o.end!).length <= 2, 'at most two lanes');
    const down = fake.attempts.find((r) => r.stage === 'down');
    assert.ok(down && down.outcome === 'ok');
    assert.deepEqual(result.stages.find((s) => s.id === 'down')!.result, { inputs: ['a'] });
  });

  it("a sweep whose every trial fails fails its stage, naming a trial's failure", async () => {
    const fake = createFakeActivities();
    const err = await withWorker(fake, (tq) =>
      env.client.workflow.execute('pipelineWorkflow', {
        taskQueue: tq,
        workflowId: unique('sweep-fail'),
        args: [input(tq, [{ id: 's', run: ['x'], with: { x: 1, failWhenX: 1 }, sweep: { scheduler: 'grid', space: { x: [1] }, metric: { name: 'score' } } }])],
      }),
    ).catch((e: unknown) => e);
    assert.ok(err instanceof WorkflowFailedError);
    assert.match(
      (err.cause as ApplicationFailure).message,
      /stage "s" failed: StageCrashed: stage "s": no trial of the sweep finished with a finite score; s\.trial-00: StageConfigError: planned failure at x=1/,
    );
  });

  it('pauses: no new stage starts until resumed; running stages go on', async () => {
    const fake = createFakeActivities();
    await withWorker(fake, async (tq) => {
      const handle = await env.client.workflow.start('pipelineWorkflow', {
        taskQueue: tq,
        workflowId: unique('pause'),
        args: [
          input(tq, [
            { id: 'first', run: ['x'], with: { block: true } },
            { id: 'second', needs: ['first'], run: ['x'] },
          ]),
        ],
      });
      await waitFor('first to run', () => fake.attempts.some((a) => a.stage === 'first'));
      await handle.signal(pauseSignal);
      await waitFor('paused state', async () => (await handle.query(statusQuery)).state === 'paused');
      fake.release('first');
      const status = await waitFor('first to succeed while paused', async () => {
        const s = await handle.query(statusQuery);
        return s.stages[0].state === 'succeeded' ? s : undefined;
      });
      assert.equal(status.state, 'paused');
      assert.equal(status.stages[1].state, 'pending');
      assert.ok(!fake.attempts.some((a) => a.stage === 'second'), 'second did not start while paused');
      await handle.signal(resumeSignal);
      const r = (await handle.result()) as RunResult;
      assert.equal(r.stages[1].state, 'succeeded');
    });
  });

  it('cancellation reaches the running stage and the run ends cancelled', async () => {
    const fake = createFakeActivities();
    await withWorker(fake, async (tq) => {
      const handle = await env.client.workflow.start('pipelineWorkflow', {
        taskQueue: tq,
        workflowId: unique('cancel'),
        args: [
          input(tq, [
            { id: 'long', run: ['x'], with: { block: true }, heartbeatTimeout: '5s' },
            { id: 'next', needs: ['long'], run: ['x'] },
          ]),
        ],
      });
      await waitFor('long to run', () => fake.attempts.some((a) => a.stage === 'long'));
      await handle.cancel();
      const err = await handle.result().then(
        () => assert.fail('expected cancellation'),
        (e: unknown) => e,
      );
      assert.ok(err instanceof WorkflowFailedError);
      assert.ok(err.cause instanceof CancelledFailure);
      assert.equal(fake.attempts.find((a) => a.stage === 'long')!.outcome, 'cancelled');
      const s = await handle.query(statusQuery);
      assert.deepEqual(
        s.stages.map((x) => x.state),
        ['cancelled', 'cancelled'],
      );
      assert.equal(s.state, 'cancelled');
    });
  });
  it('times out attempts that stop heartbeating or outlive their timeout, then fails', async () => {
    const fake = createFakeActivities();
    const err = await withWorker(fake, (tq) =>
      env.client.workflow
        .execute('pipelineWorkflow', {
          taskQueue: tq,
          workflowId: unique('timeout'),
          args: [
            input(tq, [
              { id: 'silent', run: ['x'], with: { hang: true }, heartbeatTimeout: '1s', retry: { maximumAttempts: 2, initialInterval: '100ms' } },
              { id: 'slow', run: ['x'], with: { block: true }, timeout: '1500ms', retry: { maximumAttempts: 1 } },
            ]),
          ],
        })
        .then(
          () => assert.fail('expected a timeout'),
          (e: unknown) => e,
        ),
    );
    assert.ok(err instanceof WorkflowFailedError);
    const activityFailure = (err.cause as ApplicationFailure).cause;
    assert.ok(activityFailure instanceof ActivityFailure);
    assert.ok(activityFailure.cause instanceof TimeoutFailure, `expected TimeoutFailure, got ${activityFailure.cause?.name}`);
    assert.equal(fake.attempts.filter((a) => a.stage === 'silent').length, 2, 'heartbeat timeout retried once');
    assert.equal(fake.attempts.filter((a) => a.stage === 'slow').length, 1);
    const stages = (err.cause as ApplicationFailure).details![0] as { stages: Array<{ id: string; state: string; reason?: string }> };
    for (const s of stages.stages) assert.equal(s.state, 'failed');
    assert.match(stages.stages.find((s) => s.id === 'silent')!.reason!, /^WorkerLost: /);
    assert.match(stages.stages.find((s) => s.id === 'slow')!.reason!, /^StageTimedOut: /);
  });
});

describe('pipelineWorkflow on the time-skipping test server', () => {
  let env: TestWorkflowEnvironment;
  let bundle: WorkflowBundle;
  before(async () => {
    env = await startTimeSkippingServer();
    // The Java test server takes custom search attributes through the operator service.
    await env.connection.operatorService.addSearchAttributes({
      namespace: 'default',
      searchAttributes: Object.fromEntries(searchAttributeKeys.map((k) => [k.name, temporal.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD])),
    });
    bundle = await workflowBundle();
  });
  after(async () => {
    await env?.teardown();
  });

  it('waits out long backoffs (10 min, then 20 min) without real waiting', async () => {
    const fake = createFakeActivities();
    const taskQueue = unique('ts-retry');
    const worker = await Worker.create({ connection: env.nativeConnection, taskQueue, workflowBundle: bundle, activities: fake.activities });
    const started = Date.now();
    const r = (await worker.runUntil(
      env.client.workflow.execute('pipelineWorkflow', {
        taskQueue,
        workflowId: unique('ts-retry'),
        args: [input(taskQueue, [{ id: 's', run: ['x'], with: { failAttempts: 2 }, retry: { initialInterval: '10m', maximumAttempts: 3 } }])],
      }),
    )) as RunResult;
    assert.equal(r.stages[0].attempt, 3);
    assert.ok(Date.now() - started < 60_000);
  });
});
