/**
 * runStage's own cache look-up (`lookupCache`, CPU stages of current runs),
 * with MockActivityEnvironment, real child processes and the real MinIO: a
 * miss runs the stage and records it under the key its look-up computed, a
 * later run of the same stage is a verified hit that runs nothing, a hit whose
 * objects changed is rejected and runs, a stage looked up by its own checkCache
 * activity (GPU stages) records its outputs under the key of the program that
 * ran (computed as it starts, not after it ended), and `cache: false`
 * (`--no-cache`) writes no entry.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { MockActivityEnvironment } from '@temporalio/testing';
import { computeCacheKey, flushCacheRecords } from '../../activities/cache.js';
import { createRunStage } from '../../activities/run-stage.js';
import { DIST_DIR } from '../../activities/stage-runner/command.js';
import { cacheKeys } from '../../activities/storage/keys.js';
import { createObjectStore, type ObjectStore } from '../../activities/storage/store.js';
import type { OutputManifest, StageResult, StageTask } from '../../activities/types.js';
import type { StageSpec } from '../../schemas/pipeline.js';
import { objectStoreConfig } from '../../worker/config.js';
import { ROOT, servicesEnv, stateDir, unique } from '../helpers/env.js';

describe('runStage with its own cache look-up', () => {
  let storage: ObjectStore;
  let workRoot: string;
  let counter: string;
  before(async () => {
    const env = servicesEnv();
    storage = createObjectStore(objectStoreConfig(env));
    await storage.ensureBucket();
    workRoot = mkdtempSync(path.join(os.tmpdir(), 'tanren-cache-in-stage-'));
    counter = path.join(workRoot, 'ran.txt');
    writeFileSync(counter, '');
  });
  after(() => rmSync(workRoot, { recursive: true, force: true }));

  const runStage = () => createRunStage({ storage, config: { workRoot, projectDir: ROOT, device: 'cpu', queue: 'cpu', pollIntervalMs: 50 } });
  /** Counts its runs in `counter` and writes one output; `version` makes the cache key this test's own. */
  const stage = (version: string): StageSpec => ({
    id: 'prep',
    needs: [],
    with: {},
    version,
    run: ['sh', '-c', `echo run >> "${counter}" && echo data > "$TANREN_OUTPUT/out.txt"`],
  });
  const task = (s: StageSpec, extra: Partial<StageTask>): StageTask => ({
    runId: unique('cis'),
    pipeline: 'cache-in-stage',
    queue: 'cpu',
    inputs: [],
    stage: s,
    ...extra,
  });
  const runs = () => readFileSync(counter, 'utf8').split('\n').filter(Boolean).length;
  const run = (t: StageTask): Promise<StageResult> => new MockActivityEnvironment().run(runStage(), t);

  it('runs a miss and records it under its key; the next run is a verified hit that runs nothing', async () => {
    const s = stage(unique('v'));
    const before = runs();
    const first = await run(task(s, { cache: true, lookupCache: true }));
    assert.equal(first.cache?.hit, false);
    assert.match(first.cache.reason, /^cache miss: /);
    assert.equal(runs(), before + 1);

    // At once: the record is written behind the first result, and a look-up of its key waits for it.
    const second = task(s, { cache: true, lookupCache: true });
    const hit = await run(second);
    const { key } = await computeCacheKey(storage, s, [], { projectDir: ROOT, distDir: DIST_DIR });
    assert.ok(await storage.stat(cacheKeys.entry(key)), 'the miss recorded its outputs under the key of its look-up');
    assert.deepEqual(hit.cache, {
      hit: true,
      reason: `cache hit: outputs of run ${first.manifestKey.split('/')[1]}`,
      fromRun: first.manifestKey.split('/')[1],
    });
    assert.equal(runs(), before + 1, 'a hit runs nothing');
    assert.equal(hit.files, 1);
    // The run's own manifest, pointing at the first run's objects.
    assert.equal(hit.manifestKey, `runs/${second.runId}/prep/manifest.json`);
    const copy = JSON.parse(await storage.getText(hit.manifestKey)) as OutputManifest & { cachedFrom?: string };
    const original = JSON.parse(await storage.getText(first.manifestKey)) as OutputManifest;
    assert.deepEqual(
      copy.files.map((f) => f.key),
      original.files.map((f) => f.key),
    );
    assert.equal(copy.cachedFrom, original.runId);
  });

  it('rejects a hit whose object changed, and runs the stage', async () => {
    const s = stage(unique('v'));
    const first = await run(task(s, { cache: true, lookupCache: true }));
    const original = JSON.parse(await storage.getText(first.manifestKey)) as OutputManifest;
    await storage.putText(original.files[0].key!, 'tampered'); // not the size or digest the entry says
    const before = runs();
    const again = await run(task(s, { cache: true, lookupCache: true }));
    assert.equal(again.cache?.hit, false);
    assert.match(again.cache.reason, /^cache hit rejected: /);
    assert.equal(runs(), before + 1);
  });

  it('a stage looked up elsewhere (GPU stages: checkCache) records behind its result under its key; a flush waits for it', async () => {
    const s = stage(unique('v'));
    const { key } = await computeCacheKey(storage, s, [], { projectDir: ROOT, distDir: DIST_DIR });
    const first = await run(task(s, { cache: true }));
    assert.equal(first.cache, undefined, 'no look-up in this activity');
    // What a stopping worker does: every record, including one whose key was still being computed, is written.
    assert.equal(await flushCacheRecords(), 0);
    const entry = JSON.parse(await storage.getText(cacheKeys.entry(key))) as { manifestKey: string; runId: string };
    assert.equal(entry.manifestKey, first.manifestKey);
    const before = runs();
    const hit = await run(task(s, { cache: true, lookupCache: true }));
    assert.equal(hit.cache?.hit, true);
    assert.equal(runs(), before, 'a hit runs nothing');
  });

  it('a GPU-path stage whose program changes while it runs is recorded under the program that ran, not the edited one', async () => {
    // A program file in the project: its digest is part of the key (programVersion). The stage edits it as it runs,
    // as a user editing a script during a week of training would; sh reads on past the appended comment.
    const dir = path.join(stateDir(), 'cache-program');
    mkdirSync(dir, { recursive: true });
    const script = path.join(dir, `${unique('edited')}.sh`);
    writeFileSync(script, `echo '# edited while it ran' >> "$0"\necho data > "$TANREN_OUTPUT/out.txt"\n`);
    const s: StageSpec = { id: 'edited', needs: [], with: {}, run: ['sh', script] };
    const dirs = { projectDir: ROOT, distDir: DIST_DIR };
    const ran = await computeCacheKey(storage, s, [], dirs);
    const first = await run(task(s, { cache: true }));
    assert.equal(await flushCacheRecords(), 0);
    const edited = await computeCacheKey(storage, s, [], dirs);
    assert.notEqual(edited.key, ran.key, 'the stage edited its program');
    const entry = JSON.parse(await storage.getText(cacheKeys.entry(ran.key))) as { manifestKey: string };
    assert.equal(entry.manifestKey, first.manifestKey, 'recorded under the key of the program that ran');
    assert.equal(await storage.stat(cacheKeys.entry(edited.key)), undefined, 'the edited program has no entry: its next run must run it');
    rmSync(script);
  });

  it('writes no cache entry for a run without the cache (--no-cache)', async () => {
    const s = stage(unique('v'));
    const result = await run(task(s, { cache: false }));
    assert.equal(result.cache, undefined, 'no look-up was asked for');
    await flushCacheRecords();
    const { key } = await computeCacheKey(storage, s, [], { projectDir: ROOT, distDir: DIST_DIR });
    assert.equal(await storage.stat(cacheKeys.entry(key)), undefined);
  });
});
