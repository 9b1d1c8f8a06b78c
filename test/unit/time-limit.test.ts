/** settledWithin: the one bounded wait (a stage's output pipes after its exit, cache records at a worker's stop). */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { settledWithin } from '../../activities/time-limit.js';

describe('settledWithin', () => {
  it('is true for a promise that fulfils or rejects in time, false for one that does not', async () => {
    assert.equal(await settledWithin(Promise.resolve(1), 1000), true);
    assert.equal(await settledWithin(Promise.reject(new Error('no')), 1000), true);
    assert.equal(await settledWithin(new Promise((r) => setTimeout(r, 20)), 1000), true);
    const t0 = performance.now();
    assert.equal(await settledWithin(new Promise(() => {}), 50), false);
    assert.ok(performance.now() - t0 >= 45, 'waited for the bound');
  });

  it('clears its timer when the promise wins: a long bound does not keep the process alive', async () => {
    const before = process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
    assert.equal(await settledWithin(Promise.resolve(), 3_600_000), true);
    assert.equal(process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length, before);
  });
});
