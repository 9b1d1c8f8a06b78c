/**
 * Records the replay histories `test/workflow/replay.test.ts` checks every workflow
 * change against: small runs of the CURRENT pipelineWorkflow (the
 * `tanren-lean-progress-1` path: progress in heartbeats, continue-as-new with
 * `carried` state), one per behaviour a run in flight can be in the middle of,
 * written to test/histories/lean-<scenario>.json.
 *
 *   npx tsc -p tsconfig.json && node dist/test/workflow/record-histories.js [scenario ...]
 *
 * Naming scenarios records only those (a new scenario is added without
 * re-recording the others).
 *
 * When to re-record: almost never. These files stand for runs already in
 * flight on someone's cluster; re-recording them after a change makes the
 * replay test pass by forgetting those runs. If a workflow change fails
 * replay, make it compatible instead: guard the new behaviour with
 * `patched('tanren-<what>-<n>')` (keep the old path for old histories, as
 * `LEAN_PROGRESS_PATCH` does), and keep every existing file. Only when the
 * change is meant to be incompatible and has been versioned that way, ADD
 * fresh histories of the new path: give the old lean-*.json files a new
 * prefix (e.g. `lean1-`) rather than deleting them while runs of that code may
 * still exist, change PREFIX below, run this script, and update the
 * expectations in test/workflow/replay.test.ts. A scenario that should cover a new
 * behaviour is added here, not hand-edited into a JSON file.
 *
 * Runs on its own dev server (the installed `temporal` CLI, as the workflow
 * tests do, with `limit.historyCount.suggestContinueAsNew=300` so a 60-stage
 * chain continues as new) and a worker with the bundled workflow from dist/
 * and scripted fake activities (no MinIO, no stage processes). It checks each
 * run ended as the scenario intends before writing anything, and fails
 * otherwise. Files are written in the SDK's `historyToJSON` format, the proto3
 * JSON that `temporal workflow show --output json` writes and that
 * `Worker.runReplayHistory` loads.
 */
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import path from 'node:path';
import { Context } from '@temporalio/activity';
import { WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { historyToJSON } from '@temporalio/common/lib/proto-utils.js';
import protos from '@temporalio/proto';
import type Long from 'long';
import { DefaultLogger, Runtime, Worker } from '@temporalio/worker';
import type { StageResult, StageTask } from '../../activities/types.js';
import { FailureTypes, NON_RETRYABLE_FAILURE_TYPES } from '../../schemas/names.js';
import { MAX_PIPELINE_SWEEP_TRIALS, MAX_SWEEP_TRIALS } from '../../schemas/pipeline.js';
import { workflowBundle } from '../../worker/run-worker.js';
import {
  CONTINUE_AS_NEW_AFTER_STAGES,
  LEAN_PROGRESS_PATCH,
  PAYLOAD_BUDGET_PATCH,
  pauseSignal,
  SWEEP_PARAMS_PATCH,
  SWEEP_TRIALS_PATCH,
  resumeSignal,
  stageProgressSignal,
  statusQuery,
  type RunResult,
} from '../../workflows/pipeline.js';
import { createFakeActivities } from '../helpers/fake-activities.js';
import { ROOT, unique, waitFor } from '../helpers/env.js';
import { startDevServer } from '../helpers/servers.js';
import { executions, largeMessageClient, patchIds } from '../helpers/history.js';

// A CommonJS module: its namespace is only reachable through the default export.
const { temporal } = protos;
const EventType = temporal.api.enums.v1.EventType;
type History = protos.temporal.api.history.v1.IHistory;

// ERROR, not WARN: the planned stage failures would each log a warning with a stack trace.
Runtime.install({ logger: new DefaultLogger('ERROR') });

/** File name prefix of the histories this script writes. */
const PREFIX = 'lean-';
/** Scenarios named on the command line, else all: `node dist/test/workflow/record-histories.js one-activity` records that one only. */
const ONLY = process.argv.slice(2);
const want = (scenario: string) => !ONLY.length || ONLY.includes(scenario);
const OUT_DIR = path.join(ROOT, 'test', 'histories');

// ---------------------------------------------------------------------------
// Fake activities: checkCache from the shared helper; runStage scripted here,
// shaped like the real one (activities/run-stage.ts) where it reaches the
// history: heartbeat details carrying the attempts and an OutOfMemory's
// smaller batch to the next attempt, failures with `{ attempt, attempts }`
// details, results listing every attempt.
// ---------------------------------------------------------------------------

/** How a stage behaves, from its `with`. */
interface Behaviour {
  cached?: boolean;
  failAttempts?: number;
  failType?: string;
  /** Heartbeat until released (or cancelled). */
  block?: boolean;
  micro_batch_size?: number;
  gradient_accumulation_steps?: number;
  /** Add a string of this many bytes to the result (a stage reporting a large result). */
  resultBytes?: number;
}

interface Attempt {
  attempt: number;
  startedAt: string;
  endedAt?: string;
  failure?: string;
}
interface BatchSettings {
  micro_batch_size: number;
  gradient_accumulation_steps: number;
}
interface Heartbeat {
  attempt: number;
  step?: number;
  total?: number;
  settings?: BatchSettings;
  nextSettings?: BatchSettings;
  attempts: Attempt[];
}

/** One attempt the fake ran, by `<workflowId>/<stage>`. */
interface Ran {
  key: string;
  attempt: number;
  settings?: BatchSettings;
  outcome?: 'ok' | 'failed' | 'cancelled';
}

function createScriptedActivities() {
  const ran: Ran[] = [];
  const releases = new Map<string, () => void>();
  const gates = new Map<string, Promise<void>>();
  const gate = (key: string) => {
    if (!gates.has(key)) gates.set(key, new Promise<void>((r) => releases.set(key, r)));
    return gates.get(key)!;
  };
  const TOTAL = 10;

  const { checkCache } = createFakeActivities().activities;

  async function runStage(task: StageTask): Promise<StageResult> {
    const ctx = Context.current();
    const attempt = ctx.info.attempt;
    const id = task.stage.id;
    // Runs that check the cache inside runStage (ONE_ACTIVITY_PATCH): a hit runs nothing.
    const lookup = task.lookupCache ? await checkCache(task) : undefined;
    if (lookup?.hit) {
      const at = new Date().toISOString();
      return {
        stage: id,
        attempt: 0,
        manifestKey: lookup.manifestKey,
        files: 1,
        bytes: 42,
        result: lookup.result,
        metrics: {},
        attempts: [],
        startedAt: at,
        endedAt: at,
        cache: { hit: true, reason: lookup.reason, fromRun: lookup.fromRun },
      };
    }
    const w = (task.stage.with ?? {}) as Behaviour;
    const previous = (ctx.info.heartbeatDetails ?? undefined) as Heartbeat | undefined;
    const startedAt = new Date().toISOString();
    const hb: Heartbeat = { attempt, attempts: [...(previous?.attempts ?? []).filter((a) => a.attempt < attempt), { attempt, startedAt }] };
    const settings: BatchSettings | undefined =
      previous?.nextSettings ??
      (w.micro_batch_size ? { micro_batch_size: w.micro_batch_size, gradient_accumulation_steps: w.gradient_accumulation_steps ?? 1 } : undefined);
    if (settings) hb.settings = hb.nextSettings = settings;
    const beat = (change: Partial<Heartbeat> = {}) => {
      Object.assign(hb, change);
      ctx.heartbeat({ ...hb });
    };
    const close = (failure?: string) => {
      const current = hb.attempts.at(-1)!;
      current.endedAt = new Date().toISOString();
      if (failure) current.failure = failure;
      return hb.attempts;
    };
    const rec: Ran = { key: `${task.runId}/${id}`, attempt, settings };
    ran.push(rec);
    beat({ step: 0, total: TOTAL });
    try {
      if (w.block) {
        const ticking = setInterval(() => beat(), 100);
        try {
          await Promise.race([gate(rec.key), ctx.cancelled]);
        } finally {
          clearInterval(ticking);
        }
      }
      if (w.failAttempts && attempt <= w.failAttempts) {
        const type = w.failType ?? FailureTypes.StageCrashed;
        let message = `stage "${id}" exited with code ${type === FailureTypes.OutOfMemory ? 4 : 1}: planned failure of attempt ${attempt}`;
        if (type === FailureTypes.OutOfMemory && settings) {
          const micro = Math.floor(settings.micro_batch_size / 2);
          const next = {
            micro_batch_size: micro,
            gradient_accumulation_steps: Math.round((settings.gradient_accumulation_steps * settings.micro_batch_size) / micro),
          };
          message += ` — next attempt: micro_batch_size=${next.micro_batch_size}, gradient_accumulation_steps=${next.gradient_accumulation_steps}`;
          beat({ nextSettings: next });
        }
        const attempts = close(`${type}: ${message}`);
        beat();
        throw ApplicationFailure.create({
          type,
          message,
          nonRetryable: (NON_RETRYABLE_FAILURE_TYPES as readonly string[]).includes(type),
          details: [{ attempt, exitCode: type === FailureTypes.OutOfMemory ? 4 : 1, settings, attempts, ...(lookup ? { cache: lookup.reason } : {}) }],
        });
      }
      beat({ step: TOTAL });
      rec.outcome = 'ok';
      return {
        stage: id,
        attempt,
        manifestKey: `runs/${task.runId}/${id}/manifest.json`,
        files: 1,
        bytes: 42,
        result: { inputs: task.inputs.map((i) => i.stage), ...(settings ?? {}), ...(w.resultBytes ? { blob: 'r'.repeat(w.resultBytes) } : {}) },
        metrics: { loss: 1.5 },
        step: TOTAL,
        total: TOTAL,
        attempts: close(),
        startedAt,
        endedAt: new Date().toISOString(),
        ...(lookup ? { cache: { hit: false, reason: lookup.reason } } : {}),
      };
    } catch (err) {
      rec.outcome = err instanceof CancelledFailure || ctx.cancellationSignal.aborted ? 'cancelled' : 'failed';
      throw err;
    }
  }

  return {
    activities: { checkCache, runStage },
    ran,
    /** Attempts of one stage of one run. */
    attemptsOf: (workflowId: string, stage: string) => ran.filter((r) => r.key === `${workflowId}/${stage}`),
    release: (workflowId: string, stage: string) => {
      const key = `${workflowId}/${stage}`;
      void gate(key);
      releases.get(key)!();
    },
  };
}

// ---------------------------------------------------------------------------

const eventName = (t: unknown) => (typeof t === 'number' ? EventType[t] : String(t)).replace(/^EVENT_TYPE_/, '');

function events(history: History) {
  return history.events ?? [];
}

/** Throws unless the history ran the lean path and ended with `lastEvent`. */
function check(history: History, lastEvent: protos.temporal.api.enums.v1.EventType) {
  const evs = events(history);
  const last = evs.at(-1)?.eventType;
  assert.equal(eventName(last), eventName(lastEvent), 'last event');
  assert.ok(
    patchIds(history).some((p) => p.includes(LEAN_PROGRESS_PATCH)),
    `no ${LEAN_PROGRESS_PATCH} marker: the worker ran old workflow code`,
  );
}

const written: Array<{ file: string; events: number; bytes: number; last: string }> = [];

/** Writes a history as `lean-<scenario>.json`, or gzipped as `.json.gz` (a history of large payloads: megabytes of repeats). */
function write(scenario: string, history: History, gzip = false, prefix = PREFIX) {
  const file = `${prefix}${scenario}.json${gzip ? '.gz' : ''}`;
  // Stack traces keep their first line only: the frames would name this machine's paths.
  const text = historyToJSON(history).replace(/("stackTrace": ")((?:[^"\\]|\\.)*?)(\\n(?:[^"\\]|\\.)*)?"/g, '$1$2"') + '\n';
  const data = gzip ? gzipSync(text, { level: 9 }) : text;
  writeFileSync(path.join(OUT_DIR, file), data);
  written.push({ file, events: events(history).length, bytes: data.length, last: eventName(events(history).at(-1)?.eventType) });
}

async function main() {
  mkdirSync(OUT_DIR, { recursive: true });
  const env = await startDevServer('limit.historyCount.suggestContinueAsNew=300');
  try {
    const fake = createScriptedActivities();
    const taskQueue = unique('record');
    const worker = await Worker.create({
      connection: env.nativeConnection,
      taskQueue,
      workflowBundle: await workflowBundle(),
      activities: fake.activities,
      // Cancellation reaches an activity through a heartbeat response: do not let throttling delay it.
      maxHeartbeatThrottleInterval: '100ms',
      defaultHeartbeatThrottleInterval: '100ms',
    });
    const client = env.client;
    const input = (name: string, stages: unknown[], options: Record<string, unknown> = {}) => ({
      spec: { name, queues: { cpu: taskQueue, gpu: taskQueue }, stages },
      options,
    });
    const start = (scenario: string, stages: unknown[], options: Record<string, unknown> = {}) =>
      client.workflow.start('pipelineWorkflow', { taskQueue, workflowId: unique(`lean-${scenario}`), args: [input(`lean-${scenario}`, stages, options)] });
    const failureOf = (handle: WorkflowHandle) =>
      handle.result().then(
        () => assert.fail(`${handle.workflowId} succeeded; a failure was expected`),
        (e: unknown) => {
          assert.ok(e instanceof WorkflowFailedError, String(e));
          return e;
        },
      );
    const quick = { maximumAttempts: 3, initialInterval: '200ms' };

    await worker.runUntil(async () => {
      // 1. A stage whose outputs are cached, then one that misses the cache and runs.
      if (want('cache-miss-then-run')) {
        const h = await start('cache-miss-then-run', [
          { id: 'prep', run: ['x'], with: { cached: true } },
          { id: 'train', needs: ['prep'], run: ['x'] },
        ]);
        const r = (await h.result()) as RunResult;
        assert.deepEqual(
          r.stages.map((s) => s.state),
          ['cached', 'succeeded'],
        );
        const history = await h.fetchHistory();
        check(history, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED);
        write('cache-miss-then-run', history);
      }

      // 2. Attempt 1 crashes (StageCrashed), attempt 2 succeeds; a dependent stage runs after.
      if (want('retry-after-crash')) {
        const h = await start(
          'retry-after-crash',
          [
            { id: 'flaky', run: ['x'], with: { failAttempts: 1, failType: 'StageCrashed' }, retry: quick },
            { id: 'after', needs: ['flaky'], run: ['x'] },
          ],
          { noCache: true },
        );
        const r = (await h.result()) as RunResult;
        assert.deepEqual(
          r.stages.map((s) => [s.state, s.attempt]),
          [
            ['succeeded', 2],
            ['succeeded', 1],
          ],
        );
        assert.match(String(r.stages[0].attempts?.[0]?.failure), /^StageCrashed: /);
        const history = await h.fetchHistory();
        check(history, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED);
        write('retry-after-crash', history);
      }

      // 3. Attempt 1 runs out of memory; attempt 2 runs with half the micro-batch and succeeds.
      if (want('oom-shrink')) {
        const h = await start(
          'oom-shrink',
          [{ id: 'sft', run: ['x'], with: { micro_batch_size: 8, gradient_accumulation_steps: 2, failAttempts: 1, failType: 'OutOfMemory' }, retry: quick }],
          { noCache: true },
        );
        const r = (await h.result()) as RunResult;
        assert.deepEqual(
          r.stages.map((s) => [s.state, s.attempt]),
          [['succeeded', 2]],
        );
        assert.deepEqual(
          fake.attemptsOf(h.workflowId, 'sft').map((a) => a.settings),
          [
            { micro_batch_size: 8, gradient_accumulation_steps: 2 },
            { micro_batch_size: 4, gradient_accumulation_steps: 4 },
          ],
        );
        const history = await h.fetchHistory();
        check(history, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED);
        write('oom-shrink', history);
      }

      // 4. Paused while a stage runs: it finishes, nothing new starts until resume.
      if (want('pause-resume')) {
        const h = await start(
          'pause-resume',
          [
            { id: 'first', run: ['x'], with: { block: true } },
            { id: 'second', needs: ['first'], run: ['x'] },
          ],
          { noCache: true },
        );
        await waitFor('first to run', () => fake.attemptsOf(h.workflowId, 'first').length > 0);
        await h.signal(pauseSignal);
        await waitFor('the run to be paused', async () => (await h.query(statusQuery)).state === 'paused');
        fake.release(h.workflowId, 'first');
        await waitFor('first to succeed while paused', async () => (await h.query(statusQuery)).stages[0].state === 'succeeded');
        assert.equal(fake.attemptsOf(h.workflowId, 'second').length, 0, 'second started while paused');
        await h.signal(resumeSignal);
        const r = (await h.result()) as RunResult;
        assert.deepEqual(
          r.stages.map((s) => s.state),
          ['succeeded', 'succeeded'],
        );
        const history = await h.fetchHistory();
        check(history, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED);
        write('pause-resume', history);
      }

      // 5. Cancelled while a stage runs: the cancellation reaches the stage, the run ends cancelled.
      if (want('cancel')) {
        const h = await start(
          'cancel',
          [
            { id: 'long', run: ['x'], with: { block: true }, heartbeatTimeout: '5s' },
            { id: 'next', needs: ['long'], run: ['x'] },
          ],
          { noCache: true },
        );
        await waitFor('long to run', () => fake.attemptsOf(h.workflowId, 'long').length > 0);
        await h.cancel();
        const err = await failureOf(h);
        assert.ok(err.cause instanceof CancelledFailure, String(err.cause));
        assert.equal(fake.attemptsOf(h.workflowId, 'long')[0].outcome, 'cancelled');
        const history = await h.fetchHistory();
        check(history, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED);
        write('cancel', history);
      }

      // 6. A completed run reset (signals re-applied, as the UI and `temporal workflow reset` do by default)
      //    to just before its second stage was scheduled; the new execution runs it again and completes.
      if (want('reset')) {
        const h = await start(
          'reset',
          [
            { id: 'prep', run: ['x'] },
            { id: 'train', needs: ['prep'], run: ['x'], with: { block: true } },
            { id: 'eval', needs: ['train'], run: ['x'] },
          ],
          { noCache: true },
        );
        await waitFor('train to run', () => fake.attemptsOf(h.workflowId, 'train').length > 0);
        // Signals the reset re-applies: a stale progress signal of an older worker (ignored on the lean path), pause and resume.
        await h.signal(stageProgressSignal, { stage: 'train', attempt: 1, kind: 'progress', step: 3, total: 10, at: new Date().toISOString() });
        await h.signal(pauseSignal);
        await waitFor('the run to be paused', async () => (await h.query(statusQuery)).state === 'paused');
        await h.signal(resumeSignal);
        fake.release(h.workflowId, 'train');
        await h.result();
        const first = await h.fetchHistory();
        const scheduled = events(first).find(
          (e) => e.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED && e.activityTaskScheduledEventAttributes?.activityId === 'train',
        );
        assert.ok(scheduled, 'train was scheduled');
        const eventId = Number(scheduled.activityTaskScheduledEventAttributes!.workflowTaskCompletedEventId);
        const firstRunId = (await h.describe()).runId;
        const { runId }: protos.temporal.api.workflowservice.v1.IResetWorkflowExecutionResponse = await client.workflowService.resetWorkflowExecution({
          namespace: client.options.namespace,
          workflowExecution: { workflowId: h.workflowId, runId: firstRunId },
          reason: 'record-histories: reset before the second stage',
          // protobufjs takes a plain number for an int64 field; its typings only say Long.
          workflowTaskFinishEventId: eventId as unknown as Long,
          requestId: unique('reset'),
          resetReapplyType: temporal.api.enums.v1.ResetReapplyType.RESET_REAPPLY_TYPE_SIGNAL,
        });
        assert.ok(runId && runId !== firstRunId, 'the reset started a new execution');
        const reset = client.workflow.getHandle(h.workflowId, runId, { followRuns: false });
        const r = (await reset.result()) as RunResult;
        assert.deepEqual(
          r.stages.map((s) => s.state),
          ['succeeded', 'succeeded', 'succeeded'],
        );
        assert.equal(fake.attemptsOf(h.workflowId, 'train').length, 2, 'train ran again after the reset');
        assert.equal(fake.attemptsOf(h.workflowId, 'prep').length, 1, 'prep did not run again');
        const history = await reset.fetchHistory();
        check(history, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED);
        const reapplied = events(history).filter((e) => e.eventType === EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED).length;
        assert.equal(reapplied, 3, 'the three signals were re-applied');
        write('reset', history);
      }

      // 7. A 60-stage chain continues as new (server suggests it at 300 events); the first execution ends
      //    in WorkflowExecutionContinuedAsNew, the last starts from `carried` state.
      if (want('continue-as-new')) {
        const n = 60;
        const stages = Array.from({ length: n }, (_, i) => ({
          id: `s${i}`,
          run: ['x'],
          ...(i ? { needs: [`s${i - 1}`] } : {}),
          with: i % 10 === 0 ? { cached: true } : {},
        }));
        const h = await start('continue-as-new', stages);
        const r = (await h.result()) as RunResult;
        assert.equal(r.stages.length, n);
        assert.ok(r.stages.every((s) => s.state === (Number(s.id.slice(1)) % 10 === 0 ? 'cached' : 'succeeded')));
        const histories: History[] = [];
        let runId: string | null | undefined = h.firstExecutionRunId;
        while (runId) {
          const history = await client.workflow.getHandle(h.workflowId, runId, { followRuns: false }).fetchHistory();
          histories.push(history);
          runId = events(history).at(-1)?.workflowExecutionContinuedAsNewEventAttributes?.newExecutionRunId;
        }
        assert.ok(histories.length >= 2, `${histories.length} execution(s): the run did not continue as new`);
        const [firstRun, lastRun] = [histories[0], histories.at(-1)!];
        check(firstRun, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW);
        check(lastRun, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED);
        const started = events(lastRun)[0].workflowExecutionStartedEventAttributes!;
        const arg = JSON.parse(Buffer.from(started.input!.payloads![0].data!).toString()) as { carried?: { continuedAsNew: number } };
        assert.equal(arg.carried?.continuedAsNew, histories.length - 1, 'the last execution starts from carried state');
        write('continue-as-new-first', firstRun);
        write('continue-as-new-last', lastRun);
        console.log(`continue-as-new: ${histories.length} executions of ${histories.map((x) => events(x).length).join(', ')} events`);
      }

      // 8. A non-retryable failure: no retry, its dependent skipped, the independent branch still runs.
      if (want('failed')) {
        const h = await start(
          'failed',
          [
            { id: 'bad', run: ['x'], with: { failAttempts: 9, failType: 'InvalidStageInput' }, retry: { maximumAttempts: 5 } },
            { id: 'after', needs: ['bad'], run: ['x'] },
            { id: 'other', run: ['x'] },
          ],
          { noCache: true },
        );
        const err = await failureOf(h);
        assert.ok(err.cause instanceof ApplicationFailure);
        assert.equal(err.cause.type, 'InvalidStageInput');
        const outcome = (err.cause.details![0] as { stages: Array<{ id: string; state: string }> }).stages;
        assert.deepEqual(
          outcome.map((s) => [s.id, s.state]),
          [
            ['bad', 'failed'],
            ['after', 'skipped'],
            ['other', 'succeeded'],
          ],
        );
        assert.equal(fake.attemptsOf(h.workflowId, 'bad').length, 1, 'no retry');
        const history = await h.fetchHistory();
        check(history, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED);
        write('failed', history);
      }

      /** Records a run refused at its start behind `patch`. It never reaches the lean path's patch: no `lean-` prefix. */
      const recordRefused = async (scenario: string, stages: object[], patch: string) => {
        const h = await start(scenario, stages);
        const err = await failureOf(h);
        assert.ok(err.cause instanceof ApplicationFailure && err.cause.type === 'InvalidPipelineSpec', String(err.cause));
        const history = await h.fetchHistory();
        assert.ok(
          patchIds(history).some((p) => p.includes(patch)),
          `no ${patch} marker`,
        );
        write(`${scenario}-refused`, history, false, '');
      };

      // 8b. A spec whose sweeps pass MAX_PIPELINE_SWEEP_TRIALS fails at its start behind SWEEP_TRIALS_PATCH.
      if (want('sweep-trials')) {
        const swept = (id: string, trials: number) => ({
          id,
          run: ['x'],
          with: { x: 0 },
          sweep: { scheduler: 'random', space: { x: { uniform: [0, 1] } }, metric: { name: 'score' }, budget: { trials } },
        });
        await recordRefused(
          'sweep-trials',
          [...Array.from({ length: MAX_PIPELINE_SWEEP_TRIALS / MAX_SWEEP_TRIALS }, (_, i) => swept(`s${i}`, MAX_SWEEP_TRIALS)), swept('last', 1)],
          SWEEP_TRIALS_PATCH,
        );
      }

      // 8c. A spec whose sweeps' trials would carry more than MAX_PIPELINE_SWEEP_PARAMS_BYTES of parameters fails at
      //     its start behind SWEEP_PARAMS_PATCH (256 trials drawing among prompts of 2,000 characters: 515 kB).
      if (want('sweep-params')) {
        const space = { prompt: ['a'.padEnd(2000, '.'), 'b'] };
        await recordRefused(
          'sweep-params',
          [
            {
              id: 'tune',
              run: ['x'],
              with: { prompt: '' },
              sweep: { scheduler: 'random', space, metric: { name: 'score' }, budget: { trials: MAX_SWEEP_TRIALS } },
            },
          ],
          SWEEP_PARAMS_PATCH,
        );
      }

      // 9. ONE_ACTIVITY_PATCH: CPU stages look the cache up inside runStage (no checkCache activity): a hit,
      //    then a miss whose first attempt crashes and whose second succeeds.
      if (want('one-activity')) {
        const h = await start('one-activity', [
          { id: 'prep', run: ['x'], with: { cached: true } },
          { id: 'train', needs: ['prep'], run: ['x'], with: { failAttempts: 1, failType: 'StageCrashed' }, retry: quick },
        ]);
        const r = (await h.result()) as RunResult;
        assert.deepEqual(
          r.stages.map((s) => [s.state, s.attempt, s.cache]),
          [
            ['cached', 0, 'cache hit: outputs of run earlier'],
            ['succeeded', 2, 'cache miss: no earlier run of this stage'],
          ],
        );
        const history = await h.fetchHistory();
        check(history, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED);
        const types = events(history).flatMap((e) => e.activityTaskScheduledEventAttributes?.activityType?.name ?? []);
        assert.deepEqual(types, ['runStage', 'runStage'], 'one activity per stage');
        write('one-activity', history);
      }

      // 10. LOCAL_STAGES_PATCH: `local: true` stages run as local activities (markers, no activity tasks): a cache
      //     hit, then a miss whose first attempt crashes and whose second succeeds; a regular stage after them.
      if (want('local-stages')) {
        const h = await start('local-stages', [
          { id: 'prep', run: ['x'], local: true, with: { cached: true } },
          { id: 'train', needs: ['prep'], run: ['x'], local: true, with: { failAttempts: 1, failType: 'StageCrashed' }, retry: quick },
          { id: 'after', needs: ['train'], run: ['x'] },
        ]);
        const r = (await h.result()) as RunResult;
        assert.deepEqual(
          r.stages.map((s) => [s.state, s.attempt]),
          [
            ['cached', 0],
            ['succeeded', 2],
            ['succeeded', 1],
          ],
        );
        const history = await h.fetchHistory();
        check(history, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED);
        const scheduled = events(history).flatMap((e) => e.activityTaskScheduledEventAttributes?.activityId ?? []);
        assert.deepEqual(scheduled, ['after'], 'only the regular stage is an activity task');
        const markers = events(history).filter((e) => e.markerRecordedEventAttributes?.markerName === 'core_local_activity').length;
        assert.ok(markers >= 2, `${markers} local activity markers`);
        write('local-stages', history);
      }

      // 11. A chain of local stages continues as new after 300 stages ended in one execution (patch
      //     tanren-stage-budget-1): one workflow task, few events, so neither the event count nor the server's
      //     suggestion would have ended it. The first execution is kept.
      if (want('stage-budget')) {
        const n = CONTINUE_AS_NEW_AFTER_STAGES + 5;
        const stages = Array.from({ length: n }, (_, i) => ({ id: `s${i}`, run: ['x'], local: true, ...(i ? { needs: [`s${i - 1}`] } : {}) }));
        const h = await start('stage-budget', stages, { noCache: true });
        const r = (await h.result()) as RunResult;
        assert.ok(r.stages.length === n && r.stages.every((s) => s.state === 'succeeded'));
        const first = await client.workflow.getHandle(h.workflowId, h.firstExecutionRunId, { followRuns: false }).fetchHistory();
        check(first, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW);
        const markers = events(first).filter((e) => e.markerRecordedEventAttributes?.markerName === 'core_local_activity').length;
        assert.equal(markers, CONTINUE_AS_NEW_AFTER_STAGES, 'the first execution ran exactly the stage budget');
        write('stage-budget-first', first);
      }
    });
  } finally {
    await env.teardown();
  }
  // 12. Stage results past the 1.5 MiB payload budget (PAYLOAD_BUDGET_PATCH): on a dev server of its own, without the
  // continue-as-new suggestion above (it would end the first execution long before its results fill the budget).
  if (want('payload-budget')) await recordPayloadBudget();
  console.log(`recorded ${written.length} histories in ${path.relative(ROOT, OUT_DIR)}/:`);
  for (const w of written) console.log(`  ${w.file.padEnd(34)} ${String(w.events).padStart(4)} events  ${String(w.bytes).padStart(7)} bytes  ends ${w.last}`);
}

/**
 * 600 stages of 6 KiB results (as test/workflow/payload-limits.test.ts runs them): the first execution continues as
 * new with results left out, the last completes with its result fitted; both histories take the patched path.
 */
async function recordPayloadBudget() {
  const env = await startDevServer();
  try {
    const taskQueue = unique('record-payloads');
    const worker = await Worker.create({
      connection: env.nativeConnection,
      taskQueue,
      workflowBundle: await workflowBundle(),
      activities: createScriptedActivities().activities,
      maxConcurrentActivityTaskExecutions: 32,
    });
    const n = 2 * CONTINUE_AS_NEW_AFTER_STAGES;
    const stages = Array.from({ length: n }, (_, i) => ({ id: `s${i}`, run: ['x'], with: { resultBytes: 6 * 1024 } }));
    const workflowId = unique('lean-payload-budget');
    await worker.runUntil(async () => {
      const h = await env.client.workflow.start('pipelineWorkflow', {
        taskQueue,
        workflowId,
        args: [{ spec: { name: 'lean-payload-budget', queues: { cpu: taskQueue, gpu: taskQueue }, stages }, options: {} }],
      });
      const r = (await h.result()) as RunResult;
      assert.ok(r.stages.length === n && r.stages.every((s) => s.state === 'succeeded'));
      assert.ok(
        r.stages.some((s) => s.resultOmitted),
        'the final result left results out',
      );
    });
    const reader = await largeMessageClient(env);
    const runs = await executions(reader.client, workflowId).finally(reader.close);
    assert.ok(runs.length >= 2, 'the run continued as new');
    const [first, last] = [runs[0].history, runs.at(-1)!.history];
    check(first, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW);
    check(last, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED);
    for (const [name, h] of [
      ['first', first],
      ['last', last],
    ] as const) {
      assert.ok(
        patchIds(h).some((p) => p.includes(PAYLOAD_BUDGET_PATCH)),
        `the ${name} execution did not take the ${PAYLOAD_BUDGET_PATCH} path`,
      );
    }
    write('payload-budget-first', first, true);
    write('payload-budget-last', last, true);
  } finally {
    await env.teardown();
  }
}

await main();
