/**
 * Reading a run's status from Temporal: the workflow's `status` query while a
 * worker can answer it, else what the server knows from describe().
 */
import { WorkflowFailedError, type Client } from '@temporalio/client';
import { CancelledFailure, defaultPayloadConverter, TerminatedFailure, TimeoutFailure } from '@temporalio/common';
import protos from '@temporalio/proto';
import type { RunStatus, StageStatus } from '../workflows/pipeline.js';
import type { SweepStatus } from '../workflows/sweep.js';
import { statusQuery } from '../workflows/pipeline.js';
import { formatDuration } from '../schemas/durations.js';
import { colourState, progressBar, table } from './output.js';

// A CommonJS module: its namespace is only reachable through the default export.
const { temporal } = protos;

/** A run as seen by the CLI. */
export interface RunView {
  workflowId: string;
  runId: string;
  /** Temporal's status: RUNNING, COMPLETED, FAILED, CANCELLED, TERMINATED, TIMED_OUT, CONTINUED_AS_NEW. */
  temporalStatus: string;
  /** The run's state as the CLI shows it: the execution's when it has closed, else the workflow's own. */
  state: string;
  /** Why a closed run did not succeed: the failure type and message Temporal recorded. */
  failure?: { type?: string; message: string };
  status?: RunStatus;
}

/** What a running attempt's heartbeats say (see StageHeartbeat in activities/stage-runner/types.ts). */
interface LiveBeat {
  step?: number;
  total?: number;
  message?: string;
  phase?: string;
  metrics?: Record<string, number>;
  attempts?: StageStatus['attempts'];
}

const CLOSED_STATES: Record<string, string> = {
  COMPLETED: 'succeeded',
  FAILED: 'failed',
  CANCELLED: 'cancelled',
  TERMINATED: 'terminated',
  TIMED_OUT: 'timed out',
  CONTINUED_AS_NEW: 'continued as new',
};

/** Merges the live state of pending stage activities (heartbeats, attempts, last failure) into the stage table. */
function mergePending(status: RunStatus, pending: ReadonlyArray<protos.temporal.api.workflow.v1.IPendingActivityInfo>): void {
  for (const p of pending) {
    const st = status.stages.find((s) => s.id === p.activityId);
    if (!st) {
      mergeTrial(status, p);
      continue;
    }
    if (TERMINAL.has(st.state)) continue;
    const attempt = p.attempt ?? 1;
    if (attempt > st.attempt) st.attempt = attempt;
    const payload = p.heartbeatDetails?.payloads?.[0];
    let beat: LiveBeat | undefined;
    try {
      beat = payload ? defaultPayloadConverter.fromPayload<LiveBeat>(payload) : undefined;
    } catch {
      beat = undefined;
    }
    // Details of an earlier attempt describe that attempt's progress, not this one's: keep only what carries over.
    const current = beat && (beat as { attempt?: number }).attempt === attempt;
    if (beat && current) {
      if (beat.step !== undefined) st.step = beat.step;
      if (beat.total !== undefined) st.total = beat.total;
      if (beat.message !== undefined) st.message = beat.message;
      if (beat.metrics) Object.assign(st.metrics, beat.metrics);
    }
    if (beat?.attempts?.length) st.attempts = beat.attempts;
    const waiting = p.state === temporal.api.enums.v1.PendingActivityState.PENDING_ACTIVITY_STATE_SCHEDULED;
    if (p.lastFailure && attempt > 1) {
      const type = p.lastFailure.applicationFailureInfo?.type ?? (p.lastFailure.timeoutFailureInfo ? 'WorkerLost' : undefined);
      st.reason = `${type ? `${type}: ` : ''}${p.lastFailure.message ?? ''}`;
      if (waiting) st.state = 'retrying';
    }
  }
}

/** A running sweep trial's live step and metric, from its trial-rung activity (`<stage>.trial-NN@rK`). */
function mergeTrial(status: RunStatus, p: protos.temporal.api.workflow.v1.IPendingActivityInfo): void {
  const m = /^(.+)\.(trial-\d+)@r(\d+)$/.exec(p.activityId ?? '');
  if (!m) return;
  const sw = status.stages.find((s) => s.id === m[1])?.sweep;
  const t = sw?.trials.find((x) => x.trial === `${m[1]}.${m[2]}`);
  if (!sw || !t || t.state !== 'running') return;
  const payload = p.heartbeatDetails?.payloads?.[0];
  let beat: (LiveBeat & { attempt?: number }) | undefined;
  try {
    beat = payload ? defaultPayloadConverter.fromPayload<LiveBeat & { attempt?: number }>(payload) : undefined;
  } catch {
    beat = undefined;
  }
  if (beat && beat.attempt === (p.attempt ?? 1)) {
    if (beat.step !== undefined) t.step = beat.step;
    const metric = beat.metrics?.[sw.metric];
    if (typeof metric === 'number') t.metric = metric;
  }
  if (p.lastFailure && (p.attempt ?? 1) > 1) {
    const type = p.lastFailure.applicationFailureInfo?.type ?? (p.lastFailure.timeoutFailureInfo ? 'WorkerLost' : undefined);
    t.reason = `attempt ${p.attempt}: ${type ? `${type}: ` : ''}${p.lastFailure.message ?? ''}`;
  }
}

const TERMINAL = new Set(['succeeded', 'cached', 'failed', 'skipped', 'cancelled']);

/** Fetches a run's description and, when possible, its stage table with live progress from heartbeats. */
export async function fetchRun(client: Client, workflowId: string): Promise<RunView> {
  const handle = client.workflow.getHandle(workflowId);
  const desc = await handle.describe();
  let status: RunStatus | undefined;
  try {
    status = await handle.query(statusQuery);
  } catch {
    // No worker to answer the query (or an invalid run that never built its table).
  }
  const temporalStatus = desc.status.name;
  const view: RunView = { workflowId, runId: desc.runId, temporalStatus, state: status?.state ?? temporalStatus.toLowerCase(), status };
  if (status) {
    // Large runs answer without empty fields, to keep the reply under Temporal's 2 MB.
    for (const st of status.stages) {
      st.needs ??= [];
      st.metrics ??= {};
      st.attempts ??= [];
    }
    mergePending(status, desc.raw.pendingActivities ?? []);
  }
  if (temporalStatus !== 'RUNNING') {
    view.state = CLOSED_STATES[temporalStatus] ?? temporalStatus.toLowerCase();
    if (temporalStatus !== 'COMPLETED' && temporalStatus !== 'CONTINUED_AS_NEW') view.failure = await closeFailure(client, workflowId, desc.runId);
  }
  return view;
}

/** The failure (type and message) of a closed run that did not complete, from its close event. */
async function closeFailure(client: Client, workflowId: string, runId: string): Promise<RunView['failure']> {
  try {
    await client.workflow.getHandle(workflowId, runId).result();
    return undefined;
  } catch (err) {
    if (err instanceof WorkflowFailedError) {
      const cause = err.cause as { type?: string; message?: string } | undefined;
      if (cause instanceof TerminatedFailure) return { type: 'Terminated', message: cause.message || 'terminated' };
      if (cause instanceof CancelledFailure) return { type: 'Cancelled', message: cause.message || 'cancelled' };
      if (cause instanceof TimeoutFailure) return { type: 'TimedOut', message: cause.message || 'the run timed out' };
      return { type: cause?.type, message: cause?.message ?? err.message };
    }
    return { message: (err as Error).message };
  }
}

function metricText(metrics: Record<string, number>): string {
  const pick = ['loss', 'tokens_per_s', 'reward_accuracy', 'average'];
  const parts: string[] = [];
  for (const k of pick) if (metrics[k] !== undefined) parts.push(`${k}=${Number.isInteger(metrics[k]) ? metrics[k] : metrics[k].toPrecision(4)}`);
  return parts.join(' ');
}

/** A stage's progress cell: a succeeded stage shows its final step as done, a cached one says so. */
function progressText(st: StageStatus): string {
  if (st.state === 'cached') return 'cached';
  if (st.state === 'succeeded') {
    if (st.total) return progressBar(st.total, st.total);
    return st.step !== undefined ? `step ${st.step}` : 'done';
  }
  return progressBar(st.step, st.total) || (st.step !== undefined ? `step ${st.step}` : '');
}

/** The stage table of `tanren status` and `tanren watch`. */
export function renderStatus(view: RunView, now = Date.now()): string {
  const s = view.status;
  const failure = view.failure ? `\n  ${view.failure.type ? `${view.failure.type}: ` : ''}${view.failure.message}` : '';
  if (!s || !s.stages.length) {
    const why = s ? '' : ' (no stage table: no worker answered the status query)';
    return `${view.workflowId}  ${colourState(view.state)}${why}${failure}`;
  }
  const rows = s.stages.map((st) => {
    const started = st.startedAt ? Date.parse(st.startedAt) : undefined;
    const ended = st.endedAt ? Date.parse(st.endedAt) : undefined;
    const duration = started ? formatDuration((ended ?? now) - started) : '';
    let eta = '';
    if (started && !ended && st.step && st.total && st.step < st.total) {
      eta = formatDuration(((now - started) / st.step) * (st.total - st.step));
    }
    return [st.id, st.kind, st.queue, colourState(st.state), st.attempt ? String(st.attempt) : '', progressText(st), metricText(st.metrics), eta, duration];
  });
  const head = `${view.workflowId}  ${colourState(view.state)}  (${s.pipeline}${s.profile ? `, ${s.profile}` : ''})${failure}`;
  // A first run's "no earlier run" misses are noise; hits, rejections and changes are news.
  const cacheNote = (st: (typeof s.stages)[number]) => (st.cache && !st.cache.endsWith('no earlier run of this stage') ? st.cache : undefined);
  const reasons = s.stages.filter((st) => st.reason || cacheNote(st)).map((st) => `  ${st.id}: ${[st.reason, cacheNote(st)].filter(Boolean).join(' · ')}`);
  return [
    head,
    table(['STAGE', 'KIND', 'QUEUE', 'STATE', 'ATTEMPT', 'PROGRESS', 'METRICS', 'ETA', 'DURATION'], rows),
    ...(reasons.length ? ['', ...reasons] : []),
    ...s.stages.flatMap((st) => (st.sweep ? ['', ...renderSweep(st.id, st.sweep)] : [])),
  ].join('\n');
}

/** A number as a table shows it: integers as they are, others to 4 significant digits. */
function num(v: unknown): string {
  return typeof v === 'number' ? (Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(4)))) : String(v);
}

/** A swept stage's trials as a group: params, rung, step, metric and state of each. */
export function renderSweep(stageId: string, sw: SweepStatus): string[] {
  const rungs = sw.rungs.map((r) => (r === null ? 'end' : String(r))).join(', ');
  const head = `  ${stageId} sweep: ${sw.scheduler}, ${sw.trials.length} trials, metric ${sw.metric} (${sw.goal}), rungs end at step ${rungs}`;
  const names = Object.keys(sw.trials[0]?.params ?? {});
  const rows = sw.trials.map((t) => [
    t.trial.slice(stageId.length + 1),
    ...names.map((n) => num(t.params[n])),
    t.rung ? String(t.rung) : '',
    t.step !== undefined ? String(t.step) : '',
    t.metric !== undefined ? num(t.metric) : '',
    colourState(t.state),
    t.reason ?? (t.runs.at(-1)?.resumedFrom ? `resumed from ${t.runs.at(-1)!.resumedFrom}` : ''),
  ]);
  const best = sw.best ? [`  best: ${sw.best.slice(stageId.length + 1)} — ${sw.reason ?? ''}`] : [];
  return [head, table(['TRIAL', ...names.map((n) => n.toUpperCase()), 'RUNG', 'STEP', sw.metric.toUpperCase(), 'STATE', 'NOTE'], rows), ...best];
}

/** Temporal UI address of a run. */
export function uiUrl(base: string, namespace: string, workflowId: string, runId?: string): string {
  const ns = encodeURIComponent(namespace);
  const wf = encodeURIComponent(workflowId);
  return runId ? `${base}/namespaces/${ns}/workflows/${wf}/${encodeURIComponent(runId)}/history` : `${base}/namespaces/${ns}/workflows/${wf}`;
}
