/**
 * The stage process: started by the worker's stage launcher (./launcher.ts) in
 * its own process group (so cancellation and cleanup reach grandchildren), its
 * output redacted into the attempt's log, its group recorded under `running/` with the identities the
 * reaper of a restarted worker checks, and SIGTERM then SIGKILL on cancellation.
 */
import { createWriteStream } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '@temporalio/common';
import { FailureTypes } from '../../schemas/names.js';
import { stageFailure } from '../errors.js';
import { identify } from '../process-identity.js';
import { runningDir, type RunningRecord } from './attempt-dir.js';
import { launch, launchPythonModule, type LaunchListener } from './launcher-client.js';
import { settledWithin } from '../time-limit.js';

/** How the process ended. */
export interface ProcessOutcome {
  exitCode?: number;
  signal?: string;
}

/** What starting a stage process needs. */
export interface StartOptions {
  argv: string[];
  cwd: string;
  /** The whole environment of the process (nothing of the worker's is added). */
  env: Record<string, string>;
  /** The attempt's log file, appended to. */
  logFile: string;
  /** Removes the worker's credential values from every output line. */
  redact: (text: string) => string;
  log: Logger;
  /** Names the running record and its contents. */
  workRoot: string;
  queue: 'cpu' | 'gpu';
  runId: string;
  stageId: string;
  attempt: number;
  /** Aborts on activity cancellation: SIGTERM to the group, SIGKILL after `killGraceMs`. */
  signal: AbortSignal;
  killGraceMs: number;
  /** Start `python -m tanren_stages.<kind>` forked from the worker's zygote. */
  prefork?: boolean;
}

/** A started stage process. */
export interface StageProcess {
  /** Resolves (never rejects) when the process has exited. */
  readonly exited: Promise<ProcessOutcome>;
  /** The last 50 lines of output, redacted. */
  readonly tail: string[];
  /** True once cancellation reached the process. */
  readonly cancelled: boolean;
  /** Sends a signal to the process group (nothing if it is gone). */
  killGroup(signal: NodeJS.Signals): void;
  /**
   * After exit: stops listening for cancellation, waits briefly for the last
   * output, kills what the stage left in its group and removes its running record.
   */
  reap(): Promise<void>;
  /** Closes the log file (after {@link reap}). */
  closeLog(): Promise<void>;
  /** Lines written to the log so far (a local stage that printed nothing leaves no log object). */
  readonly loggedLines: number;
}

/**
 * Starts a stage program. A program that cannot be started is a
 * `StageConfigError`; one that starts and fails shows in its outcome.
 */
export async function startStageProcess(o: StartOptions): Promise<StageProcess> {
  const { log } = o;
  const logStream = createWriteStream(o.logFile, { flags: 'a' });
  const tail: string[] = [];
  let loggedLines = 0;
  const record = (streamName: 'stdout' | 'stderr', raw: string) => {
    loggedLines++;
    // The log goes to object storage and the worker's log: no credential value of the worker in either.
    const line = o.redact(raw);
    logStream.write(`${line}\n`);
    tail.push(line);
    if (tail.length > 50) tail.shift();
    log.info(line, { stage: o.stageId, attempt: o.attempt, stream: streamName });
  };

  let onExit!: (outcome: ProcessOutcome) => void;
  const exited = new Promise<ProcessOutcome>((r) => (onExit = r));
  let onClosed!: () => void;
  const streamsClosed = new Promise<void>((r) => (onClosed = r));
  // The launcher relays output from the start: nothing written at once is lost.
  const listener: LaunchListener = {
    line: record,
    exit: (e) => {
      if (e.error) record('stderr', `tanren: ${e.error}`);
      onExit({ exitCode: e.exitCode, signal: e.signal });
    },
    closed: onClosed,
  };
  const [file, ...args] = o.argv;
  // A built-in Python kind: forked from the zygote, which has imported torch and transformers already.
  const started =
    o.prefork && args[0] === '-m' && args[1]?.startsWith('tanren_stages.')
      ? await launchPythonModule({ python: file, module: args[1], args: args.slice(2), cwd: o.cwd, env: o.env }, listener, (why) => {
          log.warn('stage started with python -m: no zygote', { stage: o.stageId, why });
        })
      : await launch({ file, args, cwd: o.cwd, env: o.env }, listener);
  if (started.error && !started.pid) {
    logStream.end();
    // A starter that died or could not fork is the worker's trouble (retried); a program that cannot be started is the spec's.
    throw stageFailure(
      started.retryable ? FailureTypes.StageCrashed : FailureTypes.StageConfigError,
      `stage "${o.stageId}": cannot start ${o.argv[0]}: ${started.error}`,
    );
  }
  // The last lines arrive after the exit; a grandchild holding the pipe must not stall us.
  const drained = (ms: number) => settledWithin(streamsClosed, ms);
  const pid = started.pid;
  const runningRecord = pid ? path.join(runningDir(o.workRoot), `${o.queue}-${pid}.json`) : undefined;
  // Who owns the group, and who it is: the reaper of a restarted worker kills it only if both checks say so.
  // Written while the process runs (it is only read after a worker restart); reap waits for it before removing it.
  const recorded =
    runningRecord && pid
      ? (async () => {
          const record: RunningRecord = {
            pgid: pid,
            runId: o.runId,
            stage: o.stageId,
            attempt: o.attempt,
            stageProcess: started.identity,
            worker: identify(process.pid),
          };
          const content = JSON.stringify(record);
          await mkdir(path.dirname(runningRecord), { recursive: true });
          await writeFile(runningRecord, content);
        })().catch((err: unknown) => {
          log.warn('stage process record not written', { stage: o.stageId, error: String(err) });
        })
      : undefined;

  const killGroup = (signal: NodeJS.Signals) => {
    if (!pid) return;
    try {
      process.kill(-pid, signal);
    } catch {
      // the group is already gone
    }
  };
  let cancelled = false;
  let killTimer: NodeJS.Timeout | undefined;
  const onCancel = () => {
    cancelled = true;
    log.info('cancelling stage: SIGTERM to its process group', { stage: o.stageId });
    killGroup('SIGTERM');
    killTimer = setTimeout(() => killGroup('SIGKILL'), o.killGraceMs);
  };
  o.signal.addEventListener('abort', onCancel, { once: true });
  // Cancelled while it was being started.
  if (o.signal.aborted) onCancel();

  return {
    exited,
    tail,
    get cancelled() {
      return cancelled;
    },
    killGroup,
    async reap() {
      if (killTimer) clearTimeout(killTimer);
      o.signal.removeEventListener('abort', onCancel);
      await drained(2000);
      // A stage may leave grandchildren behind; they belong to its group.
      killGroup('SIGKILL');
      await drained(1000);
      await recorded;
      if (runningRecord) await rm(runningRecord, { force: true });
    },
    closeLog: () => new Promise<void>((r) => logStream.end(r)),
    get loggedLines() {
      return loggedLines;
    },
  };
}
