/**
 * The work directory of one stage attempt: its layout, its creation (empty,
 * whatever an earlier run of the attempt left) and its removal when the attempt ends.
 */
import { mkdir, rm, rmdir } from 'node:fs/promises';
import path from 'node:path';
import { FailureTypes, MAX_RUN_ID_CHARS, RUN_ID_PATTERN } from '../../schemas/names.js';
import { stageFailure } from '../errors.js';

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

/** Creates the attempt's directory empty, with its inputs, output and checkpoints directories. */
export async function prepareAttemptDir(d: AttemptDir): Promise<void> {
  // mkdir says whether it created the directory: only a directory an earlier run of this attempt left is emptied.
  if ((await mkdirAmidRemovals(d.dir)) === undefined) {
    await rm(d.dir, { recursive: true, force: true });
    await mkdirAmidRemovals(d.dir);
  }
  await Promise.all([d.inputs, d.output, d.checkpoints].map((sub) => mkdir(sub)));
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

/** Directory of the records of stage process groups a worker has running. */
export function runningDir(workRoot: string): string {
  return path.join(workRoot, 'running');
}
