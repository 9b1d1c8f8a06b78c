/**
 * Publishing a succeeded attempt's outputs: every file under this attempt's
 * own prefix, then the manifest, written last and the only pointer to them,
 * and after it (for cached stages, not awaited) the cross-run cache record,
 * which carries its own copy of the manifest.
 */
import { access } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '@temporalio/common';
import { ApplicationFailure } from '@temporalio/common';
import { FailureTypes } from '../../schemas/names.js';
import { recordCacheBehind, type CacheKeyParts } from '../cache.js';
import { stageFailure, storageFailure } from '../errors.js';
import { describeFiles } from '../files.js';
import { attemptToken, keys, outputKeys } from '../storage/keys.js';
import { retry, type RetryOptions } from '../storage/retry.js';
import type { ObjectStore } from '../storage/store.js';
import type { ManifestEntry, OutputManifest, StageTask } from '../types.js';
import type { Beat } from './types.js';

/** Throws `InvalidStageOutput` when the program did not write an output its spec declares (`outputs[]`). */
export async function checkDeclaredOutputs(stageId: string, declared: readonly string[], outputDir: string): Promise<void> {
  for (const expected of declared) {
    try {
      await access(path.join(outputDir, expected));
    } catch {
      throw stageFailure(
        FailureTypes.InvalidStageOutput,
        `stage "${stageId}" succeeded but did not write its declared output "${expected}" (outputs[] in the spec)`,
      );
    }
  }
}

/** What publishing an attempt's outputs needs. */
export interface PublishOptions {
  storage: ObjectStore;
  runId: string;
  stageId: string;
  attempt: number;
  outputDir: string;
  /** The stage's result (its `result` events and what the runner adds). */
  result: Record<string, unknown>;
  beat: Beat;
  retryOpts: RetryOptions;
  /**
   * Called once the manifest is written, not awaited: the cache record, which holds its own copy of the
   * manifest (a hit copies that and verifies every object it lists). Must not throw.
   */
  afterManifest?: (p: Published) => void;
}

/** A published attempt. */
export interface Published {
  prefix: string;
  files: ManifestEntry[];
  manifest: OutputManifest;
  manifestKey: string;
}

/**
 * Uploads every file of the output directory under this execution's own
 * prefix, then writes the stage's manifest: a manifest means every file it
 * lists is complete. Object-store failures are `StorageUnavailable`.
 */
export async function publishOutputs(o: PublishOptions): Promise<Published> {
  const { storage, runId, stageId, attempt } = o;
  // This execution's own prefix: never one an earlier attempt (or a reset's re-run of this one) wrote to.
  const prefix = outputKeys.attempt(runId, stageId, attempt, attemptToken());
  const files = (await describeFiles(o.outputDir, { stage: stageId })).map((f) => ({ ...f, key: prefix + f.path }));
  const manifestKey = keys.manifest(runId, stageId);
  const manifest: OutputManifest = { runId, stage: stageId, attempt, createdAt: '', prefix, files, result: o.result };
  try {
    for (const f of files) {
      await retry(() => storage.putFile(f.key, path.join(o.outputDir, f.path)), o.retryOpts);
      o.beat({ phase: `uploading outputs: ${f.path}` });
    }
    manifest.createdAt = new Date().toISOString();
    // Written last, and the only pointer to this attempt's objects: a manifest means every file it lists is complete.
    await retry(() => storage.putText(manifestKey, JSON.stringify(manifest, null, 2)), o.retryOpts);
  } catch (err) {
    if (err instanceof ApplicationFailure) throw err;
    throw storageFailure(`uploading the outputs of stage "${stageId}"`, err);
  }
  const published = { prefix, files, manifest, manifestKey };
  o.afterManifest?.(published);
  return published;
}

/**
 * Records a published stage in the cross-run cache under its key (computed by the stage's look-up, or before its
 * program started), behind the stage's result (activities/cache.ts `recordCacheBehind`): a failure only costs a
 * later cache hit, so it is logged, not thrown.
 */
export function recordInCache(storage: ObjectStore, task: StageTask, published: Published, log: Logger, key: { key: string; parts: CacheKeyParts }): void {
  const onError = (err: unknown) => {
    log.warn('cache entry not recorded', { stage: task.stage.id, error: String(err) });
  };
  const entry = {
    manifestKey: published.manifestKey,
    manifest: published.manifest,
    runId: task.runId,
    stage: task.stage.id,
    createdAt: new Date().toISOString(),
  };
  recordCacheBehind(storage, task.pipeline, { ...entry, ...key }, onError);
}
