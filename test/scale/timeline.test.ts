/**
 * The report's stage timeline past its budget (workflows/timeline.ts), shown
 * through the workflow: 3,200 stages with the longest ids end before a report
 * stage, so their rows (~173 bytes each, 541 kB) pass the 512 KiB a report's
 * task may carry of them. The activities are the scriptable fakes; the test
 * reads the report's task from the history, as Temporal stored it, on a dev
 * server that enforces Temporal's payload limit. `make test-scale` runs it.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { jsonBytes } from '../../schemas/payload-size.js';
import type { StageTask } from '../../activities/types.js';
import { statusQuery, type RunResult } from '../../workflows/pipeline.js';
import { TIMELINE_BUDGET_BYTES } from '../../workflows/timeline.js';
import { startFakeWorker } from '../helpers/fake-activities.js';
import { executions, startLimitedServer } from '../helpers/history.js';
import { unique } from '../helpers/env.js';

const STAGES = 3200;

describe('the stage timeline a report receives, past its budget', () => {
  let env: TestWorkflowEnvironment;

  before(async () => {
    env = await startLimitedServer(51_200);
  });
  after(async () => {
    await env?.teardown();
  });

  it(`${STAGES} stages with the longest ids before a report: the longest rows kept, the rest counted`, { timeout: 900_000 }, async () => {
    const { taskQueue, worker } = await startFakeWorker(env, 'timeline-scale');
    const id = (i: number) => `s${String(i).padStart(4, '0')}`.padEnd(63, '-');
    const stages = Array.from({ length: STAGES }, (_, i) => ({ id: id(i), run: ['x'] }));
    const spec = {
      name: 'timeline-scale',
      queues: { cpu: taskQueue, gpu: taskQueue },
      stages: [...stages, { id: 'report', uses: 'report', needs: stages.map((s) => s.id) }],
    };
    const workflowId = unique('timeline-scale');
    const { result, status } = await worker.runUntil(async () => {
      const handle = await env.client.workflow.start('pipelineWorkflow', { taskQueue, workflowId, args: [{ spec, options: { noCache: true } }] });
      const result = (await handle.result()) as RunResult;
      // What `tanren status` shows: every stage with its times.
      return { result, status: await handle.query(statusQuery) };
    });
    assert.equal(result.state, 'succeeded');
    // The report's task as the server stored it: the last runStage scheduled in the run's last execution.
    const last = (await executions(env.client, workflowId)).at(-1)!;
    const scheduled = (last.history.events ?? [])
      .map((e) => e.activityTaskScheduledEventAttributes)
      .filter((a) => a?.activityType?.name === 'runStage')
      .at(-1)!;
    const payload = scheduled.input!.payloads![0];
    const task = JSON.parse(Buffer.from(payload.data!).toString('utf8')) as StageTask;
    assert.equal(task.stage.id, 'report');
    const timeline = task.stage.with.timeline as Array<{ stage: string; start: string; end: string }>;
    const omitted = task.stage.with.timeline_omitted as number;
    console.log(
      `timeline: ${STAGES} stages, ${timeline.length} rows kept (${jsonBytes(timeline)} bytes), ${omitted} left out; the report's task ${payload.data!.length} bytes`,
    );
    assert.ok(jsonBytes(timeline) <= TIMELINE_BUDGET_BYTES);
    assert.ok(omitted > 0);
    assert.equal(timeline.length + omitted, STAGES);
    // The kept rows are the longest-running: none left out ran longer than the shortest kept.
    const took = (r: { start: string; end: string }) => Date.parse(r.end) - Date.parse(r.start);
    const kept = new Set(timeline.map((r) => r.stage));
    const shortestKept = Math.min(...timeline.map(took));
    const ended = status.stages.filter((s) => s.id !== 'report' && !kept.has(s.id));
    assert.equal(ended.length, omitted);
    for (const s of ended) assert.ok(took({ start: s.startedAt!, end: s.endedAt! }) <= shortestKept, `${s.id} ran longer than a kept row`);
  });
});
