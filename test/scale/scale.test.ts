/**
 * The supported maximum, run for real: a pipeline of 5,000 stages (the limit
 * `tanren validate` enforces, schemas/validate.ts MAX_STAGES), a long chain
 * and a long chain of `local: true` stages (local activities, which record a
 * marker each and may run many to one workflow task), each stage a real
 * `run: ['true']` process on real workers, MinIO
 * storing every manifest. The run's Temporal server is a dev server of this
 * test's own with `limit.historyCount.error` lowered to 10,000 events, so a
 * run whose history is not bounded by continue-as-new is terminated and fails.
 * Each test prints a one-line summary: wall time per stage, executions, the
 * most events any execution's history had, the largest continue-as-new input
 * (spec and carried state; Temporal refuses payloads over 2 MiB), how long a
 * full replay of the largest execution takes (what a worker that lost its
 * cache does mid-run, within one workflow task) and how long a `status` query
 * of the finished run took (reported, not asserted). The largest history is
 * kept in test-artifacts/scale/ for profiling.
 *
 * `make test-scale` runs these (infra/test with its own MinIO and state
 * directory); they are not part of `make test`.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { historyToJSON } from '@temporalio/common/lib/proto-utils.js';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { Worker } from '@temporalio/worker';
import { MAX_STAGES } from '../../schemas/validate.js';
import { workflowBundle } from '../../worker/run-worker.js';
import type { RunResult } from '../../workflows/pipeline.js';
import { CONTINUE_AS_NEW_AFTER_STAGES, statusQuery } from '../../workflows/pipeline.js';
import { ROOT, unique } from '../helpers/env.js';
import { startTestWorkers, type TestWorkers } from '../helpers/workers.js';
import { executions, startLimitedServer, type Execution } from '../helpers/history.js';

const exec = promisify(execFile);
const HISTORY_LIMIT = 10_000;
const FAN_OUT = 5000;
const CHAIN = 2000;
const LOCAL_CHAIN = 2000;
/** The fan-in's run id: the longest a stage runs under (activities/stage-runner/attempt-dir.ts). */
const FAN_IN_RUN_ID_CHARS = 200;

describe('the stage limit', () => {
  it(`a ${MAX_STAGES + 1}-stage spec is rejected by \`tanren validate\`, naming the limit ${MAX_STAGES}`, async () => {
    assert.equal(MAX_STAGES, 5000);
    const dir = mkdtempSync(path.join(os.tmpdir(), 'tanren-scale-'));
    try {
      const file = path.join(dir, 'too-many.yaml');
      const stages = Array.from({ length: MAX_STAGES + 1 }, (_, i) => ({ id: `s${i}`, run: ['true'] }));
      writeFileSync(file, JSON.stringify({ name: 'too-many', stages }, null, 1));
      const err = await exec(process.execPath, ['dist/cli/main.js', 'validate', file], { cwd: ROOT }).then(
        () => assert.fail('validate accepted a spec over the limit'),
        (e: { code?: number; stdout: string; stderr: string }) => e,
      );
      assert.equal(err.code, 1, err.stderr);
      assert.match(err.stdout + err.stderr, /5001 stages: a pipeline may have at most 5000\b/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe(`runs at the supported maximum (real workers, dev server with limit.historyCount.error=${HISTORY_LIMIT})`, () => {
  let env: TestWorkflowEnvironment;
  let workers: TestWorkers;

  before(async () => {
    env = await startLimitedServer(HISTORY_LIMIT);
    workers = await startTestWorkers({ prefix: 'scale', envOverrides: { TEMPORAL_ADDRESS: env.address, TANREN_CPU_CONCURRENCY: 8 }, gpu: false });
  });
  after(async () => {
    await workers?.stop();
    await env?.teardown();
  });

  /** Runs `stages` to the end, checks every execution's history and prints the one-line summary. */
  async function runAtScale(label: string, stages: Array<{ id: string; run: string[]; needs?: string[]; local?: boolean }>, runIdChars = 0) {
    const workflowId = unique(label).padEnd(runIdChars, '-');
    const started = performance.now();
    const handle = await env.client.workflow.start('pipelineWorkflow', {
      taskQueue: workers.queues.control,
      workflowId,
      args: [{ spec: { name: label, queues: { cpu: workers.queues.cpu, gpu: workers.queues.cpu }, stages }, options: { noCache: true } }],
    });
    const result = (await handle.result()) as RunResult;
    const seconds = (performance.now() - started) / 1000;
    const runs = await executions(env.client, workflowId);
    const largest = runs.reduce((a, b) => (b.events > a.events ? b : a));
    // Kept for profiling a replay (test-artifacts/ is ignored by git).
    const saved = path.join(ROOT, 'test-artifacts', 'scale', `${label}-largest-history.json`);
    mkdirSync(path.dirname(saved), { recursive: true });
    writeFileSync(saved, historyToJSON(largest.history));
    // What a worker that lost its cache (a restart mid-run) must do in one workflow task.
    const replayed = performance.now();
    await Worker.runReplayHistory({ workflowBundle: await workflowBundle() }, largest.history, largest.runId);
    const replaySeconds = (performance.now() - replayed) / 1000;
    // What `tanren status` of the finished run costs: the worker replays the last execution to answer.
    const queried = performance.now();
    const query = await env.client.workflow
      .getHandle(workflowId)
      .query(statusQuery)
      .then(
        (st) => `status query ${((performance.now() - queried) / 1000).toFixed(1)} s (${st.state})`,
        (err: Error) =>
          `status query FAILED after ${((performance.now() - queried) / 1000).toFixed(1)} s: ${err.message}${err.cause ? ` (${String((err.cause as Error).message ?? err.cause)})` : ''}`,
      );
    const carriedKiB = Math.max(0, ...runs.map((r) => r.continuedWithBytes ?? 0)) / 1024;
    console.log(
      `scale: ${label} of ${stages.length} stages: ${seconds.toFixed(1)} s, ${((seconds * 1000) / stages.length).toFixed(1)} ms/stage, ` +
        `${runs.length} executions, max ${largest.events} events per execution (${runs.map((r) => r.events).join('/')}; limit ${HISTORY_LIMIT}), ` +
        `largest continue-as-new input ${carriedKiB.toFixed(0)} KiB, replay of the largest execution ${replaySeconds.toFixed(1)} s, ${query}`,
    );
    assert.equal(result.stages.length, stages.length);
    const notOk = result.stages.filter((s) => s.state !== 'succeeded' || !s.manifestKey);
    assert.equal(notOk.length, 0, `${notOk.length} stages did not succeed, e.g. ${JSON.stringify(notOk.slice(0, 3))}`);
    assert.ok(runs.length >= 2, `${runs.length} execution(s): the run never continued as new`);
    for (const r of runs) assert.ok(r.events < HISTORY_LIMIT, `execution ${r.runId} has ${r.events} events`);
    assert.deepEqual(
      runs.map((r) => r.status),
      [...runs.slice(0, -1).map(() => 'CONTINUED_AS_NEW'), 'COMPLETED'],
    );
    return runs;
  }

  /** Where each stage's activity was scheduled and completed, as [execution, event id] across the chain of executions. */
  function activityEvents(runs: Execution[]) {
    const at = new Map<string, { scheduled?: [number, number]; completed?: [number, number] }>();
    runs.forEach((r, n) => {
      const byEvent = new Map<number, string>();
      for (const e of r.history.events ?? []) {
        const id = Number(e.eventId);
        const scheduled = e.activityTaskScheduledEventAttributes;
        if (scheduled?.activityType?.name === 'runStage' && scheduled.activityId) {
          byEvent.set(id, scheduled.activityId);
          at.set(scheduled.activityId, { ...at.get(scheduled.activityId), scheduled: [n, id] });
        }
        const completed = e.activityTaskCompletedEventAttributes;
        const stage = completed ? byEvent.get(Number(completed.scheduledEventId)) : undefined;
        if (stage) at.set(stage, { ...at.get(stage), completed: [n, id] });
      }
    });
    return at;
  }
  const precedes = (a: [number, number], b: [number, number]) => a[0] < b[0] || (a[0] === b[0] && a[1] < b[1]);

  it(
    `a fan-out of ${FAN_OUT - 1} independent stages and a fan-in of them all completes under a run id of ${FAN_IN_RUN_ID_CHARS} characters, every stage succeeded`,
    { timeout: 3 * 3_600_000 },
    async () => {
      const stages = Array.from({ length: FAN_OUT - 1 }, (_, i) => ({ id: `s${i}`, run: ['true'] }));
      const merge = { id: 'merge', run: ['true'], needs: stages.map((st) => st.id) };
      // Each of the fan-in's inputs names a manifest key holding the run id: 4,999 × ~265 bytes, 1.3 MB in its task,
      // past the 1 MiB after which this run's keys are left out (workflows/carry.ts fitInputs).
      const runs = await runAtScale('fan-out', [...stages, merge], FAN_IN_RUN_ID_CHARS);
      // Each stage ran exactly once, in one of the executions.
      const at = activityEvents(runs);
      assert.equal(at.size, FAN_OUT);
      for (const [id, e] of at) assert.ok(e.scheduled && e.completed, `${id}: ${JSON.stringify(e)}`);
      const [n, id] = at.get('merge')!.scheduled!;
      const scheduled = runs[n].history.events!.find((e) => Number(e.eventId) === id)!.activityTaskScheduledEventAttributes!;
      const inputBytes = (scheduled.input?.payloads ?? []).reduce((sum, p) => sum + (p.data?.length ?? 0), 0);
      console.log(`scale: the fan-in's task is ${(inputBytes / 1024).toFixed(0)} KiB`);
      assert.ok(inputBytes < 256 * 1024, `${inputBytes} bytes`);
    },
  );

  it(`a chain of ${LOCAL_CHAIN} local stages completes, each run once, in order`, { timeout: 3 * 3_600_000 }, async () => {
    const stages = Array.from({ length: LOCAL_CHAIN }, (_, i) => ({ id: `s${i}`, local: true, run: ['true'], ...(i ? { needs: [`s${i - 1}`] } : {}) }));
    const runs = await runAtScale('local-chain', stages);
    // One marker per local stage across the executions, in chain order, and no activity tasks.
    const summaries: string[] = [];
    for (const r of runs) {
      const here = (r.history.events ?? []).filter((e) => e.markerRecordedEventAttributes?.markerName === 'core_local_activity').length;
      // Bounded by stages as well as by events: a worker replays one execution within a workflow task's timeout.
      assert.ok(here <= CONTINUE_AS_NEW_AFTER_STAGES, `execution ${r.runId} ran ${here} local stages`);
      for (const e of r.history.events ?? []) {
        assert.ok(!e.activityTaskScheduledEventAttributes, 'a local stage never becomes an activity task');
        if (e.markerRecordedEventAttributes?.markerName !== 'core_local_activity') continue;
        const data = e.userMetadata?.summary?.data;
        summaries.push(data ? (JSON.parse(Buffer.from(data).toString('utf8')) as string).split(' · ')[0] : '?');
      }
    }
    assert.deepEqual(
      summaries,
      stages.map((s) => s.id),
    );
  });

  it(`a chain of ${CHAIN} stages completes`, { timeout: 3 * 3_600_000 }, async () => {
    const stages = Array.from({ length: CHAIN }, (_, i) => ({ id: `s${i}`, run: ['true'], ...(i ? { needs: [`s${i - 1}`] } : {}) }));
    const runs = await runAtScale('chain', stages);
    // Each stage was scheduled only after the one it needs had completed, across executions too.
    const at = activityEvents(runs);
    assert.equal(at.size, CHAIN);
    for (let i = 1; i < CHAIN; i++) {
      const prev = at.get(`s${i - 1}`)?.completed;
      const mine = at.get(`s${i}`)?.scheduled;
      assert.ok(prev && mine && precedes(prev, mine), `s${i} was scheduled at ${JSON.stringify(mine)}, s${i - 1} completed at ${JSON.stringify(prev)}`);
    }
  });
});
