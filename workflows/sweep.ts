/**
 * Running a swept stage inside pipelineWorkflow: every trial-rung is one
 * `runStage` activity under the trial's own storage id (`<stage>.trial-NN`),
 * so its checkpoints live apart from the other trials'; a promoted trial runs
 * again under the same id and the activity resumes it from the newest
 * verified checkpoint there (its rung checkpoint), continuing its step count.
 * Trials of a rung are issued `parallel` at a time (default 1): a GPU queue
 * served by one worker runs one activity at a time anyway, so one GPU is
 * time-sliced between them and never runs two trainers. Workflow code.
 *
 * History: about 6 events per trial-rung, and asha runs at most
 * trials·eta/(eta−1) ≤ 2·trials of them, so a sweep of the maximum 256 trials
 * adds at most ~3,100 events (docs/sweeps.md).
 */
import { ApplicationFailure, isCancellation, patched, workflowInfo } from '@temporalio/workflow';
import type { PublishSweepTask } from '../activities/sweep.js';
import type { StageResult } from '../activities/types.js';
import { FailureTypes } from '../schemas/names.js';
import type { StageSpec, SweepSpec } from '../schemas/pipeline.js';
import { pickBest, planSweep, promote, trialParams, type RungScore, type SweepPlan, type SweepValue } from './sweep-plan.js';

/**
 * History a run may reach (bytes) before its sweeps start no more trial-rungs: Temporal ends a run at 50 MB, and a
 * sweep's trial-rungs all land in one execution (it continues as new only between stages). Trials' results (up to
 * 128 KiB each) and inputs decide how far a sweep gets; the trial-rungs in flight when it is reached still end.
 */
export const SWEEP_HISTORY_BYTES = 32 * 1024 * 1024;
/** Patch marking runs whose sweeps stop at {@link SWEEP_HISTORY_BYTES}; asked only when a history passes it. */
export const SWEEP_HISTORY_PATCH = 'tanren-sweep-history-1';

/** Where a trial stands. */
export type TrialState = 'pending' | 'running' | 'paused-at-rung' | 'promoted' | 'stopped-early' | 'completed' | 'best' | 'failed';

/** One run of a trial up to a rung (one activity). */
export interface TrialRun {
  rung: number;
  startedAt: string;
  endedAt: string;
  attempt: number;
  /** Step it ended at. */
  step?: number;
  /** Checkpoint it resumed from (`step-000004`), when it did. */
  resumedFrom?: string;
}

/** One trial, as `tanren status` and the UI show it. */
export interface TrialStatus {
  trial: string;
  params: Record<string, SweepValue>;
  /** Highest rung started (1-based). */
  rung: number;
  state: TrialState;
  step?: number;
  metric?: number;
  reason?: string;
  runs: TrialRun[];
}

/** A swept stage's trials and choice. */
export interface SweepStatus {
  scheduler: SweepSpec['scheduler'];
  metric: string;
  goal: 'min' | 'max';
  /** Step at which each rung ends (null: the trial's own length). */
  rungs: Array<number | null>;
  trials: TrialStatus[];
  best?: string;
  reason?: string;
}

/** What the sweep needs from the pipeline workflow. */
export interface SweepDeps {
  stage: StageSpec & { sweep: SweepSpec };
  /** Runs one trial-rung (a `runStage` activity with its own activity id). */
  runTrial(trial: StageSpec, activityId: string): Promise<StageResult>;
  /** Writes the swept stage's manifest pointing at the best trial's outputs. */
  publish(task: Omit<PublishSweepTask, 'runId'>): Promise<{ manifestKey: string; result: Record<string, unknown>; files: number; bytes: number }>;
  /** Called after every change of `status`, so the run's status and details show it. */
  changed(status: SweepStatus, note: string): void;
}

/** The initial status of a sweep: every trial pending. */
export function initialSweepStatus(plan: SweepPlan): SweepStatus {
  return {
    scheduler: plan.scheduler,
    metric: plan.metric,
    goal: plan.goal,
    rungs: plan.rungs.map((r) => r ?? null),
    trials: plan.trials.map((t) => ({ trial: t.id, params: t.params, rung: 0, state: 'pending', runs: [] })),
  };
}

/** The metric a trial-rung reported: a metric of that name, else a number of that name in its result. */
function metricOf(res: StageResult, name: string): number | undefined {
  if (typeof res.metrics?.[name] === 'number') return res.metrics[name];
  const r = res.result?.[name];
  return typeof r === 'number' ? r : undefined;
}

/** Runs a sweep to its best trial; returns the swept stage's result. Throws an ApplicationFailure when no trial finished. */
export async function runSweep(deps: SweepDeps, startedAt: string): Promise<StageResult> {
  const { stage } = deps;
  const plan = planSweep(stage.id, stage.sweep);
  const status = initialSweepStatus(plan);
  const manifests = new Map<number, string>();
  const { sweep: _sweep, ...plain } = stage;
  deps.changed(status, `${plan.trials.length} trials`);

  const runOne = async (index: number, rung: number): Promise<void> => {
    const trial = plan.trials[index];
    const t = status.trials[index];
    const last = rung === plan.rungs.length - 1;
    t.state = 'running';
    t.rung = rung + 1;
    deps.changed(status, `rung ${rung + 1}/${plan.rungs.length}: ${trial.id}`);
    const spec: StageSpec = {
      ...plain,
      id: trial.id,
      with: trialParams(plan, stage.with, trial, rung),
      // Promotion is a resume: the trial must pick up its rung checkpoint.
      checkpoint: { ...stage.checkpoint, resume: true },
      cache: false,
    };
    // A trial paused at a rung publishes no final outputs yet.
    if (!last) delete spec.outputs;
    try {
      const res = await deps.runTrial(spec, `${trial.id}@r${rung + 1}`);
      const metric = metricOf(res, plan.metric);
      const resumed = res.result?.resumed_from;
      t.runs.push({
        rung: rung + 1,
        startedAt: res.startedAt,
        endedAt: res.endedAt,
        attempt: res.attempt,
        ...(res.step !== undefined ? { step: res.step } : {}),
        ...(typeof resumed === 'string' ? { resumedFrom: resumed } : {}),
      });
      if (res.step !== undefined) t.step = res.step;
      manifests.set(index, res.manifestKey);
      if (metric === undefined || !Number.isFinite(metric)) {
        t.state = 'failed';
        t.reason = `reported no finite metric "${plan.metric}" (metrics: ${Object.keys(res.metrics ?? {}).join(', ') || 'none'})`;
      } else {
        t.metric = metric;
        t.state = last ? 'completed' : 'paused-at-rung';
      }
    } catch (err) {
      if (isCancellation(err)) throw err;
      // A trial that fails (a diverging lr, say) is a result of the search, not the end of it.
      const cause = (err as { cause?: { type?: string; message?: string } }).cause;
      t.state = 'failed';
      t.reason = `${cause?.type ?? 'StageCrashed'}: ${cause?.message ?? (err as Error).message}`.slice(0, 500);
    }
    deps.changed(status, `rung ${rung + 1}/${plan.rungs.length}: ${trial.id} ${t.state}`);
  };

  /** Why no further trial-rung starts, once the run's history passed SWEEP_HISTORY_BYTES. */
  let historyFull: string | undefined;
  /** The trial chosen when the history filled up, running on to the end: it alone still starts. */
  let finishing = false;
  const mayStart = (): boolean => {
    if (finishing) return true;
    if (historyFull === undefined) {
      const size = workflowInfo().historySize;
      if (size > SWEEP_HISTORY_BYTES && patched(SWEEP_HISTORY_PATCH)) {
        historyFull = `stopped early: the run's history reached ${Math.round(size / 2 ** 20)} MiB (Temporal ends a run at 50 MB)`;
        deps.changed(status, historyFull);
      }
    }
    return historyFull === undefined;
  };

  let alive = plan.trials.map((t) => t.index);
  for (let rung = 0; rung < plan.rungs.length; rung++) {
    const queue = [...alive];
    // `parallel` lanes pull trials in index order: deterministic whatever finishes first.
    await Promise.all(
      Array.from({ length: Math.min(plan.parallel, queue.length) }, async () => {
        while (queue.length && mayStart()) await runOne(queue.shift()!, rung);
      }),
    );
    // Trials the full history kept from this rung: they stop here, scored at the rung before (if any) no more.
    const notRun = new Set(queue);
    for (const i of notRun) {
      const t = status.trials[i];
      t.state = 'stopped-early';
      t.reason = `not run at rung ${rung + 1}: ${historyFull}`;
    }
    const scores: RungScore[] = alive
      .filter((i) => !notRun.has(i))
      .map((i) => ({ index: i, metric: status.trials[i].state === 'failed' ? undefined : status.trials[i].metric }));
    if (historyFull !== undefined && !finishing && rung < plan.rungs.length - 1) {
      // The best of this rung runs on to the end (one trial-rung more), so that the sweep has final outputs.
      const chosen = pickBest(plan, scores);
      if (!chosen) break;
      for (const i of alive) if (i !== chosen.index && status.trials[i].state === 'paused-at-rung') status.trials[i].state = 'stopped-early';
      status.trials[chosen.index].state = 'promoted';
      alive = [chosen.index];
      finishing = true;
      deps.changed(status, `${status.trials[chosen.index].trial} runs on to the end: ${historyFull}`);
      rung = plan.rungs.length - 2;
      continue;
    }
    if (rung === plan.rungs.length - 1) {
      const best = pickBest(plan, scores);
      if (!best) break;
      const t = status.trials[best.index];
      t.state = 'best';
      status.best = t.trial;
      const reason = historyFull === undefined ? best.reason : `${best.reason}; the sweep ${historyFull}`;
      status.reason = reason;
      deps.changed(status, `best: ${t.trial}`);
      const choice = { best_trial: t.trial, params: t.params, metric: plan.metric, value: best.metric, reason };
      const published = await deps.publish({
        stage: stage.id,
        bestTrial: t.trial,
        bestManifestKey: manifests.get(best.index)!,
        choice,
        trials: status.trials.map(({ runs: _runs, ...rest }) => rest),
      });
      return {
        stage: stage.id,
        attempt: 1,
        manifestKey: published.manifestKey,
        files: published.files,
        bytes: published.bytes,
        result: { ...published.result, sweep: choice },
        metrics: { [plan.metric]: best.metric },
        ...(t.step !== undefined ? { step: t.step, total: t.step } : {}),
        startedAt,
        endedAt: new Date().toISOString(),
      };
    }
    const promoted = new Set(promote(scores, plan.eta, plan.goal));
    for (const i of alive) {
      const t = status.trials[i];
      if (promoted.has(i)) t.state = 'promoted';
      else if (t.state === 'paused-at-rung') t.state = 'stopped-early';
    }
    alive = alive.filter((i) => promoted.has(i));
    deps.changed(status, `rung ${rung + 1} done: ${promoted.size} promoted`);
    if (!alive.length) break;
  }
  const first = status.trials.find((t) => t.reason);
  throw ApplicationFailure.create({
    type: FailureTypes.StageCrashed,
    nonRetryable: true,
    message: `stage "${stage.id}": no trial of the sweep finished with a finite ${plan.metric}${first ? `; ${first.trial}: ${first.reason}` : ''}`,
  });
}
