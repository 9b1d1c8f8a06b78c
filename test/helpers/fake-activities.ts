/**
 * A scriptable `runStage` for workflow tests: each stage's `with` says how it
 * behaves (fail N attempts, which failure type, block until released).
 */
import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { Worker, type WorkerOptions } from '@temporalio/worker';
import type { StageResult, StageTask } from '../../activities/types.js';
import { workflowBundle } from '../../worker/run-worker.js';
import { unique } from './env.js';

/** What the fake recorded of one attempt. */
export interface AttemptRecord {
  stage: string;
  attempt: number;
  start: number;
  end?: number;
  outcome?: 'ok' | 'failed' | 'cancelled';
}

/** Creates the fake activities and the record of what they did. */
export function createFakeActivities() {
  const attempts: AttemptRecord[] = [];
  const gates = new Map<string, () => void>();
  const waiting = new Map<string, Promise<void>>();
  const gate = (stage: string) => {
    if (!waiting.has(stage)) waiting.set(stage, new Promise<void>((r) => gates.set(stage, r)));
    return waiting.get(stage)!;
  };
  const activities = {
    /** Stages with `with.cached: true` are cache hits; the rest miss. */
    async checkCache(task: StageTask) {
      const w = task.stage.with as { cached?: boolean };
      return w.cached
        ? {
            hit: true as const,
            key: 'k',
            manifestKey: `runs/earlier/${task.stage.id}/manifest.json`,
            fromRun: 'earlier',
            result: { from: 'cache' },
            reason: 'cache hit: outputs of run earlier',
          }
        : { hit: false as const, key: 'k', reason: 'cache miss: no earlier run of this stage' };
    },
    /** With `lookupCache` (CPU stages of current runs) it looks up first as checkCache does; a hit runs nothing. */
    async runStage(task: StageTask): Promise<StageResult> {
      const ctx = Context.current();
      const lookup = task.lookupCache ? await activities.checkCache(task) : undefined;
      if (lookup?.hit) {
        const at = new Date().toISOString();
        const { manifestKey, result, reason, fromRun } = lookup;
        return {
          stage: task.stage.id,
          attempt: 0,
          manifestKey,
          files: 0,
          bytes: 0,
          result,
          metrics: {},
          attempts: [],
          startedAt: at,
          endedAt: at,
          cache: { hit: true, reason, fromRun },
        };
      }
      const w = task.stage.with as {
        failAttempts?: number;
        failType?: string;
        block?: boolean;
        hang?: boolean;
        sleepMs?: number;
        /** Sweep trials: report metric `score` = the value of this param (less a tenth per step past 1, so later rungs score lower). */
        scoreFrom?: string;
        /** Sweep trials: fail for good when param `x` has this value. */
        failWhenX?: unknown;
        x?: unknown;
        max_steps?: number;
        stop_at_step?: number;
        /** Add a string of this many bytes to the result (a stage reporting a large result). */
        resultBytes?: number;
      };
      const rec: AttemptRecord = { stage: task.stage.id, attempt: ctx.info.attempt, start: Date.now() };
      attempts.push(rec);
      try {
        if (w.hang) {
          // Never heartbeats and never returns: only a timeout or cancellation ends it.
          await ctx.cancelled;
        }
        if (w.block) {
          const beat = setInterval(() => ctx.heartbeat({ waiting: true }), 200);
          try {
            await Promise.race([gate(task.stage.id), ctx.cancelled]);
          } finally {
            clearInterval(beat);
          }
        }
        if (w.sleepMs) await ctx.sleep(w.sleepMs);
        if (w.failAttempts && ctx.info.attempt <= w.failAttempts) {
          throw ApplicationFailure.create({
            type: w.failType ?? 'StageCrashed',
            message: `planned failure of attempt ${ctx.info.attempt}`,
            nonRetryable: w.failType === 'InvalidStageInput',
          });
        }
        if (w.failWhenX !== undefined && w.x === w.failWhenX) {
          throw ApplicationFailure.create({ type: 'StageConfigError', message: `planned failure at x=${String(w.x)}`, nonRetryable: true });
        }
        rec.outcome = 'ok';
        const step = w.stop_at_step ?? w.max_steps;
        const metrics: Record<string, number> = w.scoreFrom ? { score: Number((w as Record<string, unknown>)[w.scoreFrom]) - ((step ?? 1) - 1) / 10 } : {};
        return {
          ...(step !== undefined ? { step } : {}),
          stage: task.stage.id,
          attempt: ctx.info.attempt,
          manifestKey: `runs/${task.runId}/${task.stage.id}/manifest.json`,
          files: 0,
          bytes: 0,
          result: { inputs: task.inputs.map((i) => i.stage), ...(w.resultBytes ? { blob: 'r'.repeat(w.resultBytes) } : {}) },
          metrics,
          startedAt: new Date(rec.start).toISOString(),
          endedAt: new Date().toISOString(),
          ...(lookup ? { cache: { hit: false, reason: lookup.reason } } : {}),
        };
      } catch (err) {
        rec.outcome = ctx.cancellationSignal.aborted ? 'cancelled' : 'failed';
        throw err;
      } finally {
        rec.end = Date.now();
      }
    },
    /** Points the swept stage's manifest at the best trial, as the real one does (nothing stored). */
    async publishSweep(task: { runId: string; stage: string; bestTrial: string; choice: Record<string, unknown> }) {
      return { manifestKey: `runs/${task.runId}/${task.stage}/manifest.json`, result: { sweptFrom: task.bestTrial, sweep: task.choice }, files: 0, bytes: 0 };
    },
  };
  return { activities, attempts, release: (stage: string) => (gate(stage), gates.get(stage)!()) };
}

/**
 * A worker of the real workflows and the fake activities on a task queue of its own (`prefix` made unique), on
 * a test server: what a workflow test at scale runs against. `options` adds worker options (throttles).
 */
export async function startFakeWorker(env: TestWorkflowEnvironment, prefix: string, options: Partial<WorkerOptions> = {}) {
  const taskQueue = unique(prefix);
  const fake = createFakeActivities();
  const worker = await Worker.create({
    connection: env.nativeConnection,
    taskQueue,
    workflowBundle: await workflowBundle(),
    activities: fake.activities,
    maxConcurrentActivityTaskExecutions: 32,
    ...options,
  });
  return { taskQueue, fake, worker };
}
