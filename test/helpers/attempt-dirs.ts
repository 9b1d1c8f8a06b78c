/** Owners of attempt directories for the sweep's tests. */
import assert from 'node:assert/strict';
import { thisWorker, type AttemptDirOwner } from '../../activities/stage-runner/attempt-dir.js';
import { identify } from '../../activities/process-identity.js';

/**
 * An owner whose worker died, as the sweep sees it: this host and pid namespace, the test's parent pid with another
 * start time (how a dead worker whose pid was reused looks).
 */
export function deadWorkerOwner(): AttemptDirOwner {
  const parent = identify(process.ppid);
  assert.ok(parent.startTicks !== undefined, 'the test reads process start times from /proc');
  return { ...thisWorker(), worker: { ...parent, startTicks: parent.startTicks + 1 } };
}
