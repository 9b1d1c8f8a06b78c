/** The compare page's loss chart, rendered headless: every series is visible, a once-logged held-out loss included. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { renderSvg } from '../../stages/report/charts.js';
import { compareLossSpec, type ComparedRun } from '../../stages/report/compare.js';

function run(name: string): ComparedRun {
  const curve = Array.from({ length: 10 }, (_, i) => ({ step: i + 1, values: { loss: 5 - i * 0.3 } }));
  return {
    run: name,
    metrics: [
      // pretrain: held-out loss measured once, at the end.
      { stage: 'pretrain', source: 'metrics.jsonl', points: [...curve, { step: 10, values: { eval_loss: 3.1 } }] },
      {
        stage: 'sft',
        source: 'metrics.jsonl',
        points: [
          { step: 1, values: { loss: 2 } },
          { step: 2, values: { loss: 1.5, eval_loss: 1.8 } },
        ],
      },
    ],
    results: {},
    llmJpEval: null,
    mtBench: {} as ComparedRun['mtBench'],
  };
}

describe('compare loss chart', () => {
  it('draws each multi-point series as a line and each one-point series as a point', async () => {
    const svg = await renderSvg(compareLossSpec([run('a'), run('b')]));
    const count = (role: string) => (svg.match(new RegExp(`aria-roledescription="${role}"`, 'g')) ?? []).length;
    // Per run: pretrain loss and sft loss are lines; pretrain eval_loss and sft eval_loss are one point each.
    assert.equal(count('line mark'), 2 * 4, 'one path per (run, stage, metric), one-point paths included');
    assert.equal(count('point'), 2 * 2, 'the once-logged held-out losses are marked');
  });
});
