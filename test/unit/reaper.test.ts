/**
 * The orphan reaper of a starting worker kills stage process groups whose
 * owning worker is gone, and nothing else: not the stages of another live
 * worker sharing the work directory, not a process that reused a pid.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { pino } from 'pino';
import { identify } from '../../activities/process-identity.js';
import { runningDir } from '../../activities/run-stage.js';
import { reapOrphanStages } from '../../worker/run-worker.js';
import { waitFor } from '../helpers/env.js';

const logger = pino({ level: 'silent' });

function sleeper(): ChildProcess {
  return spawn('sleep', ['600'], { detached: true, stdio: 'ignore' });
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe('orphan reaper', () => {
  const procs: ChildProcess[] = [];
  after(() => {
    for (const p of procs) if (p.pid && alive(p.pid)) process.kill(-p.pid, 'SIGKILL');
  });

  it("kills only the stages of a worker that is gone, never a live worker's or a reused pid", async () => {
    const root = mkdtempSync(path.join(os.tmpdir(), 'tanren-reap-'));
    const dir = runningDir(root);
    mkdirSync(dir, { recursive: true });
    const orphan = sleeper();
    const kept = sleeper();
    const reused = sleeper();
    procs.push(orphan, kept, reused);
    const liveWorker = sleeper();
    procs.push(liveWorker);
    await waitFor('the sleepers', () => [orphan, kept, reused, liveWorker].every((p) => p.pid && alive(p.pid)));
    const deadWorker = { pid: 999_999, startTicks: 1, bootId: identify(process.pid).bootId };
    const rec = (name: string, p: ChildProcess, worker: object, stageProcess = identify(p.pid!)) =>
      writeFileSync(path.join(dir, `gpu-${name}.json`), JSON.stringify({ pgid: p.pid, runId: 'r', stage: name, attempt: 1, stageProcess, worker }));
    rec('orphan', orphan, deadWorker);
    rec('kept', kept, identify(liveWorker.pid!));
    // A record whose leader pid now names another process (a different start time).
    rec('reused', reused, deadWorker, { ...identify(reused.pid!), startTicks: 1 });

    const n = await reapOrphanStages(root, 'gpu', logger);
    assert.equal(n, 1);
    await waitFor('the orphan to die', () => !alive(orphan.pid!) || orphan.exitCode !== null || orphan.signalCode !== null, 5000);
    assert.equal(kept.exitCode, null, "a live worker's stage runs on");
    assert.ok(alive(kept.pid!));
    assert.ok(alive(reused.pid!), 'a process that got a recorded pid is left alone');
  });
});
