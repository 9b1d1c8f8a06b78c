/**
 * A worker that starts removes the attempt directories of workers that died mid-attempt, and nothing else: not a
 * live worker's, another host's or another pid namespace's, not one without an owner record (being created, or
 * from an older version), not one kept for people. Stage and run directories left empty go too.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import {
  attemptDir,
  INPUT_CACHE_DIR,
  KEPT_FILE,
  markAttemptDirKept,
  OWNER_FILE,
  prepareAttemptDir,
  runningDir,
  sweepOrphanAttemptDirs,
  thisWorker,
  type AttemptDirOwner,
} from '../../activities/stage-runner/attempt-dir.js';
import { identify } from '../../activities/process-identity.js';
import { deadWorkerOwner } from '../helpers/attempt-dirs.js';

describe('sweep of orphaned attempt directories', () => {
  const roots: string[] = [];
  after(async () => {
    await Promise.all(roots.map((r) => rm(r, { recursive: true, force: true })));
  });

  it('removes only the directories of dead workers of this host and pid namespace, and empty parents', async () => {
    const root = await mkdtemp(path.join(os.tmpdir(), 'tanren-sweep-'));
    roots.push(root);
    const self = thisWorker();
    const parent = identify(process.ppid);
    const dead = deadWorkerOwner();
    const live: AttemptDirOwner = { ...self, worker: parent };

    const make = async (run: string, stage: string, attempt: number, owner: AttemptDirOwner | undefined) => {
      const d = attemptDir(root, run, stage, attempt);
      if (owner) await prepareAttemptDir(d, owner);
      else await mkdir(d.output, { recursive: true });
      // What a killed attempt leaves: a checkpoint, a restored copy, partial outputs.
      await mkdir(path.join(d.checkpoints, 'step-8'), { recursive: true });
      await writeFile(path.join(d.checkpoints, 'step-8', 'model.safetensors'), Buffer.alloc(4096, 1));
      await writeFile(path.join(d.output, 'partial.bin'), 'x');
      return d;
    };
    const orphan = await make('run-a', 'pretrain', 1, dead);
    const orphanSibling = await make('run-a', 'sft', 2, dead);
    const ofLiveWorker = await make('run-b', 'pretrain', 1, live);
    const ofThisWorker = await make('run-b', 'sft', 1, self);
    const otherHost = await make('run-c', 'pretrain', 1, { ...dead, host: `${self.host}-elsewhere` });
    const otherPidNs = await make('run-c', 'sft', 1, { ...dead, pidNs: 'pid:[1]' });
    const noOwner = await make('run-d', 'pretrain', 3, undefined);
    // A dead worker's stage still running (a GPU stage waits for a GPU worker to reap it): its directory stays.
    const stageStillRunning = await make('run-g', 'pretrain', 2, dead);
    const kept = await make('run-e', 'pretrain', 1, dead);
    await markAttemptDirKept(kept, 'some of its checkpoints are not in object storage');
    // Empty stage directories, as earlier versions left them, and the running records' directory.
    await mkdir(path.join(root, 'run-old', 'tokenize'), { recursive: true });
    await mkdir(path.join(root, 'run-old', 'pretrain'), { recursive: true });
    await mkdir(path.join(root, INPUT_CACHE_DIR, 'sha256'), { recursive: true });
    await mkdir(runningDir(root), { recursive: true });
    await writeFile(path.join(runningDir(root), 'gpu-1.json'), '{}');
    await writeFile(
      path.join(runningDir(root), `gpu-${parent.pid}.json`),
      JSON.stringify({ pgid: parent.pid, runId: 'run-g', stage: 'pretrain', attempt: 2, stageProcess: parent, worker: dead.worker }),
    );
    // A record of a stage that has ended does not keep the directory.
    await writeFile(
      path.join(runningDir(root), 'cpu-7.json'),
      JSON.stringify({ pgid: 7, runId: 'run-a', stage: 'sft', attempt: 2, stageProcess: dead.worker, worker: dead.worker }),
    );

    const swept = await sweepOrphanAttemptDirs(root, self);

    assert.deepEqual(swept.removed.sort(), [orphan.dir, orphanSibling.dir].sort());
    assert.ok(!existsSync(path.join(root, 'run-a')), 'the run directory of the dead worker, left empty, is gone');
    assert.ok(!existsSync(path.join(root, 'run-old')), 'empty stage and run directories of earlier versions are gone');
    for (const d of [ofLiveWorker, ofThisWorker, otherHost, otherPidNs, noOwner, kept, stageStillRunning]) {
      assert.ok(existsSync(path.join(d.checkpoints, 'step-8', 'model.safetensors')), `${d.dir} is kept`);
    }
    assert.ok(existsSync(path.join(kept.dir, KEPT_FILE)));
    assert.ok(existsSync(path.join(runningDir(root), 'gpu-1.json')), "the running records are the reaper's");
    assert.ok(existsSync(path.join(root, INPUT_CACHE_DIR, 'sha256')), "the input cache's directories stay, empty or not");
    // 3 empty dirs of run-old, and run-a's two stage directories and itself.
    assert.equal(swept.emptyDirsRemoved, 6);
    assert.deepEqual((await readdir(root)).sort(), ['input-cache', 'run-b', 'run-c', 'run-d', 'run-e', 'run-g', 'running']);
  });

  it('records the owner of a directory it prepares: this worker, on this host', async () => {
    const root = await mkdtemp(path.join(os.tmpdir(), 'tanren-sweep-'));
    roots.push(root);
    const d = attemptDir(root, 'run-f', 'eval', 1);
    await prepareAttemptDir(d);
    const owner = JSON.parse(await readFile(path.join(d.dir, OWNER_FILE), 'utf8')) as AttemptDirOwner;
    assert.equal(owner.host, os.hostname());
    assert.equal(owner.worker.pid, process.pid);
    assert.ok(owner.worker.startTicks !== undefined && owner.worker.bootId);
    // Its own directories are never swept by itself, and a sweep of a live worker's directory leaves it.
    assert.deepEqual((await sweepOrphanAttemptDirs(root)).removed, []);
    assert.ok(existsSync(d.output));
  });
});
