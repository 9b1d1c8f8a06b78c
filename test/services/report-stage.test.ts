/**
 * The `report` stage kind: the compiled program run as a stage over fake stage
 * outputs (shapes as stages/tanren_stages/llm_jp_eval.py and mt_bench.py write
 * them); `buildReport` on its own is in test/unit/report.test.ts. With Debian's
 * chromium installed, a screenshot of the page is saved to test-artifacts/report.png.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const MAIN = path.join(ROOT, 'dist', 'stages', 'report', 'main.js');
const CHROMIUM = '/usr/bin/chromium';

const tmpRoot = mkdtempSync(path.join(os.tmpdir(), 'tanren-report-'));
after(() => rmSync(tmpRoot, { recursive: true, force: true }));

const REFERENCES = `model,mt_bench,llm_jp_eval,note,source,date
ref-large-instruct,8.0,0.60,"illustrative, ""placeholder""",https://example.org/large-card,2024-09-25
ref-7b-instruct,6.0,0.50,,,
ref-1b-base,2.5,0.30,base model,a printed table,2024-01
ref-no-mt,,0.2,not plotted,,
`;

const writeJsonl = (file: string, rows: unknown[]) => {
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(file, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
};
const writeJson = (file: string, v: unknown) => {
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(file, JSON.stringify(v, null, 2));
};

/** A project dir with data/reference-scores.csv and needed-stage outputs under inputs/. */
function fixture(name: string, opts: { judge: boolean }): string {
  const dir = path.join(tmpRoot, name);
  const inputs = path.join(dir, 'inputs');
  mkdirSync(path.join(dir, 'data'), { recursive: true });
  writeFileSync(path.join(dir, 'data', 'reference-scores.csv'), REFERENCES);
  writeFileSync(path.join(dir, 'refs.csv'), REFERENCES);

  // Training stages: pretrain and sft with metrics.jsonl, dpo with only an events.jsonl (the fallback).
  writeJsonl(path.join(inputs, 'pretrain', 'metrics.jsonl'), [
    ...Array.from({ length: 120 }, (_, i) => ({ step: i + 1, loss: 1 + 7 * Math.exp(-(i + 1) / 40), lr: 0.003, tokens_per_s: 5000 })),
    ...[20, 40, 60, 80, 100, 120].map((step) => ({ step, eval_loss: 1.5 + 7 * Math.exp(-step / 40), eval_ppl: 10 })),
  ]);
  writeJson(path.join(inputs, 'pretrain', 'model', 'config.json'), { hidden_size: 64 });
  writeJsonl(path.join(inputs, 'sft', 'logs', 'metrics.jsonl'), [
    ...Array.from({ length: 12 }, (_, i) => ({ step: i + 1, values: { loss: 3 - 0.1 * i, lr: 0.001 } })),
    { step: 12, eval_loss: 2.2 },
  ]);
  writeJsonl(path.join(inputs, 'dpo', 'events.jsonl'), [
    { event: 'progress', step: 1, total: 8 },
    ...Array.from({ length: 8 }, (_, i) => ({ event: 'metric', step: i + 1, values: { loss: 0.69 - 0.03 * i, reward_accuracy: 0.5 } })),
    { event: 'result', values: { final_loss: 0.48 } },
  ]);

  // llm_jp_eval.py: scores.json = {average, datasets: {name: {samples, metrics, score}}}
  writeJson(path.join(inputs, 'llm-jp-eval', 'scores.json'), {
    average: 0.425,
    datasets: {
      toy_birthplace: { samples: 10, metrics: { exact_match: 0.4, char_f1: 0.55 }, score: 0.475, metric: 'char_f1' },
      toy_regionqa: { samples: 10, metrics: { exact_match: 0.375 }, score: 0.375 },
    },
  });
  writeJsonl(path.join(inputs, 'llm-jp-eval', 'outputs', 'toy_regionqa.jsonl'), [{ input: 'q', expected: 'a', prediction: 'a' }]);
  // llm_jp_eval.py's per-sample lines: 25 samples, so the table has two pages of 20
  writeJsonl(
    path.join(inputs, 'llm-jp-eval', 'outputs', 'toy_birthplace.jsonl'),
    Array.from({ length: 25 }, (_, i) => ({
      index: i,
      input: `文章：山田${i}は京都で生まれた。\n質問：どこで生まれましたか？`,
      prompt: '### 指示\n…',
      raw: `京都${i}\n\n`,
      prediction: i % 2 ? `京都${i}` : `<b>大阪${i}</b>`,
      expected: `京都${i}`,
      scores: { exact_match: i % 2, char_f1: i % 2 ? 1 : 0.25 },
    })),
  );

  // mt_bench.py: answers.jsonl always; scores.json only when a judge is configured.
  writeJsonl(path.join(inputs, 'mt-bench', 'answers.jsonl'), [
    { question_id: 1, category: 'writing', turns: ['a', 'b'], new_tokens: 20, question: ['京都旅行の記事を書いて', '三文で要約して'], reference: null },
    {
      question_id: 2,
      category: 'math',
      turns: ['c', 'd'],
      new_tokens: 22,
      question: ['12 × 13 は？', '7で割った余りは？'],
      reference: ['156です。', '余りは2です。'],
    },
  ]);
  if (opts.judge) {
    writeJsonl(path.join(inputs, 'mt-bench', 'judgments.jsonl'), [
      { question_id: 1, turn: 1, rating: 6, judgment: 'Fine. Rating: [[6]]' },
      { question_id: 1, turn: 2, rating: 6, judgment: 'Rating: [[6]]' },
      { question_id: 2, turn: 1, rating: 3, judgment: 'Wrong product. Rating: [[3]]' },
      { question_id: 2, turn: 2, rating: null, judgment: 'no verdict' },
    ]);
    writeJson(path.join(inputs, 'mt-bench', 'scores.json'), {
      score: 4.75,
      categories: { math: 3.5, writing: 6.0 },
      unparsable: 1,
      judge_calls: 4,
      judge_prompt_tokens: 4000,
      judge_completion_tokens: 600,
      judge_cost: 0.0123,
      judge: { model: 'tiny-judge', note: 'The judge is a tiny test model: its scores say nothing about quality.' },
    });
  }
  return dir;
}

interface StageRun {
  status: number | null;
  stderr: string;
  events: Record<string, any>[];
  out: string;
}

/** Runs the compiled report program as the worker would: protocol env vars, cwd = project dir. */
function runStage(dir: string, params: unknown, env: Record<string, string> = {}): StageRun {
  const out = path.join(dir, `output-${Math.random().toString(36).slice(2, 8)}`);
  mkdirSync(out);
  const paramsFile = path.join(dir, 'params.json');
  const eventsFile = path.join(dir, 'events-out.jsonl');
  writeFileSync(paramsFile, JSON.stringify(params));
  writeFileSync(eventsFile, '');
  const r = spawnSync(process.execPath, [MAIN], {
    cwd: dir,
    encoding: 'utf8',
    timeout: 60_000,
    env: {
      PATH: process.env.PATH ?? '',
      TANREN_RUN_ID: 'tiny-run',
      TANREN_PIPELINE: 'wiki40b-ja.tiny',
      TANREN_STAGE_ID: 'report',
      TANREN_ATTEMPT: '1',
      TANREN_PARAMS: paramsFile,
      TANREN_INPUTS: path.join(dir, 'inputs'),
      TANREN_OUTPUT: out,
      TANREN_EVENTS: eventsFile,
      ...env,
    },
  });
  const events = readFileSync(eventsFile, 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l));
  return { status: r.status, stderr: r.stderr, events, out };
}

const result = (run: StageRun) => run.events.find((e) => e.event === 'result')?.values;

/** No network at view time: nothing but the SVG/XLink namespace names may look like a URL. */
function assertOffline(text: string, what: string) {
  // links to where a reference score was published are followed only on a click: not a load
  text = text.replace(/<a class="src" href="[^"]*">[^<]*<\/a>/g, '');
  const urls = [...text.matchAll(/https?:\/\/[^\s"'<>)]+/g)].map((m) => m[0]);
  const unexpected = urls.filter((u) => u !== 'http://www.w3.org/2000/svg' && u !== 'http://www.w3.org/1999/xlink');
  assert.deepEqual(unexpected, [], `${what} references ${unexpected.join(', ')}`);
  assert.doesNotMatch(text, /@import|@font-face|<script|<link\b|<img\b/i, `${what} must not load anything`);
}

describe('report stage (dist/stages/report/main.js)', () => {
  it('builds report.html and SVGs with the reference models and the run point', () => {
    const dir = fixture('judged', { judge: true });
    const run = runStage(dir, {
      reference_scores: 'refs.csv',
      timeline: [
        { stage: 'pretrain', start: '2025-06-01T10:00:00Z', end: '2025-06-01T10:03:05Z' },
        { stage: 'sft', start: '2025-06-01T10:03:10Z', end: '2025-06-01T10:04:00Z', attempts: 2 },
      ],
    });
    assert.equal(run.status, 0, run.stderr);
    for (const f of ['report.html', 'scatter.svg', 'loss.svg', 'timeline.svg']) assert.ok(existsSync(path.join(run.out, f)), `${f} written`);

    const scatter = readFileSync(path.join(run.out, 'scatter.svg'), 'utf8');
    assert.match(scatter, /^<svg[^>]+xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
    for (const m of ['ref-large-instruct', 'ref-7b-instruct', 'ref-1b-base', 'tiny-run']) assert.ok(scatter.includes(m), `scatter shows ${m}`);
    assert.ok(!scatter.includes('ref-no-mt'), 'a reference without an MT-Bench score is not plotted');

    const loss = readFileSync(path.join(run.out, 'loss.svg'), 'utf8');
    for (const s of ['pretrain', 'sft', 'dpo']) assert.ok(loss.includes(`>${s}<`), `loss chart has a ${s} panel`);

    const html = readFileSync(path.join(run.out, 'report.html'), 'utf8');
    for (const s of ['toy_birthplace', 'toy_regionqa', '0.425', 'writing', 'math', '4.75', 'ref-no-mt', 'Stage timeline', '2 attempts']) {
      assert.ok(html.includes(s), `report.html mentions ${s}`);
    }
    assert.ok(html.includes('<svg'), 'charts are inlined');

    // held-out loss beside the training loss
    const pretrainRow = html.split('\n').find((l) => l.startsWith('<tr><td>pretrain</td>')) ?? '';
    assert.match(
      pretrainRow,
      /<td>1\.3485<\/td><td>5\.7457 <span class="small">\(step 20\)<\/span><\/td><td><strong>1\.8485<\/strong> <span class="small">\(step 120\)/,
      pretrainRow,
    );
    assert.match(html, /held-out loss/);
    assert.ok(loss.includes('eval_loss'), 'the loss chart draws the held-out loss');

    // reference sources
    assert.ok(html.includes('<a class="src" href="https://example.org/large-card">https://example.org/large-card</a>'), 'source link');
    assert.ok(html.includes('<td>2024-09-25</td>') && html.includes('a printed table'));

    // judge note next to the score, and the per-question table
    const cards = html.slice(html.indexOf('<div class="cards">'), html.indexOf('<section id="scatter">'));
    assert.match(cards, /judge: tiny-judge/);
    assert.match(cards, /class="judge-note"><strong>Judge note:<\/strong> The judge is a tiny test model/);
    const mtq = html.slice(html.indexOf('MT-Bench per question'), html.indexOf('llm-jp-eval per sample'));
    for (const s of ['12 × 13 は？', '156です。', '余りは2です。', 'Wrong product. Rating: [[3]]', '<strong>3</strong>', 'unparsable', '三文で要約して']) {
      assert.ok(mtq.includes(s), `per-question table shows ${s}`);
    }
    assert.equal((mtq.match(/<tr><td>/g) ?? []).length, 4, 'one row per answered turn');

    // per-sample table: 26 samples (25 + 1), 20 a page, page buttons without script
    const ljs = html.slice(html.indexOf('llm-jp-eval per sample'), html.indexOf('<section id="timeline">'));
    assert.match(ljs, /26 rows, 20 a page/);
    assert.equal((ljs.match(/<div class="page">/g) ?? []).length, 2);
    assert.ok(ljs.includes('<input type="radio" name="ljs" id="ljs-1" checked>') && ljs.includes('<label for="ljs-2"'));
    assert.ok(ljs.includes('&lt;b&gt;大阪0&lt;/b&gt;'), 'model output escaped');
    assert.match(ljs, /<td>0\.250 <span class="small">char_f1<\/span><\/td>/);
    assert.ok(ljs.includes('文章：山田24は京都で生まれた。') && ljs.includes('toy_regionqa'));
    assert.match(html, /\.pager > input:nth-of-type\(2\):checked ~ div\.page:nth-of-type\(2\) \{ display: block; \}/);
    assert.match(html, /loss curve read from the metric events in events\.jsonl/);
    assertOffline(html, 'report.html');
    for (const f of ['scatter.svg', 'loss.svg', 'timeline.svg']) assertOffline(readFileSync(path.join(run.out, f), 'utf8'), f);

    assert.deepEqual(
      run.events.filter((e) => e.event === 'artifact').map((e) => e.path),
      ['report.html', 'scatter.svg', 'loss.svg', 'timeline.svg'],
    );
    const values = result(run);
    assert.equal(values.report, 'report.html');
    assert.equal(values.points, 4, 'three plotted references and the run');
    assert.equal(values.run_point, true);
    assert.equal(values.mt_bench, 4.75);
    assert.equal(values.llm_jp_eval, 0.425);
    assert.deepEqual(values.loss_stages, ['pretrain', 'sft', 'dpo']);
    assert.equal(values.timeline, true);
  });

  it('without a judge shows the MT-Bench score as missing and invents none', async () => {
    const dir = fixture('no-judge', { judge: false });
    const run = runStage(dir, {}); // default reference_scores: data/reference-scores.csv in the cwd
    assert.equal(run.status, 0, run.stderr);
    const values = result(run);
    assert.equal(values.mt_bench, null);
    assert.equal(values.run_point, false);
    assert.equal(values.points, 3, 'only the references');
    assert.match(values.mt_bench_missing, /judge: not configured/);

    const scatter = readFileSync(path.join(run.out, 'scatter.svg'), 'utf8');
    assert.ok(scatter.includes('ref-large-instruct'), 'default CSV read');
    assert.ok(scatter.includes('tiny-run: llm-jp-eval 0.425, MT-Bench missing'), 'the known score is a labelled line');
    assert.match(scatter, /not scored \(judge: not configured\)/);

    const html = readFileSync(path.join(run.out, 'report.html'), 'utf8');
    assert.match(html, /This run's point is missing/);
    assert.match(html, /judge: not configured/);
    assert.match(html, /2 questions were answered/);
    const mtq = html.slice(html.indexOf('MT-Bench per question'));
    assert.match(mtq, /judge: not configured — the answers are shown, but nothing was graded/);
    assert.ok(mtq.includes('12 × 13 は？') && mtq.includes('not judged'));
    assert.doesNotMatch(html, /Judge note/);
    assert.match(html, /No stage timeline/);
    assert.ok(!existsSync(path.join(run.out, 'timeline.svg')));
    // The run's row says "missing" where the MT-Bench score would be.
    const runRow = html.split('\n').find((l) => l.includes('this run</span>'));
    assert.ok(runRow?.includes('<span class="missing">missing</span>'), runRow);

    await screenshot(path.join(run.out, 'report.html'), 'report-no-judge.png');
  });

  it('exits 2 naming the file when the reference CSV is missing', () => {
    const dir = fixture('missing-csv', { judge: true });
    const run = runStage(dir, { reference_scores: 'data/nope.csv' });
    assert.equal(run.status, 2);
    const lines = run.stderr.trim().split('\n');
    assert.equal(lines.length, 1, run.stderr);
    assert.match(lines[0], /InvalidStageInput: .*reference_scores.*data\/nope\.csv.*does not exist/);
    const err = run.events.at(-1);
    assert.equal(err?.event, 'error');
    assert.equal(err?.type, 'InvalidStageInput');
    assert.ok(!existsSync(path.join(run.out, 'report.html')));
  });

  it('exits 2 on a bad CSV cell, an unknown param and a stage that is not needed', () => {
    const dir = fixture('bad-input', { judge: true });
    writeFileSync(path.join(dir, 'bad.csv'), 'model,mt_bench,llm_jp_eval\nx,high,0.5\n');
    let run = runStage(dir, { reference_scores: 'bad.csv' });
    assert.equal(run.status, 2);
    assert.match(run.stderr, /bad\.csv:2: column 'mt_bench' must be a number or empty, got "high"/);

    run = runStage(dir, { reference_score: 'refs.csv' });
    assert.equal(run.status, 2);
    assert.match(run.stderr, /unknown field\(s\) reference_score/);

    run = runStage(dir, { reference_scores: 'refs.csv', mt_bench: 'judge' });
    assert.equal(run.status, 2);
    assert.match(run.stderr, /field 'mt_bench': stage "judge" is not among this stage's needs/);

    run = runStage(dir, { reference_scores: 'refs.csv', timeline: [{ stage: 'x', start: 'yesterday', end: '2025-01-01T00:00:00Z' }] });
    assert.equal(run.status, 2);
    assert.match(run.stderr, /field 'timeline\[0\]\.start'/);
  });

  it('shows cached, skipped and cancelled stages in the timeline (a re-run that hit the cache)', () => {
    const dir = fixture('cached-timeline', { judge: true });
    const run = runStage(dir, {
      reference_scores: 'refs.csv',
      timeline: [
        { stage: 'pretrain', start: '2025-06-02T09:00:00Z', end: '2025-06-02T09:00:00.040Z', attempts: 0, state: 'cached', cachedFrom: 'demo-first' },
        { stage: 'sft', start: '2025-06-02T09:00:01Z', end: '2025-06-02T09:01:30Z', attempts: 2, state: 'succeeded' },
        { stage: 'dpo', start: '2025-06-02T09:01:31Z', end: '2025-06-02T09:01:40Z', attempts: 1, state: 'cancelled' },
        { stage: 'llm-jp-eval', start: '2025-06-02T09:01:41Z', end: '2025-06-02T09:01:41Z', attempts: 0, state: 'skipped' },
        { stage: 'mt-bench', start: '2025-06-02T09:01:41Z', end: '2025-06-02T09:01:41Z', attempts: 0, state: 'cancelled' },
        { stage: 'tokenize', start: '2025-06-02T09:00:00Z', end: '2025-06-02T09:00:20Z', attempts: 3, state: 'failed' },
      ],
      // As the engine passes it for a run whose timeline passed its budget (workflows/timeline.ts).
      timeline_omitted: 2,
    });
    assert.equal(run.status, 0, run.stderr);
    assert.doesNotMatch(run.stderr, /WARN/, 'vega-lite has nothing to warn about');
    assert.equal(result(run).timeline, true);
    const html = readFileSync(path.join(run.out, 'report.html'), 'utf8');
    const timeline = html.slice(html.indexOf('<section id="timeline">'));
    const row = (stage: string) => timeline.split('\n').find((l) => l.startsWith(`<tr><td>${stage}</td>`)) ?? '';
    assert.ok(html.includes('cached (run demo-first)'), 'a cached stage names the run it reused');
    assert.ok(row('pretrain').endsWith('<td>cached (run demo-first)</td></tr>'), row('pretrain'));
    assert.ok(row('sft').endsWith('<td>2 attempts</td></tr>'), row('sft'));
    assert.ok(row('dpo').endsWith('<td>cancelled (attempt 1)</td></tr>'), row('dpo'));
    assert.ok(row('llm-jp-eval').endsWith('<td>—</td><td>skipped</td></tr>'), `a skipped stage has no duration: ${row('llm-jp-eval')}`);
    assert.ok(row('mt-bench').endsWith('<td>0ms</td><td>cancelled</td></tr>'), row('mt-bench'));
    assert.ok(row('tokenize').endsWith('<td>failed after 3 attempts</td></tr>'), row('tokenize'));
    assert.match(timeline, /2 more stages, the shortest-running, not shown/);

    const svg = readFileSync(path.join(run.out, 'timeline.svg'), 'utf8');
    assert.doesNotMatch(svg, /NaN|Infinity/, 'zero-length rows keep the chart finite');
    for (const s of [
      '40ms · cached (run demo-first)',
      '1m29s · 2 attempts',
      'skipped',
      '9.0s · cancelled (attempt 1)',
      '0ms · cancelled',
      '20.0s · failed after 3 attempts',
    ]) {
      assert.ok(svg.includes(`>${s}<`), `timeline.svg labels a bar "${s}"`);
    }
    for (const state of ['cached', 'succeeded', 'cancelled', 'skipped', 'failed']) assert.ok(svg.includes(`>${state}<`), `legend lists ${state}`);
    assertOffline(html, 'report.html');
  });

  it('accepts the old timeline shape and rejects a bad state or a negative attempt count', () => {
    const dir = fixture('timeline-params', { judge: true });
    // What the engine sent before a cached stage had a state of its own: attempts 0, no cachedFrom.
    let run = runStage(dir, {
      reference_scores: 'refs.csv',
      timeline: [
        { stage: 'pretrain', start: '2025-06-01T10:00:00Z', end: '2025-06-01T10:00:01Z', attempts: 0, state: 'cached' },
        { stage: 'sft', start: '2025-06-01T10:00:02Z', end: '2025-06-01T10:00:03Z', attempts: 1, state: 'succeeded' },
        { stage: 'dpo', start: '2025-06-01T10:00:04Z', end: '2025-06-01T10:00:05Z' },
      ],
    });
    assert.equal(run.status, 0, run.stderr);
    const html = readFileSync(path.join(run.out, 'report.html'), 'utf8');
    assert.ok(html.includes('<td>cached</td></tr>'), 'a cache hit without cachedFrom still says cached');

    // A skipped stage's times carry no duration: an end before its start is not an error.
    run = runStage(dir, {
      reference_scores: 'refs.csv',
      timeline: [{ stage: 'dpo', start: '2025-06-01T10:00:05Z', end: '2025-06-01T10:00:04Z', attempts: 0, state: 'skipped' }],
    });
    assert.equal(run.status, 0, run.stderr);
    assert.doesNotMatch(readFileSync(path.join(run.out, 'timeline.svg'), 'utf8'), /NaN|Infinity/, 'a lone zero-length row still has an axis');
    assert.doesNotMatch(run.stderr, /WARN/, 'vega-lite has nothing to warn about');

    const bad: [Record<string, unknown>, RegExp][] = [
      [{ attempts: -1 }, /field 'timeline\[0\]\.attempts'/],
      [{ state: 'done' }, /field 'timeline\[0\]\.state'.*succeeded.*cached/],
      [{ end: '2025-06-01T09:00:00Z', state: 'cancelled' }, /field 'timeline\[0\]\.end': end is before start/],
      [{ cachedFrom: '' }, /field 'timeline\[0\]\.cachedFrom'/],
    ];
    for (const [fields, message] of bad) {
      run = runStage(dir, {
        reference_scores: 'refs.csv',
        timeline: [{ stage: 'x', start: '2025-06-01T10:00:00Z', end: '2025-06-01T10:00:01Z', attempts: 1, ...fields }],
      });
      assert.equal(run.status, 2, JSON.stringify(fields));
      assert.match(run.stderr, message);
    }
  });

  it('renders a full report for the screenshot', async () => {
    const dir = fixture('screenshot', { judge: true });
    const run = runStage(dir, {
      reference_scores: 'refs.csv',
      timeline: [
        { stage: 'pretrain', start: '2025-06-01T10:00:00Z', end: '2025-06-01T10:03:05Z' },
        { stage: 'sft', start: '2025-06-01T10:03:10Z', end: '2025-06-01T10:04:00Z', attempts: 2 },
        { stage: 'dpo', start: '2025-06-01T10:04:05Z', end: '2025-06-01T10:04:50Z' },
        { stage: 'llm-jp-eval', start: '2025-06-01T10:04:55Z', end: '2025-06-01T10:05:40Z' },
        { stage: 'mt-bench', start: '2025-06-01T10:04:55Z', end: '2025-06-01T10:06:30Z' },
      ],
    });
    assert.equal(run.status, 0, run.stderr);
    await screenshot(path.join(run.out, 'report.html'), 'report.png');
  });
});

/** Screenshots the page with Debian's chromium (infra/test installs it with infra/install-browser) into test-artifacts/. */
async function screenshot(htmlFile: string, name: string): Promise<void> {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: infra/install-browser installs it`);
  const dir = path.join(ROOT, 'test-artifacts');
  mkdirSync(dir, { recursive: true });
  const png = path.join(dir, name);
  rmSync(png, { force: true });
  const r = spawnSync(CHROMIUM, ['--headless', '--no-sandbox', '--disable-gpu', `--screenshot=${png}`, '--window-size=1200,2000', `file://${htmlFile}`], {
    encoding: 'utf8',
    timeout: 90_000,
  });
  assert.ok(existsSync(png), `chromium wrote no screenshot (exit ${r.status}): ${r.stderr.slice(-500)}`);
  const sig = readFileSync(png).subarray(0, 8);
  assert.deepEqual([...sig], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], 'a PNG file');
}
