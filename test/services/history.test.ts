/**
 * Temporal's limits are part of the design: a run's history must stay bounded
 * however long a stage reports progress and however many stages the run has.
 * These tests run on a dev server of their own whose history limit is lowered
 * (`limit.historyCount.error`), so a run that grew its history per progress
 * tick or per stage beyond the bound is terminated by the server and fails.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { Context } from '@temporalio/activity';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { Worker } from '@temporalio/worker';
import type { StageTask } from '../../activities/types.js';
import { fetchRun } from '../../cli/run-status.js';
import { workflowBundle } from '../../worker/run-worker.js';
import type { RunResult } from '../../workflows/pipeline.js';
import { statusQuery } from '../../workflows/pipeline.js';
import { createFakeActivities } from '../helpers/fake-activities.js';
import { executions, startLimitedServer } from '../helpers/history.js';
import { ROOT, unique, waitFor } from '../helpers/env.js';
import { startTestWorkers, type TestWorkers } from '../helpers/workers.js';

const exec = promisify(execFile);
const HISTORY_LIMIT = 1000;

describe(`history stays bounded (dev server with limit.historyCount.error=${HISTORY_LIMIT})`, () => {
  let env: TestWorkflowEnvironment;
  let workers: TestWorkers;

  before(async () => {
    env = await startLimitedServer(HISTORY_LIMIT, 'limit.historyCount.suggestContinueAsNew=300');
    workers = await startTestWorkers({ prefix: 'hist', envOverrides: { TEMPORAL_ADDRESS: env.address, TANREN_PROGRESS_INTERVAL_MS: 20 }, gpu: false });
  });
  after(async () => {
    await workers?.stop();
    await env?.teardown();
  });

  it('a stage reporting progress every 20 ms for 45 s completes, with its live step in `tanren status`', { timeout: 300_000 }, async () => {
    const workflowId = unique('chatty');
    const script = `
import json, os, time
ev = open(os.environ["TANREN_EVENTS"], "a")
end = time.time() + 45
i = 0
while time.time() < end:
    i += 1
    ev.write(json.dumps({"event": "progress", "step": i, "total": 2250}) + "\\n"); ev.flush()
    time.sleep(0.02)
open(os.path.join(os.environ["TANREN_OUTPUT"], "steps.txt"), "w").write(str(i))
`;
    const spec = {
      name: 'chatty',
      queues: { cpu: workers.queues.cpu, gpu: workers.queues.cpu },
      stages: [
        { id: 'train', run: ['python3', '-c', script] },
        { id: 'after', needs: ['train'], run: ['true'] },
      ],
    };
    const handle = await env.client.workflow.start('pipelineWorkflow', {
      taskQueue: workers.queues.control,
      workflowId,
      args: [{ spec, options: { noCache: true } }],
    });
    const seen: number[] = [];
    await waitFor(
      'two increasing live steps',
      async () => {
        const step = (await fetchRun(env.client, workflowId)).status?.stages[0]?.step;
        if (step !== undefined && step !== seen.at(-1)) seen.push(step);
        return seen.length >= 2;
      },
      60_000,
      500,
    );
    // The operator's view: the CLI, run as a user runs it.
    const shown = await exec(process.execPath, ['dist/cli/main.js', 'status', workflowId], {
      cwd: ROOT,
      env: { ...process.env, TEMPORAL_ADDRESS: env.address, TEMPORAL_NAMESPACE: 'default' },
    });
    assert.match(shown.stdout, /train\s+run\s+cpu\s+running\s+1\s+\[[#.]+\]\s+\d+%/, shown.stdout);
    const result = (await handle.result()) as RunResult;
    assert.deepEqual(
      result.stages.map((s) => s.state),
      ['succeeded', 'succeeded'],
    );
    const train = result.stages[0];
    assert.ok((train.step ?? 0) > 1000, `final step ${train.step} is the stage's last, not a stale tick`);
    const [only] = await executions(env.client, workflowId);
    assert.ok(only.events < 60, `history has ${only.events} events for ~2,250 progress ticks`);
    const done = await exec(process.execPath, ['dist/cli/main.js', 'status', workflowId], {
      cwd: ROOT,
      env: { ...process.env, TEMPORAL_ADDRESS: env.address },
    });
    assert.match(done.stdout, /train\s+run\s+cpu\s+succeeded\s+1\s+\[#+\]\s+100%/, done.stdout);
  });

  it('a simulated 7-day stage heartbeating every 10 s of its time adds no history per tick', { timeout: 300_000 }, async () => {
    // 7 days of 10 s ticks = 60,480 progress reports, sent as fast as the worker takes them.
    const ticks = 7 * 24 * 360;
    const taskQueue = unique('week');
    const fake = createFakeActivities();
    const worker = await Worker.create({
      connection: env.nativeConnection,
      taskQueue,
      workflowBundle: await workflowBundle(),
      maxHeartbeatThrottleInterval: 1,
      defaultHeartbeatThrottleInterval: 1,
      activities: {
        ...fake.activities,
        async runStage(task: StageTask) {
          const ctx = Context.current();
          for (let step = 1; step <= ticks; step++) {
            ctx.heartbeat({ attempt: 1, step, total: ticks });
            if (step % 1000 === 0) await new Promise((r) => setImmediate(r));
          }
          return {
            stage: task.stage.id,
            attempt: 1,
            manifestKey: `runs/${task.runId}/${task.stage.id}/manifest.json`,
            files: 0,
            bytes: 0,
            result: {},
            metrics: {},
            step: ticks,
            total: ticks,
            startedAt: new Date().toISOString(),
            endedAt: new Date().toISOString(),
          };
        },
      },
    });
    const workflowId = unique('week');
    const result = (await worker.runUntil(
      env.client.workflow.execute('pipelineWorkflow', {
        taskQueue,
        workflowId,
        args: [{ spec: { name: 'week', queues: { cpu: taskQueue, gpu: taskQueue }, stages: [{ id: 'pretrain', run: ['x'], timeout: '8d' }] }, options: {} }],
      }),
    )) as RunResult;
    assert.equal(result.stages[0].state, 'succeeded');
    assert.equal(result.stages[0].step, ticks);
    const runs = await executions(env.client, workflowId);
    assert.equal(runs.length, 1);
    assert.ok(runs[0].events < 30, `${runs[0].events} events`);
  });

  it("a chain longer than one execution can hold continues as new, keeping every stage's state", { timeout: 300_000 }, async () => {
    const taskQueue = unique('chain');
    const fake = createFakeActivities();
    const worker = await Worker.create({ connection: env.nativeConnection, taskQueue, workflowBundle: await workflowBundle(), activities: fake.activities });
    const n = 150;
    const stages = Array.from({ length: n }, (_, i) => ({
      id: `s${i}`,
      run: ['x'],
      ...(i ? { needs: [`s${i - 1}`] } : {}),
      with: i % 10 === 0 ? { cached: true } : {},
    }));
    const workflowId = unique('chain');
    const handle = await env.client.workflow.start('pipelineWorkflow', {
      taskQueue,
      workflowId,
      args: [{ spec: { name: 'chain', queues: { cpu: taskQueue, gpu: taskQueue }, stages }, options: {} }],
    });
    const { result, status } = await worker.runUntil(async () => ({
      result: (await handle.result()) as RunResult,
      // The last execution answers for the whole run: every stage, the first start time, the attempts.
      status: await env.client.workflow.getHandle(workflowId).query(statusQuery),
    }));
    assert.equal(result.stages.length, n);
    assert.ok(result.stages.every((s) => s.state === (Number(s.id.slice(1)) % 10 === 0 ? 'cached' : 'succeeded')));
    const runs = await executions(env.client, workflowId);
    assert.ok(runs.length >= 3, `${runs.length} executions: the run continued as new`);
    for (const r of runs) assert.ok(r.events < HISTORY_LIMIT, `execution ${r.runId} has ${r.events} events`);
    assert.deepEqual(
      runs.slice(0, -1).map((r) => r.status),
      runs.slice(0, -1).map(() => 'CONTINUED_AS_NEW'),
    );
    assert.equal(status.state, 'succeeded');
    assert.equal(status.continuedAsNew, runs.length - 1);
    assert.equal(status.stages.filter((s) => s.state === 'cached').length, n / 10);
    assert.equal(status.stages[0].cachedFrom, 'earlier');
    assert.ok(Date.parse(status.startedAt) <= Date.parse(status.stages[1].startedAt!), 'the run keeps its first start time');
    // Downstream stages got the manifests of stages finished in earlier executions.
    assert.deepEqual(status.stages[n - 1].result, { inputs: [`s${n - 2}`] });
  });
});
