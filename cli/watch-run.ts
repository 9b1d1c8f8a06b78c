/**
 * Follows a run until it ends: a live table on a terminal, one line per
 * stage change otherwise. Ctrl-C stops watching, never the run.
 */
import type { Client } from '@temporalio/client';
import type { TanrenEnv } from '../worker/config.js';
import { colour, colourState, ExitCodes } from './output.js';
import { fetchRun, renderStatus, type RunView } from './run-status.js';

function formatValue(v: unknown): string {
  if (typeof v === 'number') return Number.isInteger(v) ? String(v) : v.toPrecision(4);
  if (typeof v === 'string') return v;
  return JSON.stringify(v);
}

/** One line per stage with the figures its program reported (`result` events). */
export function formatResults(view: RunView): string {
  const lines: string[] = [];
  for (const st of view.status?.stages ?? []) {
    const values = Object.entries(st.result ?? {}).filter(([, v]) => v !== null && typeof v !== 'object');
    if (values.length) lines.push(`  ${st.id.padEnd(16)} ${values.map(([k, v]) => `${k}=${formatValue(v)}`).join('  ')}`);
    // A large run leaves results out of its state (one payload, 2 MB at most): the manifest keeps each.
    else if (st.resultOmitted)
      lines.push(`  ${st.id.padEnd(16)} ${colour.dim(`result left out of the run's state: tanren artifacts ${view.workflowId} ${st.id} --json`)}`);
    if (st.result?.judge === 'not configured') {
      lines.push(`  ${''.padEnd(16)} ${colour.yellow('MT-Bench judge: not configured — answers were generated, no score was given')}`);
    }
  }
  return lines.join('\n');
}

/** Exit code for a finished run's Temporal status. */
export function exitCodeFor(temporalStatus: string): number {
  if (temporalStatus === 'COMPLETED') return ExitCodes.ok;
  if (temporalStatus === 'CANCELLED' || temporalStatus === 'TERMINATED') return ExitCodes.cancelled;
  return ExitCodes.failed;
}

/** Watches `workflowId` until it closes; returns the CLI exit code. */
export async function watchRun(client: Client, e: TanrenEnv, workflowId: string, opts: { intervalMs?: number; live?: boolean } = {}): Promise<number> {
  const live = opts.live ?? Boolean(process.stdout.isTTY);
  const interval = opts.intervalMs ?? 1000;
  const seen = new Map<string, string>();
  let stop = false;
  const onSigint = () => {
    stop = true;
    process.stderr.write(`\nstopped watching; the run goes on (tanren status ${workflowId})\n`);
  };
  process.once('SIGINT', onSigint);
  let view: RunView | undefined;
  try {
    while (!stop) {
      view = await fetchRun(client, workflowId);
      if (live) {
        process.stdout.write(`\u001b[H\u001b[2J${renderStatus(view)}\n`);
      } else if (view.status) {
        for (const st of view.status.stages) {
          const key = `${st.state}#${st.attempt}`;
          if (seen.get(st.id) !== key) {
            seen.set(st.id, key);
            const extra = st.state === 'retrying' || st.state === 'failed' || st.state === 'skipped' ? ` — ${st.reason ?? ''}` : '';
            process.stdout.write(
              `${new Date().toISOString()}  ${st.id.padEnd(20)} ${colourState(st.state)}${st.attempt > 1 ? ` (attempt ${st.attempt})` : ''}${extra}\n`,
            );
          }
        }
      }
      if (view.temporalStatus !== 'RUNNING') break;
      await new Promise((r) => setTimeout(r, interval));
    }
  } finally {
    process.removeListener('SIGINT', onSigint);
  }
  if (stop || !view) return ExitCodes.ok;
  if (!live) process.stdout.write(`\n${renderStatus(view)}\n`);
  const results = formatResults(view);
  if (results) process.stdout.write(`\nresults:\n${results}\n`);
  process.stdout.write(`\nrun ${workflowId}: ${colourState(view.temporalStatus.toLowerCase())}\n`);
  process.stdout.write(`artifacts: s3://${e.TANREN_BUCKET}/runs/${workflowId}/ (${e.TANREN_S3_ENDPOINT})\n`);
  return exitCodeFor(view.temporalStatus);
}
