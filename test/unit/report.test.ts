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

  it('says how many stages the engine left out of the timeline', async () => {
    const row = { stage: 'a', start: '2025-06-01T10:00:00Z', end: '2025-06-01T10:00:05Z', attempts: 1, state: 'succeeded' as const };
    const r = await buildReport({ ...base, timeline: [row], timelineOmitted: 4999 });
    assert.match(r.html, /4999 more stages, the shortest-running, not shown/);
    assert.doesNotMatch((await buildReport({ ...base, timeline: [row] })).html, /more stages?, the shortest-running/);
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

describe('data/reference-scores.csv: the LLM-jp paper rows (arXiv 2407.03963v2)', () => {
  // Category columns as printed in the paper. Table 10 (llm-jp-eval v1.3.0): EL FA HE MC MR MT NLI QA RC,
  // "AVR is the average score across all categories". Table 12 (Japanese MT-Bench, gpt-4-0613): coding
  // extraction humanities math reasoning roleplay stem writing, then "Avg.". Derivation checked here:
  // each average is the mean of its row, rounded as printed (3 decimals, 2 decimals); e.g. v2.0-M:
  // (0.350+0.196+0.250+0.186+0.216+0.785+0.316+0.421+0.759)/9 = 3.479/9 = 0.3866 → 0.387, and
  // (1.35+2.90+6.05+1.15+1.70+5.20+4.40+5.55)/8 = 28.30/8 = 3.5375 → 3.54.
  const table10: Record<string, number[]> = {
    'v1.1-I': [0.367, 0.155, 0.237, 0.221, 0.042, 0.759, 0.435, 0.361, 0.708],
    'v1.1-J': [0.387, 0.159, 0.241, 0.258, 0.044, 0.786, 0.48, 0.471, 0.726],
    'v1.1-K': [0.351, 0.151, 0.236, 0.225, 0.042, 0.774, 0.359, 0.33, 0.678],
    'v2.0-M': [0.35, 0.196, 0.25, 0.186, 0.216, 0.785, 0.316, 0.421, 0.759],
    'v2.0-N': [0.355, 0.192, 0.246, 0.193, 0.208, 0.782, 0.313, 0.409, 0.751],
    'v2.0-O': [0.348, 0.19, 0.248, 0.215, 0.21, 0.783, 0.32, 0.429, 0.75],
  };
  const table12: Record<string, number[]> = {
    'v1.1-I': [1.25, 2.15, 4.3, 1.0, 3.05, 4.45, 3.25, 4.95],
    'v1.1-J': [1.3, 3.3, 2.2, 1.5, 2.05, 4.5, 2.4, 4.3],
    'v1.1-K': [1.35, 2.75, 2.95, 1.15, 2.5, 5.4, 4.35, 4.25],
    'v2.0-M': [1.35, 2.9, 6.05, 1.15, 1.7, 5.2, 4.4, 5.55],
    'v2.0-N': [1.9, 2.4, 5.4, 1.1, 2.8, 5.45, 4.8, 4.5],
    'v2.0-O': [1.8, 3.6, 6.15, 1.05, 2.25, 5.2, 5.15, 4.2],
  };
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

  it('each row is its categories’ mean as the paper prints it, and is plotted', async () => {
    const refs = await readReferenceScores('data/reference-scores.csv', { cwd: ROOT, paramsSource: 'test' });
    for (const id of Object.keys(table10)) {
      const r = refs.find((x) => x.model === `LLM-jp ${id}`);
      assert.ok(r, `LLM-jp ${id} is in the file`);
      assert.equal(r.source, 'https://arxiv.org/abs/2407.03963v2');
      assert.ok(r.llmJpEval !== null && r.mtBench !== null, `${id} has both scores`);
      // Within the printed rounding: a category mean may round either way of the printed average by half a unit.
      assert.ok(Math.abs(mean(table10[id]) - r.llmJpEval) <= 0.0005 + 1e-9, `${id}: llm-jp-eval ${r.llmJpEval} vs mean ${mean(table10[id])}`);
      assert.ok(Math.abs(mean(table12[id]) - r.mtBench) <= 0.005 + 1e-9, `${id}: MT-Bench ${r.mtBench} vs mean ${mean(table12[id])}`);
    }
    assert.ok(refs.filter((r) => r.mtBench !== null && r.llmJpEval !== null).length >= 6);
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
