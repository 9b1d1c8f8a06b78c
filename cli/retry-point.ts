/**
 * Where `tanren retry` resets a run: the workflow task that scheduled the
 * first stage to retry. A pure function over a run's history events.
 */
import protos from '@temporalio/proto';

// A CommonJS module: its namespace is only reachable through the default export.
const { temporal } = protos;

type HistoryEvent = protos.temporal.api.history.v1.IHistoryEvent;
const EventType = temporal.api.enums.v1.EventType;

/** The reset point of a retry. */
export interface RetryPoint {
  /** The stage the retry starts from. */
  stage: string;
  /** Id of the WorkflowTaskCompleted event to reset to. */
  workflowTaskFinishEventId: number;
}

/** A problem a person can fix by choosing another stage (exit code 2). */
export class RetryPointError extends Error {
  override name = 'RetryPointError';
}

/** Stage id of a stage activity (`<stage>`) or of its cache look-up (`cache:<stage>`). */
function stageOf(activityId: string | null | undefined): string | undefined {
  if (!activityId) return undefined;
  return activityId.startsWith('cache:') ? activityId.slice('cache:'.length) : activityId;
}

/**
 * Stage id of a local stage's marker (a `local: true` stage runs as a local activity, recorded as a
 * `core_local_activity` marker): its summary, `<stage> · <kind> · local`, set by the workflow.
 */
function localStageOf(e: HistoryEvent): string | undefined {
  if (e.markerRecordedEventAttributes?.markerName !== 'core_local_activity') return undefined;
  const data = e.userMetadata?.summary?.data;
  if (!data) return undefined;
  try {
    const summary = JSON.parse(Buffer.from(data).toString('utf8')) as unknown;
    const m = typeof summary === 'string' ? /^(\S+) · \S+ · local$/.exec(summary) : null;
    return m?.[1];
  } catch {
    return undefined;
  }
}

/**
 * Finds the reset point: with `from`, where that stage was first scheduled;
 * without it, where the first stage that failed, timed out or was cancelled
 * was first scheduled.
 */
export function findRetryPoint(events: readonly HistoryEvent[], from?: string): RetryPoint {
  const firstScheduled = new Map<string, { eventId: number; finish: number }>();
  const byScheduledId = new Map<number, string>();
  const unfinished: Array<{ stage: string; eventId: number }> = [];
  for (const e of events) {
    const id = Number(e.eventId);
    if (e.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED) {
      const stage = stageOf(e.activityTaskScheduledEventAttributes?.activityId);
      if (!stage) continue;
      byScheduledId.set(id, stage);
      if (!firstScheduled.has(stage)) {
        firstScheduled.set(stage, { eventId: id, finish: Number(e.activityTaskScheduledEventAttributes?.workflowTaskCompletedEventId) });
      }
    }
    // A local stage's marker is written when it ends, by the workflow task it ran in: a reset to that task runs it
    // (and any local stage before it in the same task) again. A marker with a failure is a stage that failed.
    const local = localStageOf(e);
    if (local) {
      if (!firstScheduled.has(local)) {
        firstScheduled.set(local, { eventId: id, finish: Number(e.markerRecordedEventAttributes?.workflowTaskCompletedEventId) });
      }
      if (e.markerRecordedEventAttributes?.failure) unfinished.push({ stage: local, eventId: firstScheduled.get(local)!.eventId });
    }
    const scheduled =
      e.activityTaskFailedEventAttributes?.scheduledEventId ??
      e.activityTaskTimedOutEventAttributes?.scheduledEventId ??
      e.activityTaskCanceledEventAttributes?.scheduledEventId;
    if (scheduled !== undefined && scheduled !== null) {
      const stage = byScheduledId.get(Number(scheduled));
      if (stage) unfinished.push({ stage, eventId: firstScheduled.get(stage)!.eventId });
    }
  }
  if (from) {
    const at = firstScheduled.get(from);
    if (!at) {
      const ran = [...firstScheduled.keys()];
      throw new RetryPointError(
        `stage "${from}" was never started in this run's latest execution${ran.length ? ` (started: ${ran.join(', ')})` : ''}; ` +
          'retry from one of those, or without --from to start at the first stage that failed',
      );
    }
    return { stage: from, workflowTaskFinishEventId: at.finish };
  }
  if (!unfinished.length) {
    throw new RetryPointError('no stage of this run failed, timed out or was cancelled: name the stage to start from with --from <stage>');
  }
  unfinished.sort((a, b) => a.eventId - b.eventId);
  const stage = unfinished[0].stage;
  return { stage, workflowTaskFinishEventId: firstScheduled.get(stage)!.finish };
}
