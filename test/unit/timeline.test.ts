/** The report's stage timeline within its budget (workflows/timeline.ts): the longest rows kept, the rest counted. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MAX_PIPELINE_SWEEP_PARAMS_BYTES, MAX_PIPELINE_SWEEP_TRIALS } from '../../schemas/pipeline.js';
import { jsonBytes } from '../../schemas/payload-size.js';
import { MAX_STAGES } from '../../schemas/validate.js';
import { fitTimeline, TIMELINE_BUDGET_BYTES, type TimelineRow } from '../../workflows/timeline.js';

const at = (s: number) => new Date(Date.UTC(2026, 11, 1, 10) + s * 1000).toISOString();
const row = (i: number, seconds: number, cachedFrom?: string): TimelineRow => ({
  // The longest stage id a spec allows (63 characters).
  stage: `s${String(i).padStart(4, '0')}`.padEnd(63, '-'),
  start: at(0),
  end: at(seconds),
  attempts: cachedFrom ? 0 : 1,
  state: cachedFrom ? 'cached' : 'succeeded',
  ...(cachedFrom ? { cachedFrom } : {}),
});

describe('the timeline a report stage receives', () => {
  it('passes a small run as it is', () => {
    const rows = [row(0, 5, 'earlier-run'), row(1, 7)];
    assert.deepEqual(fitTimeline(rows), { rows, omitted: 0 });
  });

  it('leaves out the runs cache hits came from first, when that is enough', () => {
    // 2,000 cache hits naming a run id of 200 characters: ~600 kB, ~200 kB without them.
    const rows = Array.from({ length: 2000 }, (_, i) => row(i, 0, 'r'.repeat(200)));
    assert.ok(jsonBytes(rows) > TIMELINE_BUDGET_BYTES);
    const fit = fitTimeline(rows);
    assert.equal(fit.omitted, 0);
    assert.equal(fit.rows.length, 2000);
    const { cachedFrom: _from, ...rest } = rows[5];
    assert.deepEqual(fit.rows[5], rest);
    assert.equal(rows[5].cachedFrom, 'r'.repeat(200), 'the input is not changed');
  });

  it(`then keeps the longest-running stages that fit: ${MAX_STAGES} stages with the longest ids, all cached from a run with the longest id`, () => {
    // Stage i took i seconds: the kept rows are the last ones, in their order. A stage runs under a run id of at most
    // 200 characters (activities/stage-runner/attempt-dir.ts): 1.95 MB of rows, with the largest sweeps (below) past 2 MiB.
    const rows = Array.from({ length: MAX_STAGES }, (_, i) => row(i, i, 'r'.repeat(200)));
    assert.ok(jsonBytes(rows) > 1.9e6, `${jsonBytes(rows)} bytes`);
    const fit = fitTimeline(rows);
    const bytes = jsonBytes(fit.rows);
    assert.ok(bytes <= TIMELINE_BUDGET_BYTES, `${bytes} bytes`);
    // Each row is {"stage":"<63>","start":"<24>","end":"<24>","attempts":0,"state":"cached"}:
    // 1 + (8 + 65 + 1) + (8 + 26 + 1) + (6 + 26 + 1) + (12 + 1) + 16 + 1 = 173 bytes, and a comma; `[]` around them.
    assert.equal(jsonBytes(fit.rows[0]), 173);
    assert.equal(fit.rows.length, Math.floor((TIMELINE_BUDGET_BYTES - 2) / 174));
    assert.equal(fit.omitted, MAX_STAGES - fit.rows.length);
    assert.deepEqual(
      fit.rows.map((r) => r.stage),
      rows.slice(MAX_STAGES - fit.rows.length).map((r) => r.stage),
    );
    // With the sweeps' trials at their largest (1,024 trials, 256 KiB of parameters and ~100 bytes of the rest
    // each), the report's `with:` stays well under Temporal's 2 MiB.
    const sweeps = MAX_PIPELINE_SWEEP_PARAMS_BYTES + MAX_PIPELINE_SWEEP_TRIALS * 100;
    assert.ok(bytes + sweeps < 1024 * 1024, `${bytes + sweeps} bytes`);
  });
});
