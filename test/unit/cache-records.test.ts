/**
 * Cache records written behind a stage's result (activities/cache.ts): a
 * look-up of the same key waits for its record, a worker's shutdown flushes
 * them, and a store that hangs does not hold the shutdown up. A fake store
 * stands in for MinIO here (services/run-stage-cache.test.ts uses the real one).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { flushCacheRecords, recordCacheBehind, type CacheEntry } from '../../activities/cache.js';
import type { ObjectStore } from '../../activities/storage/store.js';

/** A store whose writes wait until `release()`; everything else is unused here. */
function slowStore() {
  const written: string[] = [];
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const store = {
    bucket: 'b',
    endpoint: 'http://127.0.0.1:1',
    putText: async (key: string) => {
      await gate;
      written.push(key);
    },
  } as unknown as ObjectStore;
  return { store, written, release };
}

const entry = (key: string): CacheEntry => ({
  key,
  parts: { kind: 'run', params: {}, program: 'p', inputs: {} },
  manifestKey: `runs/r/s/manifest.json`,
  runId: 'r',
  stage: 's',
  createdAt: new Date(0).toISOString(),
});

describe('cache records written behind the result', () => {
  it('a flush waits for the records in flight, and says none is left', async () => {
    const { store, written, release } = slowStore();
    recordCacheBehind(store, 'pipe', entry('k1'), () => assert.fail('no error expected'));
    assert.deepEqual(written, [], 'not written yet: the store has not answered');
    const flushed = flushCacheRecords(5_000);
    release();
    assert.equal(await flushed, 0);
    assert.deepEqual(written.sort(), ['cache/keys/k1.json', 'cache/stages/pipe/s.json']);
  });

  it('a store that hangs does not hold up the flush: it gives up after its timeout and counts what is left', async () => {
    const { store, release } = slowStore();
    recordCacheBehind(store, 'pipe', entry('k2'), () => undefined);
    const started = Date.now();
    assert.equal(await flushCacheRecords(200), 1);
    assert.ok(Date.now() - started < 2_000);
    release();
    assert.equal(await flushCacheRecords(5_000), 0);
  });

  it('a failed write is reported to its onError and leaves nothing in flight', async () => {
    const failing = { bucket: 'b', endpoint: 'e', putText: () => Promise.reject(new Error('refused')) } as unknown as ObjectStore;
    const errors: string[] = [];
    recordCacheBehind(failing, 'pipe', entry('k3'), (err) => errors.push(String(err)));
    assert.equal(await flushCacheRecords(5_000), 0);
    assert.deepEqual(errors, ['Error: refused']);
  });
});
