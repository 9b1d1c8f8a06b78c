/**
 * The activity factory: every activity a worker registers, bound to injected
 * clients. Workflows import this module as a type only.
 */
import { createCheckCache, createRunStage, type StageRunnerDeps } from './run-stage.js';
import { createPublishSweep } from './sweep.js';

/** Dependencies of all activities. */
export type ActivityDeps = StageRunnerDeps;

/** Builds the activities with their clients and configuration. */
export function createActivities(deps: ActivityDeps) {
  return {
    runStage: createRunStage(deps),
    checkCache: createCheckCache(deps),
    publishSweep: createPublishSweep(deps),
  };
}
