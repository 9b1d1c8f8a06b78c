/** The worker's content-addressed input cache: hits skip the download, digests are checked, LRU eviction bounds it. */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, utimesSync, writeFileSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { InputCache } from '../../activities/input-cache.js';

const sha = (s: string) => createHash('sha256').update(s).digest('hex');

describe('input cache', () => {
  const root = mkdtempSync(path.join(os.tmpdir(), 'tanren-input-cache-'));
  const downloads: string[] = [];
  const from = (content: string) => async (to: string) => {
    downloads.push(content);
    writeFileSync(to, content);
  };

  it('downloads once, then links the verified copy', async () => {
    const cache = new InputCache(path.join(root, 'c1'), 1 << 20);
    const a = await cache.fetch(sha('dataset'), path.join(root, 'attempt-1', 'data.bin'), from('dataset'));
    const b = await cache.fetch(sha('dataset'), path.join(root, 'attempt-2', 'data.bin'), from('dataset'));
    assert.deepEqual([a.hit, b.hit], [false, true]);
    assert.equal(downloads.filter((d) => d === 'dataset').length, 1);
    assert.equal(readFileSync(path.join(root, 'attempt-2', 'data.bin'), 'utf8'), 'dataset');
    assert.deepEqual(cache.stats, { hits: 1, misses: 1, evicted: 0 });
  });

  it('does not cache a download whose digest is wrong, and reports what arrived', async () => {
    const cache = new InputCache(path.join(root, 'c2'), 1 << 20);
    const dest = path.join(root, 'bad', 'x');
    const got = await cache.fetch(sha('expected'), dest, from('tampered'));
    assert.equal(got.sha256, sha('tampered'));
    assert.equal(readFileSync(dest, 'utf8'), 'tampered');
    const again = await cache.fetch(sha('expected'), dest, from('expected'));
    assert.deepEqual(again, { sha256: sha('expected'), hit: false });
  });

  it('drops a cached copy that changed (a stage wrote through its link) and fetches it again', async () => {
    const cache = new InputCache(path.join(root, 'c3'), 1 << 20);
    const dest = path.join(root, 'c3-a', 'f');
    await cache.fetch(sha('clean'), dest, from('clean'));
    writeFileSync(dest, 'dirty'); // same inode as the cached object when hard-linked
    const before = downloads.length;
    const r = await cache.fetch(sha('clean'), path.join(root, 'c3-b', 'f'), from('clean'));
    assert.equal(r.sha256, sha('clean'));
    assert.equal(downloads.length, before + 1, 'fetched again');
  });

  it('evicts the least recently used objects past its size', async () => {
    const dir = path.join(root, 'c4');
    const cache = new InputCache(dir, 25); // room for two 10-byte objects
    const obj = (s: string) => path.join(dir, 'sha256', sha(s).slice(0, 2), sha(s));
    await cache.fetch(sha('aaaaaaaaaa'), path.join(root, 'c4-x', 'a'), from('aaaaaaaaaa'));
    await cache.fetch(sha('bbbbbbbbbb'), path.join(root, 'c4-x', 'b'), from('bbbbbbbbbb'));
    const old = new Date(Date.now() - 60_000);
    utimesSync(obj('bbbbbbbbbb'), old, old);
    // Using a keeps it recent; b is now the least recently used.
    await cache.fetch(sha('aaaaaaaaaa'), path.join(root, 'c4-y', 'a'), from('aaaaaaaaaa'));
    await cache.fetch(sha('cccccccccc'), path.join(root, 'c4-x', 'c'), from('cccccccccc'));
    assert.ok(existsSync(obj('aaaaaaaaaa')));
    assert.ok(!existsSync(obj('bbbbbbbbbb')), 'b evicted');
    assert.ok(existsSync(obj('cccccccccc')));
    assert.equal(cache.stats.evicted, 1);
  });
});
