/** The run state carried across continue-as-new: packed small, unpacked to the same status. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { packStage, unpackStage } from '../../workflows/carry.js';
import type { StageStatus } from '../../workflows/pipeline.js';

const ctx = { runId: 'big-run', defaultCache: 'cache: off for this run (--no-cache)' };
const base = (id: string) => ({ id, kind: 'run', queue: 'cpu' as const, needs: ['a'] });

describe('carried run state', () => {
  const plain: StageStatus = {
    ...base('s1'),
    state: 'succeeded',
    attempt: 1,
    metrics: {},
    attempts: [{ attempt: 1, startedAt: '2026-11-30T10:00:00.000Z', endedAt: '2026-11-30T10:00:01.000Z' }],
    startedAt: '2026-11-30T10:00:00.000Z',
    endedAt: '2026-11-30T10:00:01.000Z',
    manifestKey: 'runs/big-run/s1/manifest.json',
    cache: 'cache: off for this run (--no-cache)',
    result: {},
  };

  it('round-trips a plain succeeded stage and packs it to well under 200 bytes', () => {
    const packed = packStage(plain, ctx);
    assert.ok(JSON.stringify(packed).length < 200, JSON.stringify(packed));
    const back = unpackStage(packed, base('s1'), ctx);
    assert.deepEqual({ ...back, result: back.result ?? {} }, plain);
  });

  it("keeps what differs from the defaults: failures, metrics, a cache hit, another run's manifest", () => {
    const rich: StageStatus = {
      ...plain,
      state: 'cached',
      attempt: 0,
      metrics: { loss: 1.5 },
      attempts: [],
      cache: 'cache hit: outputs of run earlier',
      cachedFrom: 'earlier',
      manifestKey: 'runs/big-run/s1/manifest.json',
      result: { tokens: 3 },
    };
    assert.deepEqual(unpackStage(packStage(rich, ctx), base('s1'), ctx), rich);
    const retried: StageStatus = {
      ...plain,
      attempt: 2,
      attempts: [
        { attempt: 1, startedAt: plain.startedAt!, endedAt: plain.startedAt!, failure: 'StageCrashed: boom' },
        { attempt: 2, startedAt: plain.startedAt!, endedAt: plain.endedAt! },
      ],
      result: { x: 1 },
    };
    assert.deepEqual(unpackStage(packStage(retried, ctx), base('s1'), ctx), retried);
  });

  it('reads state carried in full by the first version', () => {
    const { id: _i, kind: _k, queue: _q, needs: _n, ...full } = plain;
    assert.deepEqual(unpackStage(full, base('s1'), ctx), plain);
  });

  it('5,000 plain stages carry in well under the 2 MB payload limit', () => {
    const all = Array.from({ length: 5000 }, (_, i) => packStage({ ...plain, id: `stage-${i}`, manifestKey: `runs/big-run/stage-${i}/manifest.json` }, ctx));
    const bytes = JSON.stringify(all).length;
    assert.ok(bytes < 800_000, `${bytes} bytes`);
  });
});
