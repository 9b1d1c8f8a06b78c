/**
 * What an attempt starts from: the outputs of the stages it needs, each file
 * verified by digest, and the newest complete checkpoint to resume from.
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '@temporalio/common';
import { FailureTypes } from '../../schemas/names.js';
import type { CheckpointRef } from '../checkpoints/manifest.js';
import { restoreLatestCheckpoint } from '../checkpoints/restore.js';
import { sha256File } from '../files.js';
import type { ObjectStoreConfig } from '../storage/client.js';
import { keys, manifestFiles } from '../storage/keys.js';
import { retry, type RetryOptions } from '../storage/retry.js';
import type { ObjectStore } from '../storage/store.js';
import { stageFailure, storageFailure } from '../errors.js';
import type { InputCache } from '../input-cache.js';
import type { OutputManifest, StageInputRef, StageTask } from '../types.js';
import { inputEnvName } from './command.js';
import type { Beat } from './types.js';

/** A task's inputs, each with its manifest's key: one the workflow left out is this run's manifest of that stage. */
export function inputRefs(task: Pick<StageTask, 'runId' | 'inputs'>): StageInputRef[] {
  return task.inputs.map((input) => ({ ...input, manifestKey: input.manifestKey ?? keys.manifest(task.runId, input.stage) }));
}

/**
 * Downloads every file of each needed stage's manifest into
 * `<inputsDir>/<stage>/` (through the worker's input cache when it has one),
 * verifying each sha256; returns the `TANREN_INPUT_<ID>` variables and the
 * manifests read (in the order of `inputs`).
 */
export async function downloadInputs(
  storage: ObjectStore,
  cache: InputCache | undefined,
  stageId: string,
  inputs: readonly StageInputRef[],
  inputsDir: string,
  beat: Beat,
  retryOpts: RetryOptions,
  /** Manifests this attempt has already read (by the cache look-up), in the order of `inputs`. */
  known?: readonly OutputManifest[],
): Promise<{ inputEnv: Record<string, string>; manifests: OutputManifest[] }> {
  const inputEnv: Record<string, string> = {};
  const manifests: OutputManifest[] = [];
  for (const [i, input] of inputs.entries()) {
    const manifest = known?.[i] ?? input.manifest ?? (await readInputManifest(storage, input, retryOpts));
    manifests.push(manifest);
    const target = path.join(inputsDir, input.stage);
    await mkdir(target, { recursive: true });
    let files;
    try {
      files = manifestFiles(manifest);
    } catch (err) {
      throw stageFailure(FailureTypes.InvalidStageInput, `stage "${stageId}": ${(err as Error).message} (${input.manifestKey})`);
    }
    for (const f of files) {
      const dest = path.join(target, f.path);
      let digest: string;
      try {
        digest = await fetchInput(cache, f.sha256, dest, (to) => retry(() => storage.getFile(f.key, to), retryOpts));
      } catch (err) {
        throw storageFailure(`downloading ${f.key} for stage "${stageId}"`, err);
      }
      if (digest !== f.sha256) {
        throw stageFailure(
          FailureTypes.InvalidStageInput,
          `stage "${stageId}": input ${f.key} from stage "${input.stage}" has sha256 ${digest}, manifest says ${f.sha256}`,
        );
      }
    }
    inputEnv[inputEnvName(input.stage)] = target;
    beat({ phase: `downloading inputs of ${input.stage}` });
  }
  return { inputEnv, manifests };
}

/** Reads a needed stage's manifest: written by another worker just before this stage was scheduled, so read-after-write, through an outage. */
async function readInputManifest(storage: ObjectStore, input: StageInputRef, retryOpts: RetryOptions): Promise<OutputManifest> {
  try {
    return JSON.parse(await retry(() => retry(() => storage.getText(input.manifestKey), 'eventual-read'), retryOpts)) as OutputManifest;
  } catch (err) {
    throw storageFailure(`reading the manifest of stage "${input.stage}" (${input.manifestKey})`, err);
  }
}

/** Downloads one input file through the worker's input cache when it has one; returns the digest of what arrived. */
async function fetchInput(cache: InputCache | undefined, sha256: string, dest: string, download: (to: string) => Promise<void>): Promise<string> {
  if (cache) return (await cache.fetch(sha256, dest, download)).sha256;
  await download(dest);
  return sha256File(dest);
}

/** A checkpoint the attempt resumes from. */
export interface Resume {
  /** Where it was unpacked (TANREN_RESUME_FROM). */
  dir: string;
  ref: CheckpointRef;
  /** What the stage's result records about it (`resumed_from`, `resumed_from_step`, `checkpoints_skipped`). */
  resultInfo: Record<string, unknown>;
}

/**
 * Restores the newest complete checkpoint of the stage in object storage (the
 * previous attempt's, by heartbeat, else any) into `resumeDir`; undefined when
 * there is none.
 */
export async function restoreResume(
  storage: ObjectStore,
  s3: ObjectStoreConfig | undefined,
  runId: string,
  stageId: string,
  resumeDir: string,
  previous: CheckpointRef | undefined,
  log: Logger,
  retryOpts: RetryOptions,
): Promise<Resume | undefined> {
  try {
    const restored = await retry(() => restoreLatestCheckpoint(storage, runId, stageId, resumeDir, previous, { s3 }), retryOpts);
    for (const skip of restored?.skipped ?? []) {
      log.warn('checkpoint skipped', { stage: stageId, checkpoint: skip.ref.path, reason: skip.reason });
    }
    if (!restored) return undefined;
    const resultInfo: Record<string, unknown> = { resumed_from: restored.ref.path, resumed_from_step: restored.ref.step };
    if (restored.skipped.length) {
      resultInfo.checkpoints_skipped = restored.skipped.map((k) => `${k.ref.path}: ${k.reason}`).join('; ');
    }
    log.info('resuming from checkpoint', { stage: stageId, checkpoint: restored.ref.path, step: restored.ref.step });
    return { dir: restored.dir, ref: restored.ref, resultInfo };
  } catch (err) {
    throw storageFailure(`restoring the latest checkpoint of stage "${stageId}"`, err);
  }
}
