/**
 * The stage process: started with execa in its own process group (so
 * cancellation and cleanup reach grandchildren), its output redacted into the
 * attempt's log, its group recorded under `running/` with the identities the
 * reaper of a restarted worker checks, and SIGTERM then SIGKILL on cancellation.
 */
import { createWriteStream } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';
import type { Logger } from '@temporalio/common';
import { execa } from 'execa';
import { FailureTypes } from '../../schemas/names.js';
import { stageFailure } from '../errors.js';
import { identify } from '../process-identity.js';
import { runningDir } from './attempt-dir.js';

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
}

/**
 * Starts a stage program. A program that cannot be started is a
 * `StageConfigError`; one that starts and fails shows in its outcome.
 */
export async function startStageProcess(o: StartOptions): Promise<StageProcess> {
  const { log } = o;
  const logStream = createWriteStream(o.logFile, { flags: 'a' });
  const tail: string[] = [];
  const record = (streamName: 'stdout' | 'stderr', raw: string) => {
    // The log goes to object storage and the worker's log: no credential value of the worker in either.
    const line = o.redact(raw);
    logStream.write(`${line}\n`);
    tail.push(line);
    if (tail.length > 50) tail.shift();
    log.info(line, { stage: o.stageId, attempt: o.attempt, stream: streamName });
  };

  let child;
  try {
    child = execa(o.argv[0], o.argv.slice(1), {
      cwd: o.cwd,
      env: o.env,
      extendEnv: false,
      detached: true, // own process group, so cancellation reaches grandchildren too
      reject: false,
      stdin: 'ignore',
      buffer: false,
      cleanup: true,
    });
  } catch (err) {
    throw stageFailure(FailureTypes.StageConfigError, `stage "${o.stageId}": cannot start ${o.argv[0]}: ${(err as Error).message}`);
  }
  // Listen before any await: output written at once would otherwise be lost.
  const streamsClosed: Array<Promise<void>> = [];
  for (const [name, stream] of [
    ['stdout', child.stdout],
    ['stderr', child.stderr],
  ] as const) {
    if (!stream) continue;
    const lines = createInterface({ input: stream });
    lines.on('line', (l) => record(name, l));
    streamsClosed.push(new Promise<void>((r) => lines.once('close', () => r())));
  }
  // The last lines arrive after the exit event; a grandchild holding the pipe must not stall us.
  const drained = (ms: number) => Promise.race([Promise.all(streamsClosed), new Promise((r) => setTimeout(r, ms))]);
  const exited: Promise<ProcessOutcome> = child.then((r) => ({ exitCode: r.exitCode, signal: r.signal }));
  const pid = child.pid;
  const runningRecord = pid ? path.join(runningDir(o.workRoot), `${o.queue}-${pid}.json`) : undefined;
  if (runningRecord) {
    await mkdir(path.dirname(runningRecord), { recursive: true });
    // Who owns the group, and who it is: the reaper of a restarted worker kills it only if both checks say so.
    await writeFile(
      runningRecord,
      JSON.stringify({ pgid: pid, runId: o.runId, stage: o.stageId, attempt: o.attempt, stageProcess: identify(pid!), worker: identify(process.pid) }),
    );
  }

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
      if (runningRecord) await rm(runningRecord, { force: true });
    },
    closeLog: () => new Promise<void>((r) => logStream.end(r)),
  };
}
