/**
 * `tanren compare`: two real runs of the tiny pipeline's chain up to
 * pretraining (real Temporal, MinIO, workers and torch; the second run reuses
 * the first's data stages from the cache) that differ only in the learning
 * rate. The terminal table shows the lr difference; the HTML page, opened in
 * Debian's chromium (playwright-core), shows both loss curves (screenshot in
 * test-artifacts/compare.png). The pure comparison is also checked on its own
 * with eval scores, for the scatter.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import type { Client } from '@temporalio/client';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { chromium } from 'playwright-core';
import { buildComparePage, compareRuns, type ComparedRun } from '../../stages/report/compare.js';
import { loadSpecFile, renderRunInput } from '../../cli/spec-file.js';
import { PIPELINE_WORKFLOW_TYPE } from '../../schemas/names.js';
import type { PipelineSpec } from '../../schemas/pipeline.js';
import { connectClient } from '../../worker/connection.js';
import { ROOT, stagesPython, unique } from '../helpers/env.js';
import { startTestWorkers, type TestWorkers } from '../helpers/workers.js';

Runtime.install({ logger: new DefaultLogger('WARN') });

const CLI = path.join(ROOT, 'dist', 'cli', 'main.js');
const CHROMIUM = '/usr/bin/chromium';
const ARTIFACTS = path.join(ROOT, 'test-artifacts');
const CHAIN = ['preflight', 'wiki40b-to-jsonl', 'train-tokenizer', 'tokenize', 'pretrain'];
const OVERRIDES = { vocab_size: 1000, pretrain_steps: 20, checkpoint_every: 20 };

/** The SVG's line marks (one path per series) and their stroke colours. */
function lineSeries(svg: string): string[] {
  return [...svg.matchAll(/<path[^>]*aria-roledescription="line mark"[^>]*>/g)].map((m) => /stroke="([^"]+)"/.exec(m[0])?.[1] ?? '');
}

describe('tanren compare', () => {
  let workers: TestWorkers;
  let client: Client;
  const runs: string[] = [];

  before(async () => {
    workers = await startTestWorkers({ prefix: 'cmp', python: stagesPython(), envOverrides: { TANREN_CPU_CONCURRENCY: 2 } });
    client = await connectClient(workers.env);
  });

  after(async () => {
    await workers?.stop();
    await client?.connection.close();
  });

  it('shows the lr difference in the table and both loss curves on the page', { timeout: 10 * 60_000 }, async () => {
    const spec = loadSpecFile(path.join(ROOT, 'pipelines', 'wiki40b-ja.tiny.yaml'));
    spec.stages = spec.stages.filter((s) => CHAIN.includes(s.id));
    for (const lr of [0.003, 0.02]) {
      const input = renderRunInput(spec, { file: 'pipelines/wiki40b-ja.tiny.yaml', overrides: { ...OVERRIDES, pretrain_lr: lr }, env: workers.env });
      (input.spec as PipelineSpec).queues = { cpu: workers.queues.cpu, gpu: workers.queues.gpu };
      const workflowId = unique(`cmp-lr-${lr}`).replace(/\./g, '_');
      await client.workflow.execute(PIPELINE_WORKFLOW_TYPE, { taskQueue: workers.queues.control, workflowId, args: [input] });
      runs.push(workflowId);
    }

    const tanren = (...args: string[]) => promisify(execFile)(process.execPath, [CLI, ...args], { cwd: ROOT, env: { ...process.env, NO_COLOR: '1' } });
    mkdirSync(ARTIFACTS, { recursive: true });
    const html = path.join(ARTIFACTS, 'compare.html');
    const { stdout } = await tanren('compare', runs[0], runs[1], '--out', html);
    const line = (name: string) => stdout.split('\n').find((l) => l.trimStart().startsWith(`${name} `));
    assert.match(line('params.pretrain_lr') ?? '', /0\.003\s+0\.02\b/, stdout);
    assert.match(line('pretrain.lr') ?? '', /0\.003\s+0\.02\b/, stdout);
    assert.equal(line('params.vocab_size'), undefined, 'only differing params are listed');
    assert.match(line('pretrain loss') ?? '', /^\s*pretrain loss\s+\d/, stdout);
    assert.ok(stdout.includes(`HTML: ${html}`));

    const json = JSON.parse((await tanren('compare', runs[0], runs[1], '--out', html, '--json')).stdout) as ReturnType<typeof compareRuns>;
    assert.deepEqual(json.params.find((p) => p.name === 'params.pretrain_lr')?.values, [0.003, 0.02]);
    const finalLoss = json.finals.find((f) => f.name === 'pretrain loss')!.values;
    assert.ok(finalLoss.every((v) => typeof v === 'number') && finalLoss[0] !== finalLoss[1], `final losses ${finalLoss}`);

    const page = readFileSync(html, 'utf8');
    const lossSvg = /<figure id="fig-loss">([\s\S]*?)<\/figure>/.exec(page)?.[1] ?? '';
    const strokes = lineSeries(lossSvg);
    // pretrain reports its training loss and its held-out eval_loss (dashed): two series per run.
    assert.equal(strokes.length, 4, 'training and held-out loss of each run in the pretrain panel');
    assert.equal(new Set(strokes).size, 2, 'each run has its own colour');
    for (const r of runs) assert.ok(lossSvg.includes(r), `the legend names ${r}`);

    assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: run infra/install-browser`);
    const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox', '--disable-gpu'] });
    try {
      const tab = await browser.newPage({ viewport: { width: 1200, height: 900 } });
      await tab.goto(`file://${html}`);
      const lines = tab.locator('#fig-loss svg path[aria-roledescription="line mark"]');
      assert.equal(await lines.count(), 4);
      // The training curves (solid); a held-out loss measured once is a one-point path, which has no area to be visible.
      const solid = tab.locator('#fig-loss svg path[aria-roledescription="line mark"][stroke-dasharray="1,0"]');
      assert.equal(await solid.count(), 2);
      for (let i = 0; i < 2; i++) assert.ok(await solid.nth(i).isVisible(), `training loss of run ${i + 1} is drawn`);
      assert.equal(await tab.locator('#params-table tbody tr').filter({ hasText: 'params.pretrain_lr' }).count(), 1);
      await tab.screenshot({ path: path.join(ARTIFACTS, 'compare.png'), fullPage: true });
    } finally {
      await browser.close();
    }
  });

  it('puts every run with both eval scores in the scatter and names the one without', async () => {
    const run = (name: string, llm: number | null, mt: number | null): ComparedRun => ({
      run: name,
      spec: { name: 'p', params: { lr: name === 'a' ? 0.001 : 0.002 } },
      metrics: [],
      results: {},
      llmJpEval: llm === null ? null : { stage: 'llm-jp-eval', average: llm, datasets: {} },
      mtBench: mt === null ? { status: 'not-configured', stage: 'mt-bench' } : { status: 'scored', stage: 'mt-bench', score: mt, categories: {} },
    });
    const runs3 = [run('a', 0.41, 6.5), run('b', 0.37, 5.25), run('c', 0.3, null)];
    const c = compareRuns(runs3);
    assert.deepEqual(c.evals, { llmJpEval: [0.41, 0.37, 0.3], mtBench: [6.5, 5.25, undefined] });
    const page = await buildComparePage(runs3, [{ model: 'ref-7b', mtBench: 6, llmJpEval: 0.5 }], { generatedAt: 'now', referenceSource: 'refs.csv' });
    const scatter = page.svgs['scatter.svg'];
    const points = [...scatter.matchAll(/<path aria-label="([^"]*)"[^>]*aria-roledescription="point"/g)].map((m) => m[1]);
    assert.deepEqual(
      points.filter((l) => l.includes('run:')),
      [
        'MT-Bench (judge score, 1–10): 6.5; llm-jp-eval (average, 0–1): 0.41; run: a',
        'MT-Bench (judge score, 1–10): 5.25; llm-jp-eval (average, 0–1): 0.37; run: b',
      ],
    );
    assert.equal(points.length, 3, 'the reference and both runs with two scores');
    assert.match(scatter, /not plotted \(a score is missing\): c/);
    assert.equal(page.svgs['loss.svg'], undefined, 'no loss chart without loss histories');
    assert.match(page.html, /<table id="evals-table">/);
  });
});
