/**
 * pipelineWorkflow: the DAG interpreter. Validates its input (a tctl user
 * sends raw JSON), then starts every stage whose needs succeeded as an
 * activity on the stage's task queue, independent stages concurrently, until
 * every stage has finished, failed or been skipped.
 */
import {
  ActivityCancellationType,
  type ActivityOptions,
  ApplicationFailure,
  CancellationScope,
  condition,
  makeContinueAsNewFunc,
  defineQuery,
  defineSignal,
  isCancellation,
  log,
  patched,
  proxyActivities,
  proxyLocalActivities,
  setCurrentDetails,
  setHandler,
  TimeoutFailure,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type * as activities from '../activities/index.js';
import type { StageProgress, StageResult, StageTask } from '../activities/types.js';
import { parseDuration } from '../schemas/durations.js';
import { FailureTypes, NON_RETRYABLE_FAILURE_TYPES, SEARCH_ATTRIBUTES, DEFAULT_CPU_TASK_QUEUE, gpuHostQueue } from '../schemas/names.js';
import { PipelineRunInputSchema, type PipelineRunInput, type PipelineSpec, type RunOptions, type StageSpec } from '../schemas/pipeline.js';
import { isStageKind, STAGE_KINDS, stageKindInfo } from '../schemas/stage-kinds.js';
import {
  formatProblems,
  isSweepParamsProblem,
  isSweepTrialsProblem,
  MAX_LISTED_PROBLEMS,
  resolveSpec,
  SPEC_SIZE_PROBLEM_PATH,
  stageQueue,
  validatePipelineSpec,
} from '../schemas/validate.js';
import { jsonBytes } from '../schemas/payload-size.js';
import { fitInputs, fitResults, packStage, PAYLOAD_BUDGET_BYTES, unpackStage } from './carry.js';
import { renderDetails } from './details.js';
import { planStages, TERMINAL_STATES, type StageState } from './planner.js';
import { runSweep, type SweepStatus } from './sweep.js';
import { fitTimeline } from './timeline.js';
import { rankScores } from './sweep-plan.js';

type Activities = ReturnType<typeof activities.createActivities>;

/** Status of one stage, as the `status` query returns it. */
export interface StageStatus {
  id: string;
  kind: string;
  queue: 'cpu' | 'gpu';
  needs: string[];
  state: StageState;
  attempt: number;
  step?: number;
  total?: number;
  message?: string;
  metrics: Record<string, number>;
  result?: Record<string, unknown>;
  /**
   * The result is left out of the run's state and result, which travel as one payload each (Temporal: 2 MB):
   * the stage's manifest (`manifestKey`) has it. Set only on large runs (workflows/carry.ts `fitResults`).
   */
  resultOmitted?: true;
  manifestKey?: string;
  /** A report stage's outputs prefix (its attempt's own), for the link to its page; other stages leave it out. */
  outputsPrefix?: string;
  startedAt?: string;
  endedAt?: string;
  /** Why the stage failed, was skipped or is retrying. */
  reason?: string;
  /** What the cache said: `cache hit: outputs of run …`, `cache miss: params changed: lr`, `cache: off`. */
  cache?: string;
  /** For a cached stage: the run whose outputs it reused. */
  cachedFrom?: string;
  failureType?: string;
  attempts: Array<{ attempt: number; startedAt: string; endedAt?: string; failure?: string }>;
  /** A swept stage's trials (params, rung, metric, state) and the trial it chose. */
  sweep?: SweepStatus;
}

/** What the `status` query returns. */
export interface RunStatus {
  pipeline: string;
  profile?: string;
  state: 'running' | 'paused' | 'succeeded' | 'failed' | 'cancelled';
  stages: StageStatus[];
  startedAt: string;
  endedAt?: string;
  /** How many times this run has continued as new to keep its history bounded. */
  continuedAsNew?: number;
}

/** Result of a finished run (large runs return each stage's outcome only, to stay far below the payload limit). */
export interface RunResult {
  pipeline: string;
  state: 'succeeded';
  stages: Array<Pick<StageStatus, 'id' | 'state' | 'attempt' | 'manifestKey' | 'result'> & Partial<StageStatus>>;
}

/** What one stage's state is across continue-as-new: its status less what the spec already says (see workflows/carry.ts). */
export type CarriedStage = Omit<StageStatus, 'id' | 'kind' | 'queue' | 'needs' | 'metrics' | 'attempts'> & Partial<Pick<StageStatus, 'metrics' | 'attempts'>>;

/** Run state handed to the next execution when a run continues as new. */
export interface CarriedState {
  /** One entry per stage, in spec order. */
  stages: CarriedStage[];
  paused: boolean;
  startedAt: string;
  continuedAsNew: number;
}

/** Patch marking runs whose progress lives in heartbeats, not signals (replays of older runs take the old path). */
export const LEAN_PROGRESS_PATCH = 'tanren-lean-progress-1';
/**
 * Patch marking runs whose CPU stages check the cache inside `runStage` (one activity and one workflow task
 * per stage instead of two) and that record nothing in the cache with `--no-cache`; older histories replay
 * the separate `checkCache` activity.
 */
export const ONE_ACTIVITY_PATCH = 'tanren-one-activity-per-stage-1';

/**
 * Patch marking runs that run `local: true` stages as local activities (a spec with `local` did not validate
 * before, so only new runs take this path; the patch keeps that explicit in the history).
 */
export const LOCAL_STAGES_PATCH = 'tanren-local-stages-1';

/**
 * A run continues as new once its history passes this many events (or the
 * server suggests it), after the stages in flight finish: with at most
 * {@link MAX_STAGES_IN_FLIGHT} stages at ~9 events each still to land, no
 * execution's history gets near 10,000 events (Temporal's hard limit is 51,200),
 * and a worker that must replay one execution (after a restart, or to answer a
 * query on a closed run) does so well within a workflow task's timeout.
 */
export const CONTINUE_AS_NEW_AFTER_EVENTS = 2500;
/** Same, by history size in bytes (Temporal's hard limit is 50 MB). */
export const CONTINUE_AS_NEW_AFTER_BYTES = 8 * 1024 * 1024;
/**
 * Same, by stages ended in this execution. Replaying an execution costs about the same per stage whatever its
 * events (the workflow re-plans and re-renders its status for each), and `local: true` stages add only two events
 * each: a 2,000-stage chain of them put 1,350 stages into one execution, whose replay took 25–35 s on two cores,
 * past the first execution's 10 s workflow task timeout. A regular chain reaches the event bound at ~360 stages.
 */
export const CONTINUE_AS_NEW_AFTER_STAGES = 300;
/** Patch marking runs that also continue as new after {@link CONTINUE_AS_NEW_AFTER_STAGES} stages. */
export const STAGE_BUDGET_PATCH = 'tanren-stage-budget-1';
/**
 * Patch marking runs that leave stage results out of the input they continue as new with and of their result
 * once either would pass {@link PAYLOAD_BUDGET_BYTES} (Temporal refuses a payload over 2 MB: the run's workflow
 * task failed for ever). Asked only when over the budget, so runs within it record no marker.
 */
export const PAYLOAD_BUDGET_PATCH = 'tanren-payload-budget-1';
/** Patch marking runs that refuse a spec over `MAX_SPEC_BYTES` (schemas/validate.ts) at their start. */
export const SPEC_SIZE_PATCH = 'tanren-spec-size-1';
/** Marks runs that enforce the limit of trials across a pipeline's sweeps (schemas/pipeline.ts MAX_PIPELINE_SWEEP_TRIALS). */
export const SWEEP_TRIALS_PATCH = 'tanren-sweep-trials-1';
/** Marks runs that enforce the limit of trial parameters across a pipeline's sweeps (schemas/pipeline.ts MAX_PIPELINE_SWEEP_PARAMS_BYTES). */
export const SWEEP_PARAMS_PATCH = 'tanren-sweep-params-1';
/** A cache hit streams every cached object through sha256 (about 5 s per GiB): room for large outputs. */
const CACHE_LOOKUP_TIMEOUT = '1h';
/** Most stages one execution runs at once. */
export const MAX_STAGES_IN_FLIGHT = 200;
/** What the cache column says of every stage of a `--no-cache` run. */
const NO_CACHE_NOTE = 'cache: off for this run (--no-cache)';

/** The status of a large run without the fields that are empty or implied (the CLI fills them in). */
function compactStatus(status: RunStatus): RunStatus {
  return {
    ...status,
    stages: status.stages.map((s) => {
      const { needs, metrics, attempts, ...rest } = s;
      return {
        ...rest,
        ...(needs.length ? { needs } : {}),
        ...(Object.keys(metrics).length ? { metrics } : {}),
        ...(attempts.length > 1 || attempts[0]?.failure ? { attempts } : {}),
      } as StageStatus;
    }),
  };
}

/** Above this many stages the run's result lists each stage's outcome only. */
const COMPACT_RESULT_OVER = 200;

/** Query: the live status of every stage. */
export const statusQuery = defineQuery<RunStatus>('status');
/** Signal: start no new stage until `resume`. Running stages go on. */
export const pauseSignal = defineSignal('pause');
/** Signal: undo `pause`. */
export const resumeSignal = defineSignal('resume');
/** Signal sent by stage activities: attempt started, progress, attempt failed. */
export const stageProgressSignal = defineSignal<[StageProgress]>('stageProgress');

const DEFAULT_TIMEOUT_MS = 2 * 3_600_000;
const DEFAULT_HEARTBEAT_MS = 2 * 60_000;

function ms(text: string | undefined, fallback: number): number {
  return (text !== undefined ? parseDuration(text) : undefined) ?? fallback;
}

function kindOf(stage: StageSpec): string {
  return stage.uses ?? 'run';
}

/** Validates the workflow input, failing the run (not the task) on bad input. */
function validateInput(input: unknown): { spec: PipelineSpec; source: string; options: RunOptions } {
  const envelope = PipelineRunInputSchema.safeParse(input);
  if (!envelope.success) {
    throw ApplicationFailure.nonRetryable(
      `workflow input: expected {"spec": {...}, "options": {...}} as written by \`tanren render\`: ${envelope.error.issues
        .map((i) => `${i.path.join('.') || '(top level)'}: ${i.message}`)
        .join('; ')}`,
      FailureTypes.InvalidPipelineSpec,
    );
  }
  const source = envelope.data.options.specFile ?? 'workflow input';
  let checked = validatePipelineSpec(envelope.data.spec);
  // Runs started before a limit replay without it: each patch is asked only of a spec over its limit.
  if (!checked.ok) {
    const problems = checked.problems;
    const relaxed = {
      ...(problems.some((p) => p.path === SPEC_SIZE_PROBLEM_PATH) && !patched(SPEC_SIZE_PATCH) ? { maxSpecBytes: Number.POSITIVE_INFINITY } : {}),
      ...(problems.some(isSweepTrialsProblem) && !patched(SWEEP_TRIALS_PATCH) ? { maxSweepTrials: Number.POSITIVE_INFINITY } : {}),
      ...(problems.some(isSweepParamsProblem) && !patched(SWEEP_PARAMS_PATCH) ? { maxSweepParamsBytes: Number.POSITIVE_INFINITY } : {}),
    };
    if (Object.keys(relaxed).length) checked = validatePipelineSpec(envelope.data.spec, relaxed);
  }
  if (!checked.ok) {
    throw ApplicationFailure.nonRetryable(
      `invalid pipeline spec (${checked.problems.length} problem${checked.problems.length > 1 ? 's' : ''}):\n${formatProblems(checked.problems, source)}`,
      FailureTypes.InvalidPipelineSpec,
      checked.problems.slice(0, MAX_LISTED_PROBLEMS),
    );
  }
  const spec = resolveSpec(checked.spec);
  const gpuStages = spec.stages.filter((s) => stageQueue(s) === 'gpu');
  if (gpuStages.length && !spec.queues?.gpu) {
    throw ApplicationFailure.nonRetryable(
      `${source}: queues.gpu: stage "${gpuStages[0].id}" runs on the gpu queue but queues.gpu is not set; ` +
        "`tanren render` fills it in with the GPU host's queue (tanren-gpu-<host>)",
      FailureTypes.InvalidPipelineSpec,
    );
  }
  return { spec, source, options: envelope.data.options };
}

function compactResult(stages: StageStatus[]): RunResult['stages'] {
  if (stages.length <= COMPACT_RESULT_OVER) return stages;
  return stages.map((s) => ({
    id: s.id,
    state: s.state,
    attempt: s.attempt,
    manifestKey: s.manifestKey,
    result: s.result,
    ...(s.resultOmitted ? { resultOmitted: s.resultOmitted } : {}),
  }));
}

/** Reads the carried state of a continued run, or undefined when there is none or it does not fit the spec. */
function readCarried(carried: unknown, stageCount: number): CarriedState | undefined {
  if (!carried || typeof carried !== 'object') return undefined;
  const c = carried as Partial<CarriedState>;
  if (!Array.isArray(c.stages) || c.stages.length !== stageCount) {
    throw ApplicationFailure.nonRetryable(
      `workflow input: carried: state of ${Array.isArray(c.stages) ? c.stages.length : 'no'} stages for a spec of ${stageCount}; ` +
        '`carried` is written by the workflow when it continues as new, never by hand',
      FailureTypes.InvalidPipelineSpec,
    );
  }
  return { stages: c.stages, paused: Boolean(c.paused), startedAt: String(c.startedAt ?? ''), continuedAsNew: Number(c.continuedAsNew ?? 0) };
}

/** Runs a pipeline spec as a DAG of stage activities. */
export async function pipelineWorkflow(input: PipelineRunInput): Promise<RunResult> {
  const info = workflowInfo();
  const startedAt = new Date().toISOString();
  const status: RunStatus = { pipeline: '(invalid)', state: 'running', stages: [], startedAt };
  // A reply must fit in 2 MB: large runs leave out empty fields (the CLI fills them in again).
  setHandler(statusQuery, () => {
    const reply = status.stages.length > COMPACT_RESULT_OVER ? compactStatus(status) : status;
    // A reply is one payload too; a query records nothing, so no patch.
    return { ...reply, stages: fitResults(reply.stages, (stages) => ({ ...reply, stages })).stages };
  });
  // Runs started by this code keep live progress in activity heartbeats; older histories replay the signal path.
  const lean = patched(LEAN_PROGRESS_PATCH);
  const oneActivity = lean && patched(ONE_ACTIVITY_PATCH);

  let validated: ReturnType<typeof validateInput>;
  try {
    validated = validateInput(input);
  } catch (err) {
    if (err instanceof ApplicationFailure) throw err;
    // A bare error would fail the workflow task over and over; bad input must end the run instead.
    throw ApplicationFailure.nonRetryable(
      `workflow input could not be validated: ${String((err as Error)?.message ?? err).slice(0, 500)}`,
      FailureTypes.InvalidPipelineSpec,
    );
  }
  const { spec, options } = validated;
  const carried = lean ? readCarried(input.carried, spec.stages.length) : undefined;
  status.pipeline = spec.name;
  if (spec.profile) status.profile = spec.profile;
  if (carried) {
    if (carried.startedAt) status.startedAt = carried.startedAt;
    status.continuedAsNew = carried.continuedAsNew;
  }
  const byId = new Map(spec.stages.map((s) => [s.id, s]));
  const carryContext = { runId: info.workflowId, defaultCache: options.noCache ? NO_CACHE_NOTE : undefined };
  spec.stages.forEach((stage, i) => {
    const base = { id: stage.id, kind: kindOf(stage), queue: stageQueue(stage), needs: stage.needs };
    const before = carried?.stages[i];
    // No stage is in flight when a run continues as new: the run drains first.
    status.stages.push(before ? unpackStage(before, base, carryContext) : { ...base, state: 'pending', attempt: 0, metrics: {}, attempts: [] });
  });
  const stageStatus = (id: string) => status.stages.find((s) => s.id === id)!;

  let paused = carried?.paused ?? false;
  let changes = 0;
  const touch = () => {
    changes++;
  };
  setHandler(pauseSignal, () => {
    paused = true;
    touch();
  });
  setHandler(resumeSignal, () => {
    paused = false;
    touch();
  });
  setHandler(stageProgressSignal, (p) => {
    // Progress lives in heartbeats now: a signal (late, or re-applied by a reset) must not change what runs.
    if (lean) return;
    const s = status.stages.find((x) => x.id === p.stage);
    if (!s || TERMINAL_STATES.has(s.state) || p.attempt < s.attempt) return;
    s.attempt = p.attempt;
    if (p.kind === 'started') {
      s.state = 'running';
      if (!s.attempts.some((a) => a.attempt === p.attempt)) s.attempts.push({ attempt: p.attempt, startedAt: p.at });
    } else if (p.kind === 'attempt-failed') {
      s.state = 'retrying';
      s.reason = p.failure ? `${p.failure.type}: ${p.failure.message}` : 'attempt failed';
      s.failureType = p.failure?.type;
      const a = s.attempts.find((x) => x.attempt === p.attempt);
      if (a) {
        a.endedAt = p.at;
        a.failure = s.reason;
      }
    }
    if (p.step !== undefined) s.step = p.step;
    if (p.total !== undefined) s.total = p.total;
    if (p.message !== undefined) s.message = p.message;
    if (p.metrics) Object.assign(s.metrics, p.metrics);
    touch();
  });

  let published = '';
  const publish = () => {
    const running = status.stages.filter((s) => s.state === 'running' || s.state === 'retrying').map((s) => s.id);
    const attrs = {
      [SEARCH_ATTRIBUTES.pipeline]: [spec.name],
      [SEARCH_ATTRIBUTES.stage]: [running.join(',').slice(0, 1000) || '-'],
      [SEARCH_ATTRIBUTES.status]: [status.state],
    };
    // Each upsert is a history event: only when something changed.
    const text = JSON.stringify(attrs);
    if (!lean || text !== published) {
      published = text;
      upsertSearchAttributes(attrs);
    }
    // Once a report stage has run, point at its page in the bucket (`tanren get <run> <stage> report.html .` fetches it).
    const report = status.stages.find((x) => stageKindInfo(x.kind)?.writesRunReport && x.state === 'succeeded' && x.manifestKey);
    // Results of older workers have no outputsPrefix: their outputs sat beside the manifest.
    const reportPrefix = report && (report.outputsPrefix ?? report.manifestKey!.replace(/manifest\.json$/, 'outputs/'));
    setCurrentDetails(renderDetails(status, reportPrefix ? { reportKey: `${reportPrefix}report.html` } : {}));
  };
  publish();

  const defaults = spec.defaults ?? {};
  const queueName = (q: 'cpu' | 'gpu') => (q === 'gpu' ? spec.queues!.gpu! : (spec.queues?.cpu ?? DEFAULT_CPU_TASK_QUEUE));
  const results = new Map<string, Pick<StageResult, 'manifestKey' | 'manifest'>>();
  for (const s of status.stages) if (s.manifestKey && (s.state === 'succeeded' || s.state === 'cached')) results.set(s.id, { manifestKey: s.manifestKey });
  const cacheOn = (stage: StageSpec) => !options.noCache && (stage.cache ?? defaults.cache ?? true);
  const ioOptions: ActivityOptions = {
    taskQueue: spec.queues?.cpu ?? DEFAULT_CPU_TASK_QUEUE,
    startToCloseTimeout: '2m',
    retry: { maximumAttempts: 5, initialInterval: '1s', nonRetryableErrorTypes: [...NON_RETRYABLE_FAILURE_TYPES] },
  };
  const io = proxyActivities<Activities>(ioOptions);
  let failure: unknown;

  /** Every stage that has ended so far, for the report stage's timeline (within its budget: workflows/timeline.ts). */
  const timeline = () => {
    const { rows, omitted } = fitTimeline(
      status.stages
        .filter((s) => s.startedAt && s.endedAt)
        .map((s) => ({
          stage: s.id,
          start: s.startedAt!,
          end: s.endedAt!,
          attempts: s.attempt,
          state: s.state,
          ...(s.cachedFrom ? { cachedFrom: s.cachedFrom } : {}),
        })),
    );
    return { timeline: rows, ...(omitted ? { timeline_omitted: omitted } : {}) };
  };

  /** The `sweeps` param of a report stage: only when the run has swept stages, so other runs' reports get the input they always did. */
  const sweepsParam = (stage: StageSpec) => {
    const swept = status.stages.filter((x) => x.sweep);
    if (!swept.length || stage.with.sweeps !== undefined) return {};
    return {
      sweeps: swept.map((x) => ({
        stage: x.id,
        scheduler: x.sweep!.scheduler,
        metric: x.sweep!.metric,
        goal: x.sweep!.goal,
        ...(x.sweep!.best ? { best: x.sweep!.best } : {}),
        ...(x.sweep!.reason ? { reason: x.sweep!.reason } : {}),
        trials: x.sweep!.trials.map(({ runs: _runs, reason: _reason, ...t }) => t),
      })),
    };
  };

  /** Stages that ended in this execution (for {@link CONTINUE_AS_NEW_AFTER_STAGES}). */
  let endedHere = 0;
  const runStage = async (stage: StageSpec): Promise<void> => {
    const s = stageStatus(stage.id);
    const queue = stageQueue(stage);
    const retry = { ...defaults.retry, ...stage.retry };
    const retryPolicy = () => ({
      // 0 means unlimited in the spec, as in Temporal; the SDK wants it left unset for that.
      maximumAttempts: retry.maximumAttempts === 0 ? undefined : (retry.maximumAttempts ?? 3),
      initialInterval: ms(retry.initialInterval, 1000),
      backoffCoefficient: retry.backoffCoefficient ?? 2,
      // Temporal's own default: 100 times the initial interval.
      maximumInterval: ms(retry.maximumInterval, 100 * ms(retry.initialInterval, 1000)),
      nonRetryableErrorTypes: [...NON_RETRYABLE_FAILURE_TYPES],
    });
    // One proxy per activity id: the stage's own, or each trial-rung's of a sweep.
    const activitiesFor = (activityId: string) =>
      proxyActivities<Activities>({
        activityId,
        // A stage pinned to a host skips the pool: that host's own queue.
        taskQueue: queue === 'gpu' && stage.host ? gpuHostQueue(stage.host) : queueName(queue),
        summary: `${activityId} · ${kindOf(stage)} · ${queue}`,
        startToCloseTimeout: ms(stage.timeout ?? defaults.timeout, DEFAULT_TIMEOUT_MS),
        heartbeatTimeout: ms(stage.heartbeatTimeout ?? defaults.heartbeatTimeout, DEFAULT_HEARTBEAT_MS),
        cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        retry: retryPolicy(),
      });
    // A local stage runs in this workflow's worker: no dispatch, and the workflow goes on in the same workflow task.
    const local = !stage.sweep && stage.local === true && queue === 'cpu' && patched(LOCAL_STAGES_PATCH);
    const act = local
      ? proxyLocalActivities<Activities>({
          startToCloseTimeout: ms(stage.timeout ?? defaults.timeout, DEFAULT_TIMEOUT_MS),
          cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
          summary: `${stage.id} · ${kindOf(stage)} · local`,
          retry: retryPolicy(),
        })
      : activitiesFor(stage.id);
    const inputIds = stage.inputs ?? stage.needs;
    const stall = stage.stallTimeout ?? defaults.stallTimeout ?? (stage.uses && isStageKind(stage.uses) ? STAGE_KINDS[stage.uses].stallTimeout : undefined);
    const task: StageTask = {
      runId: info.workflowId,
      pipeline: spec.name,
      stage:
        stageKindInfo(stage.uses)?.receivesTimeline && stage.with.timeline === undefined
          ? { ...stage, with: { ...stage.with, ...timeline(), ...sweepsParam(stage) } }
          : stage,
      queue,
      inputs: fitInputs(
        inputIds.map((id) => {
          const { manifestKey, manifest } = results.get(id)!;
          // Only into a local stage's task, which no history event records: a scheduled activity's input is one.
          return { stage: id, manifestKey, ...(local && manifest ? { manifest } : {}) };
        }),
        info.workflowId,
      ),
      ...(lean && stall !== undefined ? { stallTimeoutMs: parseDuration(stall) } : {}),
    };
    s.startedAt = new Date().toISOString();
    // Leave `pending` before the first await, or the planner would start this stage twice.
    s.state = 'running';
    // A CPU stage's cache look-up happens in its runStage activity; a GPU stage's stays on the CPU queue,
    // so that a hit does not wait for a GPU.
    const lookupInStage = oneActivity && !stage.sweep && cacheOn(stage) && queue === 'cpu';
    /** A verified cache hit, from either look-up: the stage ran nothing and points at the cached outputs. */
    const markCached = (manifestKey: string, result: Record<string, unknown> | undefined, fromRun: string | undefined) => {
      results.set(stage.id, { manifestKey });
      s.state = 'cached';
      s.result = result;
      s.manifestKey = manifestKey;
      s.cachedFrom = fromRun;
    };
    try {
      if (stage.sweep) {
        // A cache key knows the stage's `with:`, not its sweep: a swept stage always searches.
        s.cache = 'cache: off for a swept stage';
      } else if (lookupInStage) {
        // Said by runStage's result.
      } else if (cacheOn(stage)) {
        const lookup = await (
          lean ? proxyActivities<Activities>({ ...ioOptions, activityId: `cache:${stage.id}`, startToCloseTimeout: CACHE_LOOKUP_TIMEOUT }) : io
        ).checkCache(task);
        s.cache = lookup.reason;
        if (lookup.hit) return markCached(lookup.manifestKey, lookup.result, lookup.fromRun);
      } else {
        s.cache = options.noCache ? NO_CACHE_NOTE : 'cache: off for this stage';
      }
      s.state = 'running';
      if (s.attempt === 0) s.attempt = 1;
      touch();
      const sweep = stage.sweep;
      const result = sweep
        ? await runSweep(
            {
              stage: { ...stage, sweep },
              runTrial: (trial, activityId) => activitiesFor(activityId).runStage({ ...task, stage: trial, cache: false }),
              publish: (t) => proxyActivities<Activities>({ ...ioOptions, activityId: `publish:${stage.id}` }).publishSweep({ ...t, runId: info.workflowId }),
              changed: (sw, note) => {
                s.sweep = sw;
                s.message = note;
                const done = sw.trials.filter((t) => t.metric !== undefined);
                const best = done.length
                  ? rankScores(
                      done.map((t, i) => ({ index: i, metric: t.metric })),
                      sw.goal,
                    )[0]
                  : undefined;
                if (best) s.metrics[sw.metric] = done[best.index].metric!;
                touch();
              },
            },
            s.startedAt,
          )
        : await act.runStage(
            oneActivity
              ? { ...task, cache: cacheOn(stage), ...(lookupInStage ? { lookupCache: true } : {}) }
              : { ...task, cache: stage.cache ?? defaults.cache ?? true },
          );
      if (result.cache) s.cache = result.cache.reason;
      if (result.cache?.hit) {
        // Nothing ran: as a hit of the checkCache activity leaves it.
        s.attempt = 0;
        return markCached(result.manifestKey, result.result, result.cache.fromRun);
      }
      results.set(stage.id, result);
      s.state = 'succeeded';
      s.attempt = result.attempt;
      s.result = result.result;
      s.manifestKey = result.manifestKey;
      if (stageKindInfo(s.kind)?.writesRunReport && result.outputsPrefix) s.outputsPrefix = result.outputsPrefix;
      Object.assign(s.metrics, result.metrics);
      // The final progress, not the last tick anyone happened to see.
      if (result.step !== undefined) s.step = result.step;
      if (result.total !== undefined) s.total = result.total;
      s.reason = undefined;
      if (lean && result.attempts?.length) {
        s.attempts = result.attempts;
      } else {
        const a = s.attempts.find((x) => x.attempt === result.attempt);
        if (a) a.endedAt = result.endedAt;
      }
    } catch (err) {
      if (isCancellation(err)) {
        s.state = 'cancelled';
      } else {
        s.state = 'failed';
        // An activity's failure is its cause; a sweep that found no trial fails with its own ApplicationFailure.
        const cause = (err as { cause?: unknown }).cause ?? (err instanceof ApplicationFailure ? err : undefined);
        if (cause instanceof TimeoutFailure) {
          // A heartbeat timeout means the worker (or its host) went away mid-stage.
          s.failureType = cause.timeoutType === 'HEARTBEAT' ? FailureTypes.WorkerLost : 'StageTimedOut';
          s.reason = `${s.failureType}: ${cause.message}`;
        } else {
          const app = cause instanceof ApplicationFailure ? cause : undefined;
          s.failureType = app?.type ?? FailureTypes.StageCrashed;
          s.reason = `${s.failureType}: ${app?.message ?? (cause instanceof Error ? cause.message : (err as Error).message)}`;
          const said = app?.details?.[0] as { attempt?: unknown; attempts?: unknown; cache?: unknown } | undefined;
          if (oneActivity && typeof said?.cache === 'string') s.cache = said.cache;
          if (lean && typeof said?.attempt === 'number' && said.attempt > s.attempt) s.attempt = said.attempt;
          if (lean && Array.isArray(said?.attempts)) s.attempts = said.attempts as StageStatus['attempts'];
        }
        log.warn('stage failed', { stage: stage.id, reason: s.reason });
      }
      failure ??= err;
    } finally {
      s.endedAt = new Date().toISOString();
      endedHere++;
      touch();
    }
  };

  /** True once this execution's history is long enough that the run should continue as new. */
  const historyFull = () => {
    if (!lean) return false;
    const now = workflowInfo();
    if (now.continueAsNewSuggested || now.historyLength > CONTINUE_AS_NEW_AFTER_EVENTS || now.historySize > CONTINUE_AS_NEW_AFTER_BYTES) return true;
    // Histories of earlier workers have no marker: for them patched() is false and they replay unchanged.
    return endedHere >= CONTINUE_AS_NEW_AFTER_STAGES && patched(STAGE_BUDGET_PATCH);
  };

  const running = new Map<string, Promise<void>>();
  try {
    for (;;) {
      const plan = planStages(spec.stages, Object.fromEntries(status.stages.map((s) => [s.id, s.state])));
      for (const { id, because } of plan.skip) {
        const s = stageStatus(id);
        s.state = 'skipped';
        s.reason = `needs "${because}", which did not succeed`;
        if (lean) s.startedAt = s.endedAt = new Date().toISOString();
      }
      if (plan.finished) break;
      const draining = historyFull();
      if (draining && running.size === 0) {
        status.continuedAsNew = (status.continuedAsNew ?? 0) + 1;
        const next: CarriedState = {
          stages: status.stages.map((st) => packStage(st, carryContext)),
          paused,
          startedAt: status.startedAt,
          continuedAsNew: status.continuedAsNew,
        };
        const nextInput = (stages: readonly CarriedStage[]) => ({ spec: input.spec, options: input.options ?? {}, carried: { ...next, stages: [...stages] } });
        if (jsonBytes(nextInput(next.stages)) > PAYLOAD_BUDGET_BYTES && patched(PAYLOAD_BUDGET_PATCH)) {
          const fit = fitResults(next.stages, nextInput);
          next.stages = fit.stages;
          log.warn('stage results left out of the state handed on (each stage manifest has its own)', { omitted: fit.omitted, textsCut: fit.textsCut });
        }
        log.info('continuing as new to keep the history bounded', { historyLength: workflowInfo().historyLength, continuedAsNew: next.continuedAsNew });
        // A longer task timeout than the 10 s default: replaying a full execution of a large run takes seconds.
        await makeContinueAsNewFunc<typeof pipelineWorkflow>({ workflowTaskTimeout: '60s' })(nextInput(next.stages));
      }
      if (!paused && !draining) {
        for (const id of plan.ready) {
          if (lean && running.size >= MAX_STAGES_IN_FLIGHT) break;
          running.set(
            id,
            runStage(byId.get(id)!).finally(() => running.delete(id)),
          );
        }
      }
      status.state = paused ? 'paused' : 'running';
      publish();
      const seen = changes;
      await condition(() => changes !== seen);
    }
  } catch (err) {
    if (isCancellation(err)) {
      // Wait for the running stages to report their cancellation before closing the run.
      await CancellationScope.nonCancellable(() => Promise.allSettled([...running.values()]));
      for (const s of status.stages) if (!TERMINAL_STATES.has(s.state)) s.state = 'cancelled';
      status.state = 'cancelled';
      status.endedAt = new Date().toISOString();
      publish();
    }
    throw err;
  }

  status.endedAt = new Date().toISOString();
  const failed = status.stages.filter((s) => s.state === 'failed');
  const cancelled = status.stages.filter((s) => s.state === 'cancelled');
  if (failed.length || cancelled.length) {
    status.state = failed.length ? 'failed' : 'cancelled';
    publish();
    const first = failed[0] ?? cancelled[0];
    const outcome = status.stages.map((s) => ({ id: s.id, state: s.state, reason: s.reason }));
    throw ApplicationFailure.create({
      message: `stage "${first.id}" ${first.state}: ${first.reason ?? 'cancelled'}`,
      type: first.failureType ?? FailureTypes.StageCrashed,
      nonRetryable: true,
      // Bounded: a payload over 2 MB would fail the workflow task instead of the run.
      details: [{ stages: lean ? outcome.slice(0, COMPACT_RESULT_OVER) : outcome }],
      cause: failure instanceof Error ? failure : undefined,
    });
  }
  status.state = 'succeeded';
  publish();
  const done: RunResult = { pipeline: spec.name, state: 'succeeded', stages: lean ? compactResult(status.stages) : status.stages };
  if (lean && jsonBytes(done) > PAYLOAD_BUDGET_BYTES && patched(PAYLOAD_BUDGET_PATCH)) {
    const fit = fitResults(done.stages, (stages) => ({ ...done, stages }));
    log.warn("stage results left out of the run's result (each stage manifest has its own)", { omitted: fit.omitted, textsCut: fit.textsCut });
    return { ...done, stages: fit.stages };
  }
  return done;
}
