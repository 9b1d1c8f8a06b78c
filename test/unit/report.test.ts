/** `buildReport` and the report's inputs on their own, in process (the stage program: test/services/report-stage.test.ts). */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { buildReport, escapeHtml, namespaceSvgIds } from '../../stages/report/build-report.js';
import { parseCsv } from '../../stages/report/csv.js';
import { readReferenceScores } from '../../stages/report/load-inputs.js';
import type { ReportInputs } from '../../stages/report/types.js';
import { ROOT } from '../helpers/env.js';

describe('buildReport', () => {
  const base: ReportInputs = {
    title: 'r',
    modelName: '<script>alert(1)</script>',
    generatedAt: '2025-01-01T00:00:00.000Z',
    references: [{ model: 'A & B <x>', mtBench: 5, llmJpEval: 0.5 }],
    referenceSource: 'refs.csv',
    mtBench: { status: 'absent' },
    llmJpEval: null,
    metrics: [],
    timeline: null,
    notes: [],
  };

  it('escapes names and says what is missing', async () => {
    const r = await buildReport(base);
    assert.ok(!r.html.includes('<script>'), 'model name escaped in HTML');
    assert.ok(r.html.includes('&lt;script&gt;alert(1)&lt;/script&gt;'));
    assert.ok(!r.svgs['scatter.svg'].includes('<x>'), 'reference name escaped in SVG');
    assert.deepEqual(Object.keys(r.svgs), ['scatter.svg']);
    assert.equal(r.summary.points, 1);
    assert.equal(r.summary.runPoint, false);
    assert.match(r.html, /No loss history found/);
    assert.match(r.html, /no MT-Bench stage among this stage&#39;s needs/);
  });

  it('is deterministic for the same inputs', async () => {
    const a = await buildReport(base);
    const b = await buildReport(base);
    // vega numbers clip paths per process; the page is otherwise identical.
    const strip = (s: string) => s.replace(/clip\d+/g, 'clip');
    assert.equal(strip(a.html), strip(b.html));
  });

  it('thins long loss curves', async () => {
    const points = Array.from({ length: 20_000 }, (_, i) => ({ step: i, values: { loss: 10 / (i + 1) } }));
    const r = await buildReport({ ...base, metrics: [{ stage: 'pretrain', source: 'metrics.jsonl', points }] });
    assert.ok(r.svgs['loss.svg'].length < 100_000, `loss.svg is ${r.svgs['loss.svg'].length} bytes`);
    assert.match(r.html, /19999/);
  });

  it('draws a timeline whose rows all took no time', async () => {
    const at = '2025-06-01T10:00:00Z';
    const r = await buildReport({
      ...base,
      timeline: [
        { stage: 'a', start: at, end: at, attempts: 0, state: 'skipped' },
        { stage: 'b', start: at, end: at, attempts: 0, state: 'cached', cachedFrom: 'run-<1>' },
      ],
    });
    const svg = r.svgs['timeline.svg'];
    assert.ok(svg, 'timeline.svg rendered');
    assert.doesNotMatch(svg, /NaN|Infinity/);
    assert.equal((svg.match(/role-mark/g) ?? []).length > 0, true);
    assert.ok(r.html.includes('cached (run run-&lt;1&gt;)'), 'cachedFrom is escaped in the table');
    assert.ok(!r.html.includes('run-<1>'));
    assert.equal(r.summary.timeline, true);
  });

  it("has a sweep section: every trial's params, rung, metric and state, and the chosen one with its reason", async () => {
    const r = await buildReport({
      ...base,
      sweeps: [
        {
          stage: 'pretrain',
          scheduler: 'asha',
          metric: 'loss',
          goal: 'min',
          best: 'pretrain.trial-01',
          reason: 'lowest loss <4.2>',
          trials: [
            { trial: 'pretrain.trial-00', params: { lr: 0.000123456, warmup_steps: 2 }, rung: 1, step: 3, metric: 6.5, state: 'stopped-early' },
            { trial: 'pretrain.trial-01', params: { lr: 0.002, warmup_steps: 0 }, rung: 2, step: 6, metric: 4.2, state: 'best' },
          ],
        },
      ],
    });
    assert.match(r.html, /<h2>Sweep: pretrain<\/h2>/);
    assert.match(r.html, /Chosen: <strong>pretrain\.trial-01<\/strong> — lowest loss &lt;4\.2&gt;/);
    assert.match(r.html, /<th>trial<\/th><th>lr<\/th><th>warmup_steps<\/th><th>rung<\/th><th>step<\/th><th>loss<\/th><th>state<\/th>/);
    assert.match(r.html, /<td>trial-00<\/td><td>0\.0001235<\/td><td>2<\/td><td>1<\/td><td>3<\/td><td>6\.5<\/td><td>stopped-early<\/td>/);
    assert.match(r.html, /<td>trial-01<\/td>.*<strong>best<\/strong>/);
    const none = await buildReport(base);
    assert.doesNotMatch(none.html, /Sweep:/);
  });

  it('keeps inlined SVG ids apart', () => {
    const svg = '<svg><clipPath id="clip1"></clipPath><g clip-path="url(#clip1)"></g></svg>';
    assert.equal(namespaceSvgIds(svg, 'loss'), '<svg><clipPath id="loss-clip1"></clipPath><g clip-path="url(#loss-clip1)"></g></svg>');
    assert.equal(escapeHtml(`"'&`), '&quot;&#39;&amp;');
  });
});

describe('data/reference-scores.csv', () => {
  it('holds published figures only: every row names its source, and the page says how few can be plotted', async () => {
    const refs = await readReferenceScores('data/reference-scores.csv', { cwd: ROOT, paramsSource: 'test' });
    assert.ok(refs.length >= 1);
    for (const r of refs) {
      assert.match(r.source ?? '', /^https:\/\//, `${r.model} names the page its figures come from`);
      assert.ok(r.date, `${r.model} has a date column`);
      assert.ok(r.mtBench !== null || r.llmJpEval !== null, `${r.model} has a published score`);
      assert.doesNotMatch(`${r.model} ${r.note}`, /placeholder|illustrative/i);
    }
    const plotted = refs.filter((r) => r.mtBench !== null && r.llmJpEval !== null).length;
    const { html, summary } = await buildReport({
      title: 'r',
      modelName: 'run',
      generatedAt: '2025-01-01T00:00:00.000Z',
      references: refs,
      referenceSource: 'data/reference-scores.csv',
      mtBench: { status: 'absent' },
      llmJpEval: null,
      metrics: [],
      timeline: null,
      notes: [],
    });
    assert.equal(summary.points, plotted);
    if (plotted < 3) assert.match(html, new RegExp(`Only ${plotted} reference models? ha(s|ve) both an MT-Bench and an llm-jp-eval score`));
    for (const r of refs) assert.ok(html.includes(`href="${r.source}"`), `the table links ${r.source}`);
  });
});

describe('parseCsv', () => {
  it('reads quotes, doubled quotes, CRLF, a BOM and skips blank lines', () => {
    const rows = parseCsv('\ufeffmodel,note\r\n"a,b","say ""hi"""\r\n\r\nc,"multi\nline"\n');
    assert.deepEqual(rows, [
      { line: 1, fields: ['model', 'note'] },
      { line: 2, fields: ['a,b', 'say "hi"'] },
      { line: 4, fields: ['c', 'multi\nline'] },
    ]);
  });
});
