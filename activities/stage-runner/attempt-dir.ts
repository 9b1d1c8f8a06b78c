/**
 * The work directory of one stage attempt: its layout, its creation (empty,
 * whatever an earlier run of the attempt left, with a record of its owner), its
 * removal when the attempt ends, and the sweep of those whose worker died.
 */
import { readlinkSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, rmdir, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import path from 'node:path';
import { FailureTypes, MAX_RUN_ID_CHARS, RUN_ID_PATTERN } from '../../schemas/names.js';
import { stageFailure } from '../errors.js';
import { identify, stillRunning, type ProcessIdentity } from '../process-identity.js';

/**
 * Who an attempt's directory belongs to (`.tanren-owner.json` in it): the worker process running the attempt, and
 * its host (a work directory may be shared by workers of several hosts). A worker that starts removes the
 * directories of owners that are gone ({@link sweepOrphanAttemptDirs}).
 */
export interface AttemptDirOwner {
  host: string;
  /** The worker's pid namespace (`/proc/self/ns/pid`): containers of one host share its name and boot, not its pids. */
  pidNs?: string;
  worker: ProcessIdentity;
}

/** Name of the owner record in an attempt's directory. */
export const OWNER_FILE = '.tanren-owner.json';
/** Name of the note that keeps an attempt's directory for people (why, in one line): no sweep removes it. */
export const KEPT_FILE = '.tanren-kept';
/** What {@link KEPT_FILE} says in a directory kept because the worker keeps them all (`TANREN_KEEP_WORK_DIRS=1`). */
export const KEPT_AS_ASKED = 'kept as asked (TANREN_KEEP_WORK_DIRS=1)';

let ownSelf: AttemptDirOwner | undefined;
/** This worker process as the owner of the attempt directories it creates. */
export function thisWorker(): AttemptDirOwner {
  ownSelf ??= { host: hostname(), pidNs: pidNamespace(), worker: identify(process.pid) };
  return ownSelf;
}

function pidNamespace(): string | undefined {
  try {
    return readlinkSync('/proc/self/ns/pid');
  } catch {
    return undefined;
  }
}

/** The paths of an attempt's work directory, as the stage protocol hands them to the program. */
export interface AttemptDir {
  /** `<workRoot>/<run>/<stage>/attempt-<n>`. */
  dir: string;
  /** One directory per needed stage with its downloaded outputs (TANREN_INPUTS). */
  inputs: string;
  /** Where the program writes its outputs (TANREN_OUTPUT). */
  output: string;
  /** Where the program writes its checkpoints (TANREN_CHECKPOINTS). */
  checkpoints: string;
  /** Where a restored checkpoint is unpacked (TANREN_RESUME_FROM). */
  resume: string;
  /** The stage's parameters as JSON (TANREN_PARAMS). */
  paramsFile: string;
  /** The JSON-lines events the program appends (TANREN_EVENTS). */
  eventsFile: string;
  /** The program's stdout and stderr, redacted. */
  logFile: string;
}

/** Throws `InvalidPipelineSpec` unless the run id is plain enough to name directories and object keys. */
export function checkRunId(runId: string): void {
  if (!RUN_ID_PATTERN.test(runId)) {
    // The run id names directories that are removed recursively and object keys: it must be plain.
    throw stageFailure(
      FailureTypes.InvalidPipelineSpec,
      `run id ${JSON.stringify(runId.slice(0, 100))}: use letters, digits, ".", "_" and "-" (at most ${MAX_RUN_ID_CHARS}, starting with a letter or digit)`,
    );
  }
}

/** The layout of an attempt's work directory (nothing is created). */
export function attemptDir(workRoot: string, runId: string, stageId: string, attempt: number): AttemptDir {
  const dir = path.join(workRoot, runId, stageId, `attempt-${attempt}`);
  return {
    dir,
    inputs: path.join(dir, 'inputs'),
    output: path.join(dir, 'output'),
    checkpoints: path.join(dir, 'checkpoints'),
    resume: path.join(dir, 'resume'),
    paramsFile: path.join(dir, 'params.json'),
    eventsFile: path.join(dir, 'events.jsonl'),
    logFile: path.join(dir, 'stage.log'),
  };
}

/**
 * Creates the attempt's directory empty, with its inputs, output and checkpoints directories and the record of its
 * owner.
 */
export async function prepareAttemptDir(d: AttemptDir, owner: AttemptDirOwner = thisWorker()): Promise<void> {
  // mkdir says whether it created the directory: only a directory an earlier run of this attempt left is emptied.
  if ((await mkdirAmidRemovals(d.dir)) === undefined) {
    await rm(d.dir, { recursive: true, force: true });
    await mkdirAmidRemovals(d.dir);
  }
  await Promise.all([...[d.inputs, d.output, d.checkpoints].map((sub) => mkdir(sub)), writeFile(path.join(d.dir, OWNER_FILE), JSON.stringify(owner))]);
}

/** Notes in the attempt's directory why it is kept: a later worker's sweep leaves it to people. */
export async function markAttemptDirKept(d: AttemptDir, why: string): Promise<void> {
  await writeFile(path.join(d.dir, KEPT_FILE), `${why}\n`);
}

/**
 * `mkdir -p` that tries again when a parent vanished half-way: another stage of the run, ending, may remove the
 * run's directory (once empty) between the creation of a parent and of its child.
 */
async function mkdirAmidRemovals(dir: string): Promise<string | undefined> {
  for (let tries = 1; ; tries++) {
    try {
      return await mkdir(dir, { recursive: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || tries >= 5) throw err;
    }
  }
}

/**
 * Removes the attempt's directory and everything in it, then its stage's and run's directories if that left them
 * empty: a worker that runs for months keeps no trace of the attempts it ended.
 */
export async function removeAttemptDir(d: AttemptDir): Promise<void> {
  await rm(d.dir, { recursive: true, force: true });
  const stageDir = path.dirname(d.dir);
  for (const dir of [stageDir, path.dirname(stageDir)]) {
    try {
      await rmdir(dir);
    } catch {
      // Not empty (another attempt or stage of the run is under way) or already gone: left to whoever ends last.
      return;
    }
  }
}

/** What {@link sweepOrphanAttemptDirs} did: the attempt directories it removed, and the empty ones above them. */
export interface SweepResult {
  removed: string[];
  /** Directories that could not be removed, and why (the worker starts all the same). */
  failed: Array<{ dir: string; error: string }>;
  emptyDirsRemoved: number;
}

/**
 * Removes the attempt directories whose worker is gone: a worker killed mid-attempt (SIGKILL, a crash, a power
 * loss) had no chance to remove its attempt's directory, and its next attempt resumes from object storage, not
 * from there. Run by a worker as it starts, after it killed the stages such workers left running. Left alone: the
 * directories of live workers (another worker sharing the work directory), of other hosts, those with no owner
 * record (being created, or from a version that wrote none) and those kept for people ({@link KEPT_FILE}). Stage
 * and run directories left empty go too.
 */
export async function sweepOrphanAttemptDirs(workRoot: string, self: AttemptDirOwner = thisWorker()): Promise<SweepResult> {
  const result: SweepResult = { removed: [], failed: [], emptyDirsRemoved: 0 };
  const subdirs = async (dir: string) => {
    try {
      return (await readdir(dir, { withFileTypes: true })).filter((e) => e.isDirectory()).map((e) => path.join(dir, e.name));
    } catch {
      return [];
    }
  };
  const removeIfEmpty = async (dir: string) => {
    try {
      await rmdir(dir);
      result.emptyDirsRemoved++;
    } catch {
      // not empty, or gone
    }
  };
  // The worker's own directories beside the runs': its running records (the reaper's) and its input cache.
  const own = new Set([runningDir(workRoot), path.join(workRoot, INPUT_CACHE_DIR)]);
  // A dead worker's stage that still runs (each worker reaps only its own queue's: a GPU stage's program waits for
  // a GPU worker) keeps its directory until a worker of its queue has killed it.
  const stillUsed = await attemptsStillRunning(workRoot);
  for (const runDir of await subdirs(workRoot)) {
    if (own.has(runDir)) continue;
    for (const stageDir of await subdirs(runDir)) {
      for (const dir of await subdirs(stageDir)) {
        if (!/^attempt-\d+$/.test(path.basename(dir))) continue;
        let owner: AttemptDirOwner;
        try {
          owner = JSON.parse(await readFile(path.join(dir, OWNER_FILE), 'utf8')) as AttemptDirOwner;
        } catch {
          continue;
        }
        if (stillUsed.has(path.relative(workRoot, dir))) continue;
        const elsewhere = owner.host !== self.host || owner.pidNs !== self.pidNs;
        if (elsewhere || !owner.worker || owner.worker.pid === self.worker.pid || stillRunning(owner.worker)) continue;
        try {
          await readFile(path.join(dir, KEPT_FILE));
          continue;
        } catch {
          // not kept
        }
        try {
          // A killed stage's last processes may still be exiting (the reaper's SIGKILL is asynchronous).
          await rm(dir, { recursive: true, force: true, maxRetries: 3 });
          result.removed.push(dir);
        } catch (err) {
          result.failed.push({ dir, error: String(err) });
        }
      }
      await removeIfEmpty(stageDir);
    }
    await removeIfEmpty(runDir);
  }
  return result;
}

/** `<run>/<stage>/attempt-<n>` of each stage program a running record lists that still runs. */
async function attemptsStillRunning(workRoot: string): Promise<Set<string>> {
  const out = new Set<string>();
  for (const { rec } of await readRunningRecords(workRoot)) {
    if (rec?.runId && rec.stage && rec.attempt !== undefined && rec.stageProcess && stillRunning(rec.stageProcess)) {
      out.add(path.join(rec.runId, rec.stage, `attempt-${rec.attempt}`));
    }
  }
  return out;
}

/**
 * The record of a stage process group a worker has running (`<workRoot>/running/<queue>-<pid>.json`): written by the
 * stage's process step, read after a worker restart by the reaper (which kills the group) and the sweep (which
 * leaves its directory while it runs).
 */
export interface RunningRecord {
  pgid: number;
  runId: string;
  stage: string;
  attempt?: number;
  /** The program (the group's leader); absent in records of older versions. */
  stageProcess?: ProcessIdentity;
  /** The worker that started it; absent in records of older versions. */
  worker?: ProcessIdentity;
}

/** The running records under a work directory, each with its file; an unreadable one has `rec` undefined. */
export async function readRunningRecords(workRoot: string): Promise<Array<{ name: string; file: string; rec?: Partial<RunningRecord> }>> {
  const dir = runningDir(workRoot);
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return [];
  }
  return Promise.all(
    names.map(async (name) => {
      const file = path.join(dir, name);
      try {
        return { name, file, rec: JSON.parse(await readFile(file, 'utf8')) as Partial<RunningRecord> };
      } catch {
        return { name, file };
      }
    }),
  );
}

/** Name of the worker's local cache of stage inputs under its work directory (activities/input-cache.ts). */
export const INPUT_CACHE_DIR = 'input-cache';

/** Directory of the records of stage process groups a worker has running. */
export function runningDir(workRoot: string): string {
  return path.join(workRoot, 'running');
}
