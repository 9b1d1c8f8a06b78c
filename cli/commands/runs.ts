/**
 * `tanren runs`: lists runs through a Temporal visibility query on the tanren
 * search attributes (TanrenPipeline, TanrenStatus, TanrenStage) and, for closed
 * runs, ExecutionStatus. Visibility is eventually consistent: a run started a
 * moment ago may show up a moment later.
 */
import type { Command } from 'commander';
import type { WorkflowExecutionInfo } from '@temporalio/client';
import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';
import { z } from 'zod';
import { formatDuration } from '../../schemas/durations.js';
import { PIPELINE_WORKFLOW_TYPE, SEARCH_ATTRIBUTES } from '../../schemas/names.js';
import { action, client, env, parseOptions } from '../common.js';
import { colourState, table } from '../output.js';

const RUN_STATES = ['running', 'succeeded', 'failed', 'cancelled', 'paused'] as const;
type RunState = (typeof RUN_STATES)[number];

const Options = z.object({
  pipeline: z
    .string()
    .regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, 'a pipeline name: letters, digits, ".", "-" and "_"')
    .optional(),
  status: z.enum(RUN_STATES).optional(),
  limit: z.coerce.number().int().min(1).max(10_000).default(20),
  json: z.boolean().default(false),
});

const PIPELINE = defineSearchAttributeKey(SEARCH_ATTRIBUTES.pipeline, SearchAttributeType.KEYWORD);
const STATUS = defineSearchAttributeKey(SEARCH_ATTRIBUTES.status, SearchAttributeType.KEYWORD);
const STAGE = defineSearchAttributeKey(SEARCH_ATTRIBUTES.stage, SearchAttributeType.KEYWORD);

/**
 * The visibility query of `tanren runs`. TanrenStatus says running or paused
 * while the run is open; a closed run's state comes from ExecutionStatus, as a
 * terminated run never got to publish its last TanrenStatus.
 */
export function runsQuery(opts: { pipeline?: string; status?: RunState }): string {
  const parts = [`WorkflowType = '${PIPELINE_WORKFLOW_TYPE}'`];
  if (opts.pipeline) parts.push(`${SEARCH_ATTRIBUTES.pipeline} = '${opts.pipeline}'`);
  switch (opts.status) {
    case 'running':
    case 'paused':
      parts.push(`ExecutionStatus = 'Running'`, `${SEARCH_ATTRIBUTES.status} = '${opts.status}'`);
      break;
    case 'succeeded':
      parts.push(`ExecutionStatus = 'Completed'`);
      break;
    case 'failed':
      parts.push(`ExecutionStatus IN ('Failed', 'TimedOut')`);
      break;
    case 'cancelled':
      parts.push(`ExecutionStatus IN ('Canceled', 'Terminated')`);
      break;
    default:
  }
  return parts.join(' AND ');
}

/** One run in the list. */
export interface RunRow {
  workflowId: string;
  runId: string;
  pipeline: string;
  status: string;
  /** Temporal's status name: RUNNING, COMPLETED, FAILED, … */
  temporalStatus: string;
  /** Stages running at the last update, comma-separated ('' when none). */
  stage: string;
  startTime: string;
  closeTime?: string;
  durationMs: number;
}

/** The tanren state of a listed execution. */
export function runState(temporalStatus: string, tanrenStatus: string | undefined): string {
  switch (temporalStatus) {
    case 'RUNNING':
      return tanrenStatus === 'paused' ? 'paused' : 'running';
    case 'COMPLETED':
      return 'succeeded';
    case 'FAILED':
    case 'TIMED_OUT':
      return 'failed';
    case 'CANCELLED':
    case 'TERMINATED':
      return 'cancelled';
    default:
      return temporalStatus.toLowerCase();
  }
}

function toRow(x: WorkflowExecutionInfo, now: number): RunRow {
  const sa = x.typedSearchAttributes;
  const stage = sa.get(STAGE);
  return {
    workflowId: x.workflowId,
    runId: x.runId,
    pipeline: sa.get(PIPELINE) ?? '',
    status: runState(x.status.name, sa.get(STATUS)),
    temporalStatus: x.status.name,
    stage: x.status.name === 'RUNNING' && stage && stage !== '-' ? stage : '',
    startTime: x.startTime.toISOString(),
    ...(x.closeTime ? { closeTime: x.closeTime.toISOString() } : {}),
    durationMs: (x.closeTime?.getTime() ?? now) - x.startTime.getTime(),
  };
}

function localTime(iso: string): string {
  const d = new Date(iso);
  const p = (n: number) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** Registers `runs`. */
export function configureRunsCommand(program: Command): void {
  program
    .command('runs')
    .description('list runs, newest first')
    .option('--pipeline <name>', 'only runs of this pipeline')
    .option('--status <state>', `only runs in this state (${RUN_STATES.join('|')})`)
    .option('--limit <n>', 'at most this many runs', '20')
    .option('--json', 'print the runs as a JSON array')
    .action(
      action(async (raw: unknown) => {
        const opts = parseOptions(Options, raw);
        const e = env();
        const c = await client(e);
        const query = runsQuery(opts);
        const now = Date.now();
        const rows: RunRow[] = [];
        for await (const x of c.workflow.list({ query, pageSize: Math.min(opts.limit, 1000) })) {
          rows.push(toRow(x, now));
          if (rows.length >= opts.limit) break;
        }
        // The server's order (newest first) is not guaranteed by every visibility store.
        rows.sort((a, b) => b.startTime.localeCompare(a.startTime));
        if (opts.json) {
          process.stdout.write(`${JSON.stringify(rows, null, 2)}\n`);
          return;
        }
        if (!rows.length) {
          process.stdout.write(`no runs${opts.pipeline ? ` of pipeline "${opts.pipeline}"` : ''}${opts.status ? ` that are ${opts.status}` : ''}\n`);
          return;
        }
        process.stdout.write(
          `${table(
            ['RUN', 'PIPELINE', 'STATUS', 'STAGE', 'STARTED', 'DURATION'],
            rows.map((r) => [r.workflowId, r.pipeline, colourState(r.status), r.stage, localTime(r.startTime), formatDuration(r.durationMs)]),
          )}\n`,
        );
      }),
    );
}
