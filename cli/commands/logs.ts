/**
 * `tanren logs <run> <stage>`: prints a stage attempt's log from object
 * storage (`runs/<run>/<stage>/logs/attempt-<n>.log`), by default the newest
 * attempt. `--follow` keeps printing what the worker uploads while the attempt
 * runs, and stops when it ends or the run closes; Ctrl-C stops following only.
 */
import type { Client } from '@temporalio/client';
import type { Command } from 'commander';
import { z } from 'zod';
import { isNotFound } from '../../activities/storage/errors.js';
import { keys } from '../../activities/storage/keys.js';
import { TERMINAL_STATES } from '../../workflows/planner.js';
import { statusQuery, type StageStatus } from '../../workflows/pipeline.js';
import { action, CliError, client, env, parseOptions } from '../common.js';
import { colourState, ExitCodes } from '../output.js';
import { cliStore, logAttempts, manifestFinder, requireStage, runStages, type CliStore } from '../storage.js';

const Options = z.object({
  attempt: z.coerce.number().int().min(1).optional(),
  follow: z.boolean().default(false),
  interval: z.coerce.number().int().min(50).max(60_000).default(1000),
});

async function readFrom(store: CliStore, key: string, offset: number): Promise<Buffer> {
  try {
    return await store.getBytes(key, offset);
  } catch (err) {
    if (isNotFound(err)) return Buffer.alloc(0);
    throw err;
  }
}

/** Whether attempt `n` of a stage has ended, by the workflow's status. */
export function attemptEnded(st: StageStatus, n: number): boolean {
  if (st.attempt > n) return true;
  if (TERMINAL_STATES.has(st.state)) return true;
  if (st.state === 'retrying' && st.attempt === n) return true;
  return Boolean(st.attempts.find((a) => a.attempt === n)?.endedAt);
}

function notStarted(run: string, stage: string): CliError {
  return new CliError(`stage "${stage}" of run ${run} has no log yet (not started); \`tanren logs --follow\` waits for it`, ExitCodes.notFound);
}

/** Prints an attempt's whole log. */
async function printLog(store: CliStore, run: string, stage: string, attempt: number): Promise<void> {
  const bytes = await readFrom(store, keys.log(run, stage, attempt), 0);
  process.stdout.write(bytes);
}

/** Follows a stage attempt of a running run; returns the exit code. */
async function follow(c: Client, store: CliStore, run: string, stage: string, opts: { attempt?: number; interval: number; newest?: number }): Promise<number> {
  const handle = c.workflow.getHandle(run);
  let target = opts.attempt ?? opts.newest;
  let offset = 0;
  let stop = false;
  let wake: (() => void) | undefined;
  const onSigint = () => {
    stop = true;
    wake?.();
    process.stderr.write(`\nstopped following; the stage goes on (tanren logs ${run} ${stage})\n`);
  };
  process.once('SIGINT', onSigint);
  let queryWorks = true;
  try {
    while (!stop) {
      // Ended is decided before the read: the worker uploads the last of the log before the workflow hears the attempt ended.
      const desc = await handle.describe();
      const closed = desc.status.name !== 'RUNNING';
      let st: StageStatus | undefined;
      if (queryWorks) {
        try {
          st = (await handle.query(statusQuery)).stages.find((s) => s.id === stage);
        } catch {
          queryWorks = false;
          process.stderr.write(`warning: no worker answers the status query of ${run}; following until the run closes\n`);
        }
      }
      if (st && (target === undefined || (opts.attempt === undefined && st.attempt > target && offset === 0))) {
        // Nothing printed yet: follow the attempt the workflow is on.
        if (st.attempt > 0) target = st.attempt;
      }
      if (st && target === undefined && TERMINAL_STATES.has(st.state)) {
        process.stderr.write(`stage ${stage} ${colourState(st.state)} without running${st.reason ? `: ${st.reason}` : st.cache ? `: ${st.cache}` : ''}\n`);
        return ExitCodes.ok;
      }
      const ended = closed || (st !== undefined && target !== undefined && attemptEnded(st, target));
      if (target !== undefined) {
        const bytes = await readFrom(store, keys.log(run, stage, target), offset);
        if (bytes.length) {
          process.stdout.write(bytes);
          offset += bytes.length;
        }
      }
      if (ended) {
        if (target === undefined) {
          // The run closed before the stage started; print the newest log there is, if any.
          const attempts = await logAttempts(store, run, stage);
          if (attempts.length) await printLog(store, run, stage, attempts.at(-1)!);
        }
        let how: string;
        if (!st) how = `run ${desc.status.name.toLowerCase()}`;
        else if (st.attempt === target) how = st.state === 'retrying' ? 'failed' : st.state;
        else how = st.attempts.find((a) => a.attempt === target)?.failure ? 'failed' : 'ended';
        process.stderr.write(`-- ${stage}${target ? ` attempt ${target}` : ''}: ${colourState(how)}\n`);
        return ExitCodes.ok;
      }
      await new Promise<void>((r) => {
        wake = r;
        setTimeout(r, opts.interval);
      });
    }
    return ExitCodes.ok;
  } finally {
    process.removeListener('SIGINT', onSigint);
  }
}

/** Registers `logs`. */
export function configureLogsCommand(program: Command): void {
  program
    .command('logs')
    .description("print a stage's log (the newest attempt unless --attempt)")
    .argument('<run>', 'workflow id of the run')
    .argument('<stage>', 'stage id')
    .option('--attempt <n>', 'this attempt instead of the newest')
    .option('-f, --follow', 'while the run is running, print new lines until the attempt ends')
    .option('--interval <ms>', 'how often --follow polls, in ms', '1000')
    .action(
      action(async (run: string, stage: string, raw: unknown) => {
        const opts = parseOptions(Options, raw);
        const e = env();
        const store = cliStore(e);
        const attempts = await logAttempts(store, run, stage);
        if (opts.follow) {
          const c = await client(e);
          const known = await runStages(e, store, run, c);
          requireStage(known, stage);
          if (known.temporalStatus === 'RUNNING') {
            return follow(c, store, run, stage, { attempt: opts.attempt, interval: opts.interval, newest: attempts.at(-1) });
          }
        }
        if (!attempts.length) {
          requireStage(await runStages(e, store, run), stage);
          // A cache hit never ran here: the log is the producing run's.
          const found = await manifestFinder(e, store, run)(stage);
          const from = found?.cachedFrom;
          const theirs = from ? await logAttempts(store, from, stage) : [];
          if (from && theirs.length && opts.attempt === undefined) {
            process.stderr.write(`stage "${stage}" was a cache hit in ${run}; the log of run ${from}, which produced its outputs:\n`);
            await printLog(store, from, stage, theirs.at(-1)!);
            return;
          }
          // Ran here and printed nothing: the worker writes no log object for a silent attempt.
          if (found && !from) {
            process.stderr.write(`stage "${stage}" of run ${run} printed nothing (attempt ${found.manifest.attempt})\n`);
            return;
          }
          if (from && opts.attempt === undefined && (await manifestFinder(e, store, from)(stage))) {
            process.stderr.write(`stage "${stage}" was a cache hit in ${run}; in run ${from}, which produced its outputs, it printed nothing\n`);
            return;
          }
          if (from)
            throw new CliError(
              `stage "${stage}" of run ${run} did not run: cache hit on the outputs of run ${from} (tanren logs ${from} ${stage})`,
              ExitCodes.notFound,
            );
          throw notStarted(run, stage);
        }
        const attempt = opts.attempt ?? attempts.at(-1)!;
        if (!attempts.includes(attempt)) {
          throw new CliError(
            `stage "${stage}" of run ${run} has no log of attempt ${attempt}: it has not run, or printed nothing (attempts with a log: ${attempts.join(', ')})`,
            ExitCodes.notFound,
          );
        }
        await printLog(store, run, stage, attempt);
      }),
    );
}
