/**
 * Per-attempt output prefixes against the real MinIO: each attempt execution
 * uploads under a prefix of its own and the manifest, written last, lists the
 * exact keys, so a failed attempt's partial uploads are never read, a later
 * attempt never overwrites what an earlier manifest points at, and manifests
 * written before keys existed are still read.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { before, describe, it } from 'node:test';
import { ApplicationFailure } from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import type { CacheLookup } from '../../activities/cache.js';
import { sha256File } from '../../activities/files.js';
import { keys, manifestObjectKey, outputKeys } from '../../activities/storage/keys.js';
import { createObjectStore, type ObjectStore } from '../../activities/storage/store.js';
import { createCheckCache, createRunStage, type StageRunnerDeps } from '../../activities/run-stage.js';
import type { OutputManifest, StageResult, StageTask } from '../../activities/types.js';
import type { StageSpec } from '../../schemas/pipeline.js';
import { s3Credentials } from '../../worker/config.js';
import { ROOT, servicesEnv, unique } from '../helpers/env.js';

const PY = 'python3';

describe('manifestObjectKey', () => {
  const base = { runId: 'r-1', stage: 's', prefix: 'runs/r-1/s/attempts/2-ab/outputs/' };
  it('uses the recorded key', () => {
    assert.equal(
      manifestObjectKey(base, { path: 'a', size: 1, sha256: 'x', key: 'runs/other/s/attempts/1-cd/outputs/a' }),
      'runs/other/s/attempts/1-cd/outputs/a',
    );
  });
  it('derives the key of an older manifest from its prefix, or from the legacy layout without one', () => {
    assert.equal(manifestObjectKey(base, { path: 'd/a', size: 1, sha256: 'x' }), 'runs/r-1/s/attempts/2-ab/outputs/d/a');
    assert.equal(manifestObjectKey({ runId: 'r-1', stage: 's' }, { path: 'a', size: 1, sha256: 'x' }), 'runs/r-1/s/outputs/a');
  });
  it('refuses a key outside runs/', () => {
    assert.throws(
      () => manifestObjectKey(base, { path: 'a', size: 1, sha256: 'x', key: 'cache/keys/x.json' }),
      /file "a" has key "cache\/keys\/x.json", not an object key under runs\//,
    );
    assert.throws(() => manifestObjectKey(base, { path: 'a', size: 1, sha256: 'x', key: 'runs/../secret' }), /not an object key under runs\//);
  });
});

describe('per-attempt output prefixes', () => {
  let storage: ObjectStore;
  let tmp: string;
  before(async () => {
    const env = servicesEnv();
    storage = createObjectStore({ endpoint: env.TANREN_S3_ENDPOINT, bucket: env.TANREN_BUCKET, ...s3Credentials(env) });
    await storage.ensureBucket();
    tmp = mkdtempSync(path.join(os.tmpdir(), 'tanren-keys-'));
  });

  /** A store whose output uploads fail after `okPuts` successful ones while `failing.on` is set. */
  function flakyStore(failing: { on: boolean; okPuts: number }, puts: string[]): ObjectStore {
    let done = 0;
    return {
      ...storage,
      putFile: async (key, file) => {
        if (failing.on && key.includes('/outputs/') && done++ >= failing.okPuts) throw new Error('connection refused (injected)');
        puts.push(key);
        await storage.putFile(key, file);
      },
    };
  }

  const deps = (store: ObjectStore): StageRunnerDeps => ({
    storage: store,
    config: { workRoot: path.join(tmp, 'work'), projectDir: ROOT, device: 'cpu', queue: 'cpu', pollIntervalMs: 50, killGraceMs: 2000, storageRetryMs: 300 },
  });

  function task(stage: Partial<StageSpec> & { id: string }, runId = unique('keys')): StageTask {
    return { runId, pipeline: 'keys-test', queue: 'cpu', inputs: [], cache: true, stage: { needs: [], with: {}, ...stage } };
  }

  // Each attempt writes different bytes, so a mix of two attempts would show in the digests.
  const script = `# ${unique('key')}
import os
out, n = os.environ["TANREN_OUTPUT"], os.environ["TANREN_ATTEMPT"]
for name in ("a.txt", "b.txt", "c.txt"):
    open(os.path.join(out, name), "w").write(f"{name} of attempt {n}\\n" * (10 + int(n)))
`;

  it('attempt 1 fails after uploading part of its outputs; attempt 2 succeeds: the manifest lists only attempt 2 objects, and their digests match', async () => {
    const failing = { on: true, okPuts: 2 };
    const puts: string[] = [];
    const d = deps(flakyStore(failing, puts));
    const t = task({ id: 'partial', run: [PY, '-c', script] });
    await assert.rejects(new MockActivityEnvironment({ attempt: 1 }).run(createRunStage(d), t), (err: unknown) => {
      assert.ok(err instanceof ApplicationFailure);
      assert.equal(err.type, 'StorageUnavailable');
      assert.equal(err.nonRetryable, false, 'a storage failure is retried');
      return true;
    });
    const first = puts.filter((k) => k.includes('/outputs/'));
    assert.equal(first.length, 2, 'attempt 1 left two of its three outputs');
    assert.equal(await storage.stat(keys.manifest(t.runId, 'partial')), undefined, 'no manifest for a failed attempt');
    assert.match(first[0], new RegExp(`^runs/${t.runId}/partial/attempts/1-[0-9a-f]{8}/outputs/a\\.txt$`));

    failing.on = false;
    const result: StageResult = await new MockActivityEnvironment({ attempt: 2 }).run(createRunStage(d), t);
    assert.equal(result.attempt, 2);
    const manifest = JSON.parse(await storage.getText(keys.manifest(t.runId, 'partial'))) as OutputManifest;
    assert.equal(manifest.attempt, 2);
    assert.match(manifest.prefix, new RegExp(`^runs/${t.runId}/partial/attempts/2-[0-9a-f]{8}/outputs/$`));
    assert.equal(result.outputsPrefix, manifest.prefix, 'the result names the prefix the manifest points at');
    assert.deepEqual(
      manifest.files.map((f) => f.path),
      ['a.txt', 'b.txt', 'c.txt'],
    );
    for (const f of manifest.files) {
      assert.equal(f.key, manifest.prefix + f.path, `${f.path}: the manifest records its exact key`);
      assert.ok(!first.includes(f.key), `${f.path}: not an object attempt 1 wrote`);
      const local = path.join(tmp, unique('dl'));
      await storage.getFile(f.key, local);
      assert.equal(await sha256File(local), f.sha256, `${f.path}: digest matches`);
      assert.match(readFileSync(local, 'utf8'), /of attempt 2\n/);
    }
    // Attempt 1's leftovers sit under their own prefix, untouched and unreferenced.
    const local = path.join(tmp, unique('left'));
    await storage.getFile(first[0], local);
    assert.match(readFileSync(local, 'utf8'), /^a\.txt of attempt 1\n/);
  });

  it('a re-run of the same attempt (a reset) writes a fresh prefix: a reader holding the earlier manifest still gets all of its objects', async () => {
    const d = deps(storage);
    const t = task({ id: 'rerun', run: [PY, '-c', script] });
    await new MockActivityEnvironment({ attempt: 1 }).run(createRunStage(d), t);
    const before = JSON.parse(await storage.getText(keys.manifest(t.runId, 'rerun'))) as OutputManifest;
    await new MockActivityEnvironment({ attempt: 1 }).run(createRunStage(d), t);
    const after = JSON.parse(await storage.getText(keys.manifest(t.runId, 'rerun'))) as OutputManifest;
    assert.notEqual(after.prefix, before.prefix, 'attempt 1 again gets a prefix of its own');
    for (const f of before.files) {
      const local = path.join(tmp, unique('old'));
      await storage.getFile(f.key!, local);
      assert.equal(await sha256File(local), f.sha256, `${f.path}: the earlier manifest's object is intact`);
    }
  });

  it('a cache hit copies the exact keys of the producing run, and survives that run writing a new manifest', async () => {
    const d = deps(storage);
    const stage = { id: 'cached', run: [PY, '-c', script] };
    const producer = task(stage);
    await new MockActivityEnvironment({ attempt: 1 }).run(createRunStage(d), producer);
    const produced = JSON.parse(await storage.getText(keys.manifest(producer.runId, 'cached'))) as OutputManifest;
    // The producing run's manifest is replaced by a later execution (a reset with other outputs, a reuse of its id).
    await storage.putText(keys.manifest(producer.runId, 'cached'), JSON.stringify({ ...produced, files: [] }));

    const consumer = task(stage);
    const hit: CacheLookup = await new MockActivityEnvironment().run(createCheckCache(d), consumer);
    assert.equal(hit.hit, true, hit.reason);
    assert.ok(!('manifest' in hit), 'the manifest itself stays out of workflow history');
    const own = JSON.parse(await storage.getText(keys.manifest(consumer.runId, 'cached'))) as OutputManifest & { cachedFrom?: string };
    assert.equal(own.cachedFrom, producer.runId);
    assert.deepEqual(
      own.files.map((f) => f.key),
      produced.files.map((f) => f.key),
      'the hit points at the very objects the producer wrote',
    );
  });

  it('a downstream stage reads an older manifest without keys (outputs beside it)', async () => {
    const runId = unique('legacy');
    const file = path.join(tmp, 'legacy.txt');
    writeFileSync(file, 'from an older worker\n');
    const legacyKey = `${outputKeys.legacy(runId, 'old')}data/legacy.txt`;
    await storage.putFile(legacyKey, file);
    const old = {
      runId,
      stage: 'old',
      attempt: 1,
      createdAt: new Date().toISOString(),
      prefix: outputKeys.legacy(runId, 'old'),
      files: [{ path: 'data/legacy.txt', size: 21, sha256: await sha256File(file) }],
      result: {},
    };
    await storage.putText(keys.manifest(runId, 'old'), JSON.stringify(old));
    const copy = `
import os, shutil
shutil.copy(os.path.join(os.environ["TANREN_INPUT_OLD"], "data", "legacy.txt"), os.path.join(os.environ["TANREN_OUTPUT"], "copy.txt"))
`;
    const t: StageTask = {
      ...task({ id: 'new', run: [PY, '-c', copy], needs: ['old'] }, runId),
      inputs: [{ stage: 'old', manifestKey: keys.manifest(runId, 'old') }],
    };
    const r: StageResult = await new MockActivityEnvironment().run(createRunStage(deps(storage)), t);
    assert.equal(r.files, 1);
    const m = JSON.parse(await storage.getText(r.manifestKey)) as OutputManifest;
    const local = path.join(tmp, unique('copy'));
    await storage.getFile(m.files[0].key!, local);
    assert.equal(readFileSync(local, 'utf8'), 'from an older worker\n');
  });
});
