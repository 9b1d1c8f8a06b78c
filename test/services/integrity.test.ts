/**
 * Integrity of stored outputs against the real MinIO: a cache hit streams
 * every object's sha256 and compares it with the manifest (a same-size
 * corruption is a miss that says so, and the stage recomputes), and a stage
 * whose outputs hold a symbolic link fails as InvalidStageOutput instead of
 * the link being left out silently.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { before, describe, it } from 'node:test';
import { ApplicationFailure } from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import type { CacheLookup } from '../../activities/cache.js';
import { createCheckCache, createRunStage, type StageRunnerDeps } from '../../activities/run-stage.js';
import { describeFiles, sha256File } from '../../activities/files.js';
import { keys } from '../../activities/storage/keys.js';
import { createObjectStore, type ObjectStore, sha256Object } from '../../activities/storage/store.js';
import type { OutputManifest, StageResult, StageTask } from '../../activities/types.js';
import type { StageSpec } from '../../schemas/pipeline.js';
import { s3Credentials } from '../../worker/config.js';
import { ROOT, servicesEnv, unique } from '../helpers/env.js';

const PY = 'python3';

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('integrity of outputs and cache hits', () => {
  let storage: ObjectStore;
  let deps: StageRunnerDeps;
  let tmp: string;
  before(async () => {
    const env = servicesEnv();
    storage = createObjectStore({ endpoint: env.TANREN_S3_ENDPOINT, bucket: env.TANREN_BUCKET, ...s3Credentials(env) });
    await storage.ensureBucket();
    tmp = mkdtempSync(path.join(os.tmpdir(), 'tanren-integrity-'));
    deps = { storage, config: { workRoot: path.join(tmp, 'work'), projectDir: ROOT, device: 'cpu', queue: 'cpu', pollIntervalMs: 50, killGraceMs: 2000 } };
  });

  function task(stage: Partial<StageSpec> & { id: string }, cache = true): StageTask {
    return { runId: unique('integ'), pipeline: 'integrity-test', queue: 'cpu', inputs: [], cache, stage: { needs: [], with: {}, ...stage } };
  }

  const checkCache = (t: StageTask): Promise<CacheLookup> => new MockActivityEnvironment().run(createCheckCache(deps), t);
  const runStage = (t: StageTask): Promise<StageResult> => new MockActivityEnvironment().run(createRunStage(deps), t);

  it('a cached output overwritten with other bytes of the same size is a miss with its digests, and the stage recomputes', async () => {
    // A unique comment makes a cache key no other run shares.
    const script = `# ${unique('key')}
import os
out = os.environ["TANREN_OUTPUT"]
open(os.path.join(out, "x.bin"), "wb").write(bytes(range(256)) * 1024)
open(os.path.join(out, "small.txt"), "w").write("ok")
`;
    const stage = { id: 'digest', run: [PY, '-c', script] };
    const first = task(stage);
    await runStage(first);

    const hit = await checkCache(task(stage));
    assert.equal(hit.hit, true, hit.reason);
    assert.equal(hit.reason, `cache hit: outputs of run ${first.runId}`);

    const manifest = JSON.parse(await storage.getText(keys.manifest(first.runId, 'digest'))) as OutputManifest;
    const entry = manifest.files.find((f) => f.path === 'x.bin')!;
    const objectKey = manifest.prefix + 'x.bin';
    const corrupted = Buffer.from(bytesOf(256 * 1024, 7));
    assert.equal(corrupted.length, entry.size);
    const file = path.join(tmp, 'corrupted.bin');
    writeFileSync(file, corrupted);
    await storage.putFile(objectKey, file);
    assert.equal((await storage.stat(objectKey))?.size, entry.size, 'same size: a size check alone would pass');

    const second = task(stage);
    const miss = await checkCache(second);
    assert.equal(miss.hit, false);
    assert.equal(miss.reason, `cache hit rejected: digest mismatch: ${objectKey} has sha256 ${sha256(corrupted)}, manifest says ${entry.sha256}`);
    assert.equal(await storage.stat(keys.manifest(second.runId, 'digest')), undefined, 'a rejected hit writes no manifest for the run');

    // The workflow runs the stage on a miss; its fresh outputs become the entry.
    await runStage(second);
    const again = await checkCache(task(stage));
    assert.equal(again.hit, true, again.reason);
    assert.equal(again.reason, `cache hit: outputs of run ${second.runId}`);

    // An object deleted from under the entry is a miss too.
    const secondManifest = JSON.parse(await storage.getText(keys.manifest(second.runId, 'digest'))) as OutputManifest;
    const gone = secondManifest.files.find((f) => f.path === 'small.txt')!.key!;
    await storage.remove([gone]);
    const missing = await checkCache(task(stage));
    assert.equal(missing.hit, false);
    assert.equal(missing.reason, `cache hit rejected: object missing: ${gone}`);
  });

  it('hashes objects by streaming them, also through stores without a sha256 method', async () => {
    const key = `integrity/${unique('obj')}.bin`;
    const body = Buffer.from(bytesOf(3 * 1024 * 1024 + 17, 3));
    const file = path.join(tmp, 'obj.bin');
    writeFileSync(file, body);
    await storage.putFile(key, file);
    assert.equal(await sha256Object(storage, key), sha256(body));
    const plain: ObjectStore = { ...storage, sha256: undefined };
    assert.equal(await sha256Object(plain, key), sha256(body));
    assert.equal(await sha256Object(storage, `${key}.absent`), undefined);
    assert.equal(await sha256Object(plain, `${key}.absent`), undefined);
    await storage.remove([key]);
  });

  it('a stage that writes a symbolic link in its outputs fails as InvalidStageOutput, without retry and without a manifest', async () => {
    const script = `
import os
out = os.environ["TANREN_OUTPUT"]
os.makedirs(os.path.join(out, "sub"))
open(os.path.join(out, "sub", "real.txt"), "w").write("data")
os.symlink("/etc/hostname", os.path.join(out, "sub", "link.txt"))
`;
    const t = task({ id: 'linker', run: [PY, '-c', script] }, false);
    await assert.rejects(runStage(t), (err: unknown) => {
      assert.ok(err instanceof ApplicationFailure, String(err));
      assert.equal(err.type, 'InvalidStageOutput');
      assert.equal(err.nonRetryable, true);
      // run-stage names the stage once it passes { stage: stage.id } to describeFiles; until then the directory.
      assert.equal(err.message, 'stage "linker" wrote a symbolic link "sub/link.txt" in its outputs; write the file itself');
      return true;
    });
    assert.equal(await storage.stat(keys.manifest(t.runId, 'linker')), undefined);
    assert.deepEqual(await storage.list(`${keys.stagePrefix(t.runId, 'linker')}attempts/`), [], 'no output was uploaded');
  });

  it('describeFiles names every link and special file, and otherwise describes the files as before', async () => {
    const dir = mkdtempSync(path.join(tmp, 'out-'));
    mkdirSync(path.join(dir, 'sub'));
    writeFileSync(path.join(dir, 'a.txt'), 'alpha');
    writeFileSync(path.join(dir, 'sub', 'b.bin'), Buffer.from(bytesOf(100_000, 1)));
    assert.deepEqual(await describeFiles(dir), [
      { path: 'a.txt', size: 5, sha256: await sha256File(path.join(dir, 'a.txt')) },
      { path: 'sub/b.bin', size: 100_000, sha256: await sha256File(path.join(dir, 'sub', 'b.bin')) },
    ]);

    symlinkSync('a.txt', path.join(dir, 'sub', 'link'));
    await assert.rejects(describeFiles(dir, { stage: 'x' }), (err: unknown) => {
      assert.ok(err instanceof ApplicationFailure);
      assert.equal(err.type, 'InvalidStageOutput');
      assert.equal(err.message, 'stage "x" wrote a symbolic link "sub/link" in its outputs; write the file itself');
      return true;
    });

    symlinkSync(path.join(dir, 'sub'), path.join(dir, 'dirlink'));
    symlinkSync(path.join(dir, 'nowhere'), path.join(dir, 'dangling'));
    execFileSync('mkfifo', [path.join(dir, 'pipe')]);
    await assert.rejects(describeFiles(dir, { stage: 'x' }), (err: unknown) => {
      assert.ok(err instanceof ApplicationFailure);
      assert.equal(
        err.message,
        'stage "x" wrote symbolic links "dangling", "dirlink", "sub/link" and a FIFO "pipe" in its outputs; write the files themselves',
      );
      return true;
    });
  });
});

/** `n` bytes of a simple sequence that differs for each `seed`. */
function bytesOf(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (i * 31 + seed * 17 + (i >> 8)) & 0xff;
  return out;
}
