/**
 * pipelineWorkflow: the DAG interpreter. Validates its input (a tctl user
 * sends raw JSON), then starts every stage whose needs succeeded as an
 * activity on the stage's task queue, independent stages concurrently, until
 * every stage has finished, failed or been skipped.
 */
import {
  ActivityCancellationType,
  ApplicationFailure,
  CancellationScope,
  condition,
  defineQuery,
  defineSignal,
  isCancellation,
  log,
  proxyActivities,
  setCurrentDetails,
  setHandler,
  TimeoutFailure,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type * as activities from '../activities/index.js';
import type { StageProgress, StageResult, StageTask } from '../activities/types.js';
import { parseDuration } from '../schemas/durations.js';
import {
  FailureTypes,
  NON_RETRYABLE_FAILURE_TYPES,
  SEARCH_ATTRIBUTES,
  DEFAULT_CPU_TASK_QUEUE,
} from '../schemas/names.js';
import { PipelineRunInputSchema, type PipelineRunInput, type PipelineSpec, type RunOptions, type StageSpec } from '../schemas/pipeline.js';
import { formatProblems, resolveSpec, stageQueue, validatePipelineSpec } from '../schemas/validate.js';
import { planStages, TERMINAL_STATES, type StageState } from './planner.js';

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
  manifestKey?: string;
  startedAt?: string;
  endedAt?: string;
  /** Why the stage failed, was skipped or is retrying. */
  reason?: string;
  /** What the cache said: `cache hit: outputs of run …`, `cache miss: params changed: lr`, `cache: off`. */
  cache?: string;
  failureType?: string;
  attempts: Array<{ attempt: number; startedAt: string; endedAt?: string; failure?: string }>;
}

/** What the `status` query returns. */
export interface RunStatus {
  pipeline: string;
  profile?: string;
  state: 'running' | 'paused' | 'succeeded' | 'failed' | 'cancelled';
  stages: StageStatus[];
  startedAt: string;
  endedAt?: string;
}

/** Result of a finished run. */
export interface RunResult {
  pipeline: string;
  state: 'succeeded';
  stages: StageStatus[];
}

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
  const checked = validatePipelineSpec(envelope.data.spec);
  if (!checked.ok) {
    throw ApplicationFailure.nonRetryable(
      `invalid pipeline spec (${checked.problems.length} problem${checked.problems.length > 1 ? 's' : ''}):\n${formatProblems(checked.problems, source)}`,
      FailureTypes.InvalidPipelineSpec,
      checked.problems,
    );
  }
  const spec = resolveSpec(checked.spec);
  const gpuStages = spec.stages.filter((s) => stageQueue(s) === 'gpu');
  if (gpuStages.length && !spec.queues?.gpu) {
    throw ApplicationFailure.nonRetryable(
      `${source}: queues.gpu: stage "${gpuStages[0]!.id}" runs on the gpu queue but queues.gpu is not set; ` +
        '`tanren render` fills it in with the GPU host\'s queue (tanren-gpu-<host>)',
      FailureTypes.InvalidPipelineSpec,
    );
  }
  return { spec, source, options: envelope.data.options };
}

function renderDetails(status: RunStatus): string {
  const lines = [`**${status.pipeline}** — ${status.state}`, '', '| stage | state | attempt | progress | last metrics |', '|---|---|---|---|---|'];
  for (const s of status.stages) {
    const progress = s.step !== undefined ? `${s.step}${s.total ? `/${s.total}` : ''}` : '';
    const metrics = Object.entries(s.metrics)
      .slice(0, 3)
      .map(([k, v]) => `${k}=${Number.isInteger(v) ? v : v.toPrecision(4)}`)
      .join(' ');
    lines.push(`| ${s.id} | ${s.state}${s.reason ? ` (${s.reason.slice(0, 80)})` : ''} | ${s.attempt || ''} | ${progress} | ${metrics} |`);
  }
  return lines.join('\n');
}

/** Runs a pipeline spec as a DAG of stage activities. */
export async function pipelineWorkflow(input: PipelineRunInput): Promise<RunResult> {
  const info = workflowInfo();
  const startedAt = new Date().toISOString();
  const status: RunStatus = { pipeline: '(invalid)', state: 'running', stages: [], startedAt };
  setHandler(statusQuery, () => status);

  const { spec, options } = validateInput(input);
  status.pipeline = spec.name;
  if (spec.profile) status.profile = spec.profile;
  const byId = new Map(spec.stages.map((s) => [s.id, s]));
  for (const stage of spec.stages) {
    status.stages.push({
      id: stage.id,
      kind: kindOf(stage),
      queue: stageQueue(stage),
      needs: stage.needs,
      state: 'pending',
      attempt: 0,
      metrics: {},
      attempts: [],
    });
  }
  const stageStatus = (id: string) => status.stages.find((s) => s.id === id)!;

  let paused = false;
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

  const publish = () => {
    const running = status.stages.filter((s) => s.state === 'running' || s.state === 'retrying').map((s) => s.id);
    upsertSearchAttributes({
      [SEARCH_ATTRIBUTES.pipeline]: [spec.name],
      [SEARCH_ATTRIBUTES.stage]: [running.join(',') || '-'],
      [SEARCH_ATTRIBUTES.status]: [status.state],
    });
    setCurrentDetails(renderDetails(status));
  };
  publish();

  const defaults = spec.defaults ?? {};
  const queueName = (q: 'cpu' | 'gpu') => (q === 'gpu' ? spec.queues!.gpu! : (spec.queues?.cpu ?? DEFAULT_CPU_TASK_QUEUE));
  const results = new Map<string, StageResult>();
  const cacheOn = (stage: StageSpec) => !options.noCache && (stage.cache ?? defaults.cache ?? true);
  const io = proxyActivities<Activities>({
    taskQueue: spec.queues?.cpu ?? DEFAULT_CPU_TASK_QUEUE,
    startToCloseTimeout: '2m',
    retry: { maximumAttempts: 5, initialInterval: '1s', nonRetryableErrorTypes: [...NON_RETRYABLE_FAILURE_TYPES] },
  });
  let failure: unknown;

  /** The stages that have run so far, for the report stage's timeline. */
  const timeline = () =>
    status.stages
      .filter((s) => s.startedAt && s.endedAt)
      .map((s) => ({ stage: s.id, start: s.startedAt!, end: s.endedAt!, attempts: s.attempt, state: s.state }));

  const runStage = async (stage: StageSpec): Promise<void> => {
    const s = stageStatus(stage.id);
    const queue = stageQueue(stage);
    const retry = { ...defaults.retry, ...stage.retry };
    const act = proxyActivities<Activities>({
      activityId: stage.id,
      taskQueue: queueName(queue),
      summary: `${stage.id} · ${kindOf(stage)} · ${queue}`,
      startToCloseTimeout: ms(stage.timeout ?? defaults.timeout, DEFAULT_TIMEOUT_MS),
      heartbeatTimeout: ms(stage.heartbeatTimeout ?? defaults.heartbeatTimeout, DEFAULT_HEARTBEAT_MS),
      cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
      retry: {
        maximumAttempts: retry.maximumAttempts ?? 3,
        initialInterval: ms(retry.initialInterval, 1000),
        backoffCoefficient: retry.backoffCoefficient ?? 2,
        // Temporal's own default: 100 times the initial interval.
        maximumInterval: ms(retry.maximumInterval, 100 * ms(retry.initialInterval, 1000)),
        nonRetryableErrorTypes: [...NON_RETRYABLE_FAILURE_TYPES],
      },
    });
    const inputIds = stage.inputs ?? stage.needs;
    const task: StageTask = {
      runId: info.workflowId,
      pipeline: spec.name,
      stage: stage.uses === 'report' && stage.with.timeline === undefined ? { ...stage, with: { ...stage.with, timeline: timeline() } } : stage,
      queue,
      inputs: inputIds.map((id) => ({ stage: id, manifestKey: results.get(id)!.manifestKey })),
    };
    s.startedAt = new Date().toISOString();
    // Leave `pending` before the first await, or the planner would start this stage twice.
    s.state = 'running';
    try {
      if (cacheOn(stage)) {
        const lookup = await io.checkCache(task);
        s.cache = lookup.reason;
        if (lookup.hit) {
          results.set(stage.id, {
            stage: stage.id,
            attempt: 0,
            manifestKey: lookup.manifestKey,
            files: 0,
            bytes: 0,
            result: lookup.result,
            metrics: {},
            startedAt: s.startedAt,
            endedAt: new Date().toISOString(),
          });
          s.state = 'cached';
          s.result = lookup.result;
          s.manifestKey = lookup.manifestKey;
          return;
        }
      } else {
        s.cache = options.noCache ? 'cache: off for this run (--no-cache)' : 'cache: off for this stage';
      }
      s.state = 'running';
      if (s.attempt === 0) s.attempt = 1;
      touch();
      const result = await act.runStage({ ...task, cache: stage.cache ?? defaults.cache ?? true });
      results.set(stage.id, result);
      s.state = 'succeeded';
      s.attempt = result.attempt;
      s.result = result.result;
      s.manifestKey = result.manifestKey;
      Object.assign(s.metrics, result.metrics);
      s.reason = undefined;
      const a = s.attempts.find((x) => x.attempt === result.attempt);
      if (a) a.endedAt = result.endedAt;
    } catch (err) {
      if (isCancellation(err)) {
        s.state = 'cancelled';
      } else {
        s.state = 'failed';
        const cause = (err as { cause?: unknown }).cause;
        if (cause instanceof TimeoutFailure) {
          // A heartbeat timeout means the worker (or its host) went away mid-stage.
          s.failureType = cause.timeoutType === 'HEARTBEAT' ? FailureTypes.WorkerLost : 'StageTimedOut';
          s.reason = `${s.failureType}: ${cause.message}`;
        } else {
          const app = cause as { type?: string; message?: string } | undefined;
          s.failureType = app?.type ?? FailureTypes.StageCrashed;
          s.reason = `${s.failureType}: ${app?.message ?? (err as Error).message}`;
        }
        log.warn('stage failed', { stage: stage.id, reason: s.reason });
      }
      failure ??= err;
    } finally {
      s.endedAt = new Date().toISOString();
      touch();
    }
  };

  const running = new Map<string, Promise<void>>();
  try {
    for (;;) {
      const plan = planStages(
        spec.stages,
        Object.fromEntries(status.stages.map((s) => [s.id, s.state])),
      );
      for (const { id, because } of plan.skip) {
        const s = stageStatus(id);
        s.state = 'skipped';
        s.reason = `needs "${because}", which did not succeed`;
      }
      if (plan.finished) break;
      if (!paused) {
        for (const id of plan.ready) {
          running.set(id, runStage(byId.get(id)!).finally(() => running.delete(id)));
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
    const first = failed[0] ?? cancelled[0]!;
    throw ApplicationFailure.create({
      message: `stage "${first.id}" ${first.state}: ${first.reason ?? 'cancelled'}`,
      type: first.failureType ?? FailureTypes.StageCrashed,
      nonRetryable: true,
      details: [{ stages: status.stages.map((s) => ({ id: s.id, state: s.state, reason: s.reason })) }],
      cause: failure instanceof Error ? failure : undefined,
    });
  }
  status.state = 'succeeded';
  publish();
  return { pipeline: spec.name, state: 'succeeded', stages: status.stages };
}
