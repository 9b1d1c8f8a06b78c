/**
 * The tiny course pipeline (pipelines/wiki40b-ja.tiny.yaml) end to end: real
 * Temporal dev server and MinIO (`infra/dev up`), a real CPU worker serving the
 * workflow and a real GPU-queue worker (falling back to the CPU) in this
 * process, the real Python stages. Sizes are cut further with `--set`-style
 * overrides so the whole chain takes a few minutes on 2 cores.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Client } from '@temporalio/client';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { createObjectStore, type ObjectStore } from '../../activities/storage/store.js';
import type { OutputManifest } from '../../activities/types.js';
import { loadSpecFile, renderRunInput } from '../../cli/spec-file.js';
import { PIPELINE_WORKFLOW_TYPE } from '../../schemas/names.js';
import type { PipelineSpec } from '../../schemas/pipeline.js';
import { s3Credentials } from '../../worker/config.js';
import { connectClient } from '../../worker/connection.js';
import type { RunResult } from '../../workflows/pipeline.js';
import { ROOT, stagesPython } from '../helpers/env.js';
import { startTestWorkers, type TestWorkers } from '../helpers/workers.js';

Runtime.install({ logger: new DefaultLogger('WARN') });

const SPEC_FILE = path.join(ROOT, 'pipelines', 'wiki40b-ja.tiny.yaml');
/** The Node program of `uses: report`; the stage is left out (and the fact reported) while it is not built. */
const REPORT_MAIN = path.join(ROOT, 'dist', 'stages', 'report', 'main.js');

/** Smaller than the file's defaults: the test only needs every stage to do real work once. */
const OVERRIDES = {
  vocab_size: 1000,
  pretrain_steps: 60,
  checkpoint_every: 20,
  sft_steps: 6,
  dpo_steps: 4,
  eval_max_samples: 4,
  mt_bench_max_new_tokens: 12,
};

/** Files each stage must have published (a subset of its manifest). */
const EXPECTED_FILES: Record<string, string[]> = {
  preflight: ['report.json'],
  'wiki40b-to-jsonl': ['articles.jsonl', 'stats.json'],
  'train-tokenizer': ['tokenizer.model', 'tokenizer/tokenizer.json'],
  tokenize: ['text_document.bin', 'text_document.idx', 'tokenizer.model'],
  pretrain: ['model/config.json', 'model/model.safetensors'],
  sft: ['model/config.json', 'model/model.safetensors'],
  dpo: ['model/config.json', 'model/model.safetensors'],
  'llm-jp-eval': ['scores.json'],
  'mt-bench': ['answers.jsonl'],
  report: ['report.html'],
};

/**
 * Checkpoint events of a running stage, read from its attempt directory under
 * the worker's TANREN_WORK_DIR (the engine does not keep them after the stage).
 */
function watchCheckpoints(workRoot: string, stage: string): { steps: Set<number>; stop(): void } {
  const steps = new Set<number>();
  const timer = setInterval(() => {
    for (const run of safeReaddir(workRoot)) {
      for (const attempt of safeReaddir(path.join(workRoot, run, stage))) {
        try {
          for (const line of readFileSync(path.join(workRoot, run, stage, attempt, 'events.jsonl'), 'utf8').split('\n')) {
            if (!line.includes('"checkpoint"')) continue;
            try {
              const e = JSON.parse(line) as { event: string; step?: number };
              if (e.event === 'checkpoint' && typeof e.step === 'number') steps.add(e.step);
            } catch {
              // a line being written
            }
          }
        } catch {
          // not there (yet, or any more)
        }
      }
    }
  }, 300);
  return { steps, stop: () => clearInterval(timer) };
}

function safeReaddir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

describe('wiki40b-ja.tiny end to end (Temporal + MinIO + real workers and stages)', () => {
  let workers: TestWorkers;
  let client: Client;
  let storage: ObjectStore;
  let env: TestWorkers['env'];
  let queues: TestWorkers['queues'];
  let workRoot: string;
  let prefix: string;

  before(async () => {
    workers = await startTestWorkers({
      prefix: 'llm',
      python: stagesPython(),
      envOverrides: { TANREN_PROGRESS_INTERVAL_MS: 1000, TANREN_CPU_CONCURRENCY: 2 },
    });
    ({ env, queues, workRoot } = workers);
    prefix = queues.control.replace(/-control$/, '');
    storage = createObjectStore({ endpoint: env.TANREN_S3_ENDPOINT, bucket: env.TANREN_BUCKET, region: env.TANREN_S3_REGION, ...s3Credentials(env) });
    client = await connectClient(env);
  });

  after(async () => {
    await workers?.stop();
    await client?.connection.close();
    if (workRoot) rmSync(workRoot, { recursive: true, force: true });
  });

  it('runs every stage of the course chain and publishes their outputs', { timeout: 15 * 60_000 }, async (t) => {
    const spec = loadSpecFile(SPEC_FILE);
    // The cache on, as a user runs it, and every stage computed: the e2e files before this one trained
    // the same data stages on these services, so their entries go first (nothing else runs beside the
    // e2e group). `--no-cache` would not do: it records nothing, and the next test reuses this run.
    const stale = await storage.list('cache/');
    if (stale.length) await storage.remove(stale.map((o) => o.key));
    const input = renderRunInput(spec, { file: 'pipelines/wiki40b-ja.tiny.yaml', overrides: OVERRIDES, env });
    const rendered = input.spec as PipelineSpec;
    rendered.queues = { cpu: queues.cpu, gpu: queues.gpu };

    assert.ok(existsSync(REPORT_MAIN), `${REPORT_MAIN} is not built (npm run build)`);

    const checkpoints = watchCheckpoints(workRoot, 'pretrain');
    const workflowId = `${rendered.name}-${prefix}`;
    const started = Date.now();
    let result: RunResult;
    try {
      result = (await client.workflow.execute(PIPELINE_WORKFLOW_TYPE, { taskQueue: queues.control, workflowId, args: [input] })) as RunResult;
    } finally {
      checkpoints.stop();
    }
    const wall = (Date.now() - started) / 1000;

    const byId = new Map<string, RunResult['stages'][number]>(result.stages.map((s) => [s.id, s]));
    const timing = result.stages.map((s) => {
      const secs = s.startedAt && s.endedAt ? (Date.parse(s.endedAt) - Date.parse(s.startedAt)) / 1000 : NaN;
      return `${s.id}=${secs.toFixed(1)}s`;
    });
    t.diagnostic(`run ${workflowId}: ${wall.toFixed(0)} s in all; ${timing.join(' ')}`);
    for (const s of result.stages) t.diagnostic(`${s.id}: ${JSON.stringify(s.result)}`);

    // Every stage ran and succeeded, each once.
    assert.equal(result.state, 'succeeded');
    const expectedIds = rendered.stages.map((s) => s.id);
    assert.deepEqual([...byId.keys()].sort(), [...expectedIds].sort());
    for (const s of result.stages) {
      assert.equal(s.state, 'succeeded', `stage ${s.id}: ${s.state} ${s.reason ?? ''}`);
      assert.equal(s.attempt, 1, `stage ${s.id} needed ${s.attempt} attempts`);
    }
    assert.equal(byId.get('preflight')!.queue, 'gpu');
    assert.equal(byId.get('pretrain')!.queue, 'gpu');
    assert.equal(byId.get('tokenize')!.queue, 'cpu');

    // Each manifest is in MinIO and lists the stage's files, which are there with their sizes.
    for (const s of result.stages) {
      assert.ok(s.manifestKey, `stage ${s.id} has no manifest key`);
      assert.equal(s.manifestKey, `runs/${workflowId}/${s.id}/manifest.json`);
      const manifest = JSON.parse(await storage.getText(s.manifestKey)) as OutputManifest;
      assert.equal(manifest.stage, s.id);
      assert.deepEqual(manifest.result, s.result, `stage ${s.id}: manifest result`);
      const listed = new Set(manifest.files.map((f) => f.path));
      for (const f of EXPECTED_FILES[s.id] ?? []) assert.ok(listed.has(f), `stage ${s.id}: ${f} not in its manifest (${[...listed].join(', ')})`);
      for (const f of manifest.files) {
        const stored = await storage.stat(manifest.prefix + f.path);
        assert.ok(stored, `stage ${s.id}: ${manifest.prefix + f.path} is listed but not stored`);
        assert.equal(stored.size, f.size, `stage ${s.id}: size of ${f.path}`);
      }
      const log = await storage.stat(`runs/${workflowId}/${s.id}/logs/attempt-1.log`);
      assert.ok(log, `stage ${s.id}: no log in object storage`);
    }

    const r = (id: string) => byId.get(id)!.result ?? {};
    // Data preparation.
    assert.ok(Number(r('wiki40b-to-jsonl').kept) > 0, 'articles kept');
    assert.ok(Number(r('wiki40b-to-jsonl').read) >= Number(r('wiki40b-to-jsonl').kept));
    assert.equal(r('train-tokenizer').vocab_size, OVERRIDES.vocab_size);
    assert.ok(Number(r('tokenize').tokens) > 10_000, `tokens: ${r('tokenize').tokens}`);
    assert.equal(r('tokenize').documents, r('wiki40b-to-jsonl').kept);

    // Pretraining: the loss falls clearly, and checkpoints were written on the way.
    const pre = r('pretrain') as { first_loss: number; final_loss: number; final_eval_loss: number; steps: number; tokens: number };
    assert.equal(pre.steps, OVERRIDES.pretrain_steps);
    assert.ok(pre.first_loss > pre.final_loss + 1, `pretrain loss ${pre.first_loss} → ${pre.final_loss}`);
    assert.ok(pre.tokens > 0);
    const ckpts = [...checkpoints.steps].sort((a, b) => a - b);
    assert.ok(ckpts.includes(20) && ckpts.includes(40), `checkpoints seen at steps ${ckpts.join(', ') || 'none'}`);

    // Post-training.
    for (const id of ['sft', 'dpo']) {
      const res = r(id) as { final_loss?: unknown; steps?: unknown };
      assert.equal(typeof res.final_loss, 'number', `${id} final_loss: ${JSON.stringify(res)}`);
      assert.ok(Number.isFinite(res.final_loss));
    }
    assert.equal(r('sft').steps, OVERRIDES.sft_steps);
    assert.equal(r('dpo').steps, OVERRIDES.dpo_steps);
    assert.ok(Number(r('sft').final_loss) < Number(r('sft').first_loss), 'sft loss falls');
    // Held-out losses: pretrain's validation loss, sft's on held-out rows, DPO's reward accuracy on held-out pairs.
    assert.ok(Number.isFinite(pre.final_eval_loss) && Number.isFinite(Number(r('sft').final_eval_loss)), 'held-out losses reported');
    assert.equal(r('dpo').eval_split, 'held-out');

    // Evaluation.
    const avg = r('llm-jp-eval').average as number;
    assert.equal(typeof avg, 'number');
    assert.ok(avg >= 0 && avg <= 1, `llm-jp-eval average ${avg}`);
    assert.equal(r('mt-bench').judge, 'not configured');
    assert.ok(Number(r('mt-bench').answered) > 0);

    const report = byId.get('report')!;
    const start = Date.parse(report.startedAt!);
    for (const need of ['llm-jp-eval', 'mt-bench']) assert.ok(start >= Date.parse(byId.get(need)!.endedAt!), `report started before ${need} ended`);
    assert.deepEqual(r('report').loss_stages, ['pretrain', 'sft', 'dpo'], 'the report drew a loss curve per training stage');
    assert.equal(r('report').timeline, true, 'the engine gave the report its stage timeline');

    // `tanren report <run>` rebuilds the page from what the run stored, and keeps it with the run.
    const local = path.join(workRoot, 'report-copy');
    const out = execFileSync(process.execPath, [path.join(ROOT, 'dist', 'cli', 'main.js'), 'report', workflowId, '--json', '-o', local], {
      cwd: ROOT,
      encoding: 'utf8',
    });
    const made = JSON.parse(out) as { html: string; local: string };
    const page = readFileSync(made.local, 'utf8');
    assert.match(page, /<svg/);
    // Every MT-Bench turn and llm-jp-eval sample, and the held-out losses beside the training losses.
    assert.match(page, /MT-Bench per question/);
    assert.match(page, /llm-jp-eval per sample/);
    assert.match(page, /judge: not configured/);
    assert.match(page, /held-out loss/);
    const stored = JSON.parse(await storage.getText(`runs/${workflowId}/_report/manifest.json`)) as OutputManifest;
    assert.equal(made.html, `s3://${storage.bucket}/${stored.prefix}report.html`, 'the command names the stored page');
    assert.ok(await storage.stat(stored.files.find((f) => f.path === 'report.html')!.key!), 'the report is stored with the run');
  });

  it('runs again with the cache on: every stage is a hit except the report, which shows them as cached', { timeout: 10 * 60_000 }, async () => {
    // The first test's run recorded every stage in the cache; a user resubmitting the same spec reuses them all.
    const spec = loadSpecFile(SPEC_FILE);
    const input = renderRunInput(spec, { file: 'pipelines/wiki40b-ja.tiny.yaml', overrides: OVERRIDES, env });
    const rendered = input.spec as PipelineSpec;
    rendered.queues = { cpu: queues.cpu, gpu: queues.gpu };
    const workflowId = `${rendered.name}-${prefix}-again`;
    const result = (await client.workflow.execute(PIPELINE_WORKFLOW_TYPE, { taskQueue: queues.control, workflowId, args: [input] })) as RunResult;
    assert.equal(result.state, 'succeeded');
    for (const s of result.stages) {
      assert.equal(s.state, s.id === 'report' ? 'succeeded' : 'cached', `stage ${s.id}: ${s.state} ${s.cache ?? ''} ${s.reason ?? ''}`);
      if (s.id !== 'report') assert.equal(s.cachedFrom, `${rendered.name}-${prefix}`, `stage ${s.id} reused the first run`);
    }
    assert.equal(result.stages.find((s) => s.id === 'report')!.result!.timeline, true);
    const reportManifest = JSON.parse(await storage.getText(`runs/${workflowId}/report/manifest.json`)) as OutputManifest;
    const html = await storage.getText(reportManifest.files.find((f) => f.path === 'report.html')!.key!);
    assert.match(html, new RegExp(`cached \\(run ${rendered.name}-${prefix}\\)`), 'the timeline says where cached stages came from');
    // Not execFileSync: the workers that answer the status query live in this very process.
    const { stdout: shown } = await promisify(execFile)(process.execPath, [path.join(ROOT, 'dist', 'cli', 'main.js'), 'status', workflowId], {
      cwd: ROOT,
      env: { ...process.env, TEMPORAL_ADDRESS: env.TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE: env.TEMPORAL_NAMESPACE },
    });
    assert.match(shown, new RegExp(`${workflowId}\\s+succeeded`));
    assert.match(shown, /pretrain\s+pretrain\s+gpu\s+cached/);
  });
});
