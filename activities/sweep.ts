/**
 * publishSweep: gives a swept stage its own manifest, pointing at the best
 * trial's outputs (the way a cache hit points at an earlier run's), so
 * downstream stages, `tanren get` and the cache read it like any stage's.
 */
import { FailureTypes } from '../schemas/names.js';
import { stageFailure, storageFailure } from './errors.js';
import { keys } from './storage/keys.js';
import { retry } from './storage/retry.js';
import type { StageRunnerDeps } from './run-stage.js';
import type { OutputManifest } from './types.js';

/** What the workflow hands over when a sweep has picked its best trial. */
export interface PublishSweepTask {
  runId: string;
  /** The swept stage's id. */
  stage: string;
  /** Storage id of the best trial (`<stage>.trial-NN`). */
  bestTrial: string;
  /** Its manifest. */
  bestManifestKey: string;
  /** `{best_trial, params, metric, value, reason}`: merged into the stage's result. */
  choice: Record<string, unknown>;
  /** Every trial's params, rung, metric and state, for the report (kept in the manifest, not in history). */
  trials: unknown[];
}

/** Creates the `publishSweep` activity. */
export function createPublishSweep(deps: Pick<StageRunnerDeps, 'storage'>) {
  return async function publishSweep(task: PublishSweepTask): Promise<{ manifestKey: string; result: Record<string, unknown>; files: number; bytes: number }> {
    if (task.bestManifestKey !== keys.manifest(task.runId, task.bestTrial)) {
      throw stageFailure(FailureTypes.InvalidPipelineSpec, `stage "${task.stage}": best trial manifest ${task.bestManifestKey} is not the trial's own`);
    }
    let manifest: OutputManifest;
    try {
      manifest = JSON.parse(await retry(() => retry(() => deps.storage.getText(task.bestManifestKey), 'eventual-read'), 'outage')) as OutputManifest;
    } catch (err) {
      throw storageFailure(`reading the manifest of trial "${task.bestTrial}" of stage "${task.stage}"`, err);
    }
    const result = { ...manifest.result, sweep: task.choice };
    const own = keys.manifest(task.runId, task.stage);
    try {
      await retry(
        () =>
          deps.storage.putText(
            own,
            JSON.stringify(
              { ...manifest, stage: task.stage, sweptFrom: task.bestTrial, result: { ...result, sweep: { ...task.choice, trials: task.trials } } },
              null,
              2,
            ),
          ),
        'outage',
      );
    } catch (err) {
      throw storageFailure(`writing the manifest of stage "${task.stage}"`, err);
    }
    return { manifestKey: own, result, files: manifest.files.length, bytes: manifest.files.reduce((n, f) => n + f.size, 0) };
  };
}
