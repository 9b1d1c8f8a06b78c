/**
 * The cache look-up of a stage before it is run: the `checkCache` activity
 * (GPU stages, runs of older workflows) and the same look-up inside `runStage`
 * (CPU stages of current runs, saving an activity and a workflow task per stage).
 */
import { lookupCache, type CacheKeyParts, type CacheLookup, type CacheLookupWithManifest } from '../cache.js';
import { storageFailure } from '../errors.js';
import { keys, manifestFiles } from '../storage/keys.js';
import type { ObjectStore } from '../storage/store.js';
import type { StageTask } from '../types.js';
import { DIST_DIR } from './command.js';
import { inputRefs } from './inputs.js';
import type { StageRunnerDeps } from './types.js';

/** A look-up's answer, with the key parts a miss records its outputs under later, and a hit's size. */
export type StageCacheLookup =
  Extract<CacheLookupWithManifest, { hit: false }> | (Extract<CacheLookup, { hit: true }> & { parts: CacheKeyParts; files: number; bytes: number });

/**
 * Looks a stage up in the cross-run cache. A verified hit gets its own
 * manifest in this run, pointing at the cached objects by their exact keys, so
 * the run stands on its own. Object-store failures are `StorageUnavailable`.
 */
export async function lookupStage(storage: ObjectStore, task: StageTask, projectDir: string): Promise<StageCacheLookup> {
  try {
    const found = await lookupCache(storage, task.pipeline, task.stage, inputRefs(task), { projectDir, distDir: DIST_DIR });
    if (!found.hit) return found;
    // Hit: the manifest stays here (it can be large).
    const { manifest, ...hit } = found;
    const own = keys.manifest(task.runId, task.stage.id);
    const copy = { ...manifest, files: manifestFiles(manifest), cachedFrom: manifest.cachedFrom ?? found.fromRun };
    await storage.putText(own, JSON.stringify(copy, null, 2));
    return { ...hit, manifestKey: own, files: copy.files.length, bytes: copy.files.reduce((n, f) => n + f.size, 0) };
  } catch (err) {
    throw storageFailure(`looking up the cache for stage "${task.stage.id}"`, err);
  }
}

/** Creates the `checkCache` activity: looks a stage up in the cross-run cache. */
export function createCheckCache(deps: StageRunnerDeps) {
  return async function checkCache(task: StageTask): Promise<CacheLookup> {
    // The key parts stay in the worker: the workflow needs the answer only.
    const found = await lookupStage(deps.storage, task, deps.config.projectDir);
    if (!found.hit) return { hit: false, key: found.key, reason: await found.reason };
    const { parts: _parts, files: _files, bytes: _bytes, ...hit } = found;
    return hit;
  };
}
