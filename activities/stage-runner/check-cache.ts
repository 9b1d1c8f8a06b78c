/** The `checkCache` activity: looks a stage up in the cross-run cache before it is run. */
import { lookupCache, type CacheLookup } from '../cache.js';
import { storageFailure } from '../errors.js';
import { keys, manifestFiles } from '../storage/keys.js';
import type { StageTask } from '../types.js';
import { DIST_DIR } from './command.js';
import type { StageRunnerDeps } from './types.js';

/** Creates the `checkCache` activity: looks a stage up in the cross-run cache. */
export function createCheckCache(deps: StageRunnerDeps) {
  return async function checkCache(task: StageTask): Promise<CacheLookup> {
    try {
      const found = await lookupCache(deps.storage, task.pipeline, task.stage, task.inputs, { projectDir: deps.config.projectDir, distDir: DIST_DIR });
      if (!found.hit) return found;
      // Every run gets its own manifest, pointing at the cached objects by their exact keys, so the run stands on its own.
      const { manifest, ...hit } = found;
      const own = keys.manifest(task.runId, task.stage.id);
      const copy = { ...manifest, files: manifestFiles(manifest), cachedFrom: manifest.cachedFrom ?? found.fromRun };
      await deps.storage.putText(own, JSON.stringify(copy, null, 2));
      return { ...hit, manifestKey: own };
    } catch (err) {
      throw storageFailure(`looking up the cache for stage "${task.stage.id}"`, err);
    }
  };
}
