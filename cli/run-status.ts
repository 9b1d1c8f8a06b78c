/**
 * Reading a run's status from Temporal: the workflow's `status` query while a
 * worker can answer it, else what the server knows from describe().
 */
import type { Client } from '@temporalio/client';
import type { RunStatus } from '../workflows/pipeline.js';
import { statusQuery } from '../workflows/pipeline.js';
import { formatDuration } from '../schemas/durations.js';
import { colourState, progressBar, table } from './output.js';

/** A run as seen by the CLI. */
export interface RunView {
  workflowId: string;
  runId: string;
  /** Temporal's status: RUNNING, COMPLETED, FAILED, CANCELLED, TERMINATED, TIMED_OUT, CONTINUED_AS_NEW. */
  temporalStatus: string;
  status?: RunStatus;
}

/** Fetches a run's description and, when possible, its stage table. */
export async function fetchRun(client: Client, workflowId: string): Promise<RunView> {
  const handle = client.workflow.getHandle(workflowId);
  const desc = await handle.describe();
  let status: RunStatus | undefined;
  try {
    status = await handle.query(statusQuery);
  } catch {
    // No worker to answer the query (or an invalid run that never built its table).
  }
  return { workflowId, runId: desc.runId, temporalStatus: desc.status.name, status };
}

function metricText(metrics: Record<string, number>): string {
  const pick = ['loss', 'tokens_per_s', 'reward_accuracy', 'average'];
  const parts: string[] = [];
  for (const k of pick) if (metrics[k] !== undefined) parts.push(`${k}=${Number.isInteger(metrics[k]) ? metrics[k] : metrics[k]!.toPrecision(4)}`);
  return parts.join(' ');
}

/** The stage table of `tanren status` and `tanren watch`. */
export function renderStatus(view: RunView, now = Date.now()): string {
  const s = view.status;
  if (!s) return `${view.workflowId}: ${view.temporalStatus} (no stage table: no worker answered the status query)`;
  const rows = s.stages.map((st) => {
    const started = st.startedAt ? Date.parse(st.startedAt) : undefined;
    const ended = st.endedAt ? Date.parse(st.endedAt) : undefined;
    const duration = started ? formatDuration((ended ?? now) - started) : '';
    let eta = '';
    if (started && !ended && st.step && st.total && st.step < st.total) {
      eta = formatDuration(((now - started) / st.step) * (st.total - st.step));
    }
    return [
      st.id,
      st.kind,
      st.queue,
      colourState(st.state),
      st.attempt ? String(st.attempt) : '',
      progressBar(st.step, st.total) || (st.step !== undefined ? `step ${st.step}` : ''),
      metricText(st.metrics),
      eta,
      duration,
    ];
  });
  const head = `${view.workflowId}  ${colourState(s.state)}  (${s.pipeline}${s.profile ? `, ${s.profile}` : ''})`;
  // A first run's "no earlier run" misses are noise; hits, rejections and changes are news.
  const cacheNote = (st: (typeof s.stages)[number]) => (st.cache && !st.cache.endsWith('no earlier run of this stage') ? st.cache : undefined);
  const reasons = s.stages
    .filter((st) => st.reason || cacheNote(st))
    .map((st) => `  ${st.id}: ${[st.reason, cacheNote(st)].filter(Boolean).join(' · ')}`);
  return [
    head,
    table(['STAGE', 'KIND', 'QUEUE', 'STATE', 'ATTEMPT', 'PROGRESS', 'METRICS', 'ETA', 'DURATION'], rows),
    ...(reasons.length ? ['', ...reasons] : []),
  ].join('\n');
}

/** Temporal UI address of a run. */
export function uiUrl(base: string, namespace: string, workflowId: string, runId?: string): string {
  const ns = encodeURIComponent(namespace);
  const wf = encodeURIComponent(workflowId);
  return runId ? `${base}/namespaces/${ns}/workflows/${wf}/${encodeURIComponent(runId)}/history` : `${base}/namespaces/${ns}/workflows/${wf}`;
}
