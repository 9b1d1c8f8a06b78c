/**
 * `tanren serve` and the MT-Bench judge end to end, and the secrets audit of
 * issue 10, on one run of a cut-down tiny pipeline (real Temporal dev server,
 * MinIO, workers in this process, real Python stages):
 *
 * 1. run 1: preflight → … → pretrain → sft (+ judge-sft: the same kind trained
 *    on data/sft/judge.jsonl, so the tiny model answers in the judge's rating
 *    format) → llm-jp-eval (two samples a dataset, four new tokens) and
 *    mt-bench (no judge: "not configured") → report.
 * 2. `tanren serve <run 1> judge-sft` on a port the workers allow
 *    (TANREN_JUDGE_BASE_URLS); the OpenAI API checked by hand.
 * 3. run 2: the same spec with the judge pointed at the served model, its key
 *    in TANREN_JUDGE_API_KEY (a canary), `judge_note: tiny`; every stage but
 *    mt-bench and the report is a cache hit; the report plots the run's point
 *    (its MT-Bench score × its llm-jp-eval average) on the scatter; plus a
 *    `run:` stage that dumps its environment into an output file.
 * 4. run 3: a stage that prints its environment (judge key included: it names
 *    it) to stderr and fails.
 * 5. The audit: no canary (the workers' real S3 secret, the judge key, an AWS
 *    and a TANREN_S3_* variable of the worker) in any workflow history, the
 *    workers' logs, any object in the bucket, or the report.
 */
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import type { Client } from '@temporalio/client';
import { DefaultLogger, Runtime, type LogEntry } from '@temporalio/worker';
import { pino } from 'pino';
import { createMinioClient } from '../../activities/storage/client.js';
import { manifestFiles } from '../../activities/storage/keys.js';
import { createObjectStore, type ObjectStore } from '../../activities/storage/store.js';
import type { OutputManifest } from '../../activities/types.js';
import { loadSpecFile, renderRunInput } from '../../cli/spec-file.js';
import { PIPELINE_WORKFLOW_TYPE } from '../../schemas/names.js';
import type { PipelineSpec } from '../../schemas/pipeline.js';
import { objectStoreConfig, s3Credentials } from '../../worker/config.js';
import { connectClient } from '../../worker/connection.js';
import type { RunResult } from '../../workflows/pipeline.js';
import { ROOT, stagesPython } from '../helpers/env.js';
import { startTestWorkers, type TestWorkers } from '../helpers/workers.js';

const exec = promisify(execFile);
const CLI = path.join(ROOT, 'dist', 'cli', 'main.js');
const SPEC_FILE = path.join(ROOT, 'pipelines', 'wiki40b-ja.tiny.yaml');
const TINY_NOTE = "the judge is the pipeline's own tiny model: the protocol is real, the scores are not meaningful";

// Everything the workers log, Temporal's runtime (activity logs: stage output lines) and pino alike.
const runtimeLogs: LogEntry[] = [];
Runtime.install({ logger: new DefaultLogger('DEBUG', (entry) => runtimeLogs.push(entry)) });
const workerLogs: string[] = [];

const rand = () => Math.random().toString(36).slice(2, 12);
const CANARY = {
  judge: `canary-judge-${rand()}${rand()}`,
  aws: `canary-aws-${rand()}${rand()}`,
  s3var: `canary-s3var-${rand()}${rand()}`,
};

/** As in test/e2e/llm-pipeline.test.ts, cut further: the model only has to exist and answer. */
const OVERRIDES = { vocab_size: 1000, pretrain_steps: 60, checkpoint_every: 20, sft_steps: 6, mt_bench_max_new_tokens: 12 };
const KEEP = new Set(['preflight', 'wiki40b-to-jsonl', 'train-tokenizer', 'tokenize', 'pretrain', 'sft', 'llm-jp-eval', 'mt-bench', 'report']);
/** llm-jp-eval at its smallest that still scores every category of data/jaster: a shot, two samples, four tokens. */
const LLM_JP_EVAL_CUT = { max_samples: 2, max_new_tokens: 4, num_few_shots: 1 };

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

/** The cut-down tiny pipeline: no DPO, evaluation of the sft model, a cut llm-jp-eval; a judge-sft stage; `extra` stages appended. */
function tinySpec(extra: PipelineSpec['stages'] = []): PipelineSpec {
  const spec = loadSpecFile(SPEC_FILE);
  const stages = spec.stages.filter((s) => KEEP.has(s.id));
  const sft = stages.find((s) => s.id === 'sft')!;
  const judgeSft = {
    ...sft,
    id: 'judge-sft',
    with: { data: 'data/sft/judge.jsonl', max_steps: 40, lr: 0.01, micro_batch_size: 4, max_length: 192, log_every: 5, threads: '${{ params.threads }}' },
  };
  for (const s of stages) {
    if (s.id === 'mt-bench') s.needs = ['sft'];
    if (s.id === 'llm-jp-eval') {
      s.needs = ['sft'];
      s.with = { ...s.with, ...LLM_JP_EVAL_CUT };
    }
    if (s.id === 'report') s.needs = ['pretrain', 'sft', 'llm-jp-eval', 'mt-bench'];
  }
  return { ...spec, stages: [...stages, judgeSft, ...extra] as PipelineSpec['stages'] };
}

/** A stage's wall time as "12.3 s" (start to end of its last attempt), for the diagnostics. */
function stageSeconds(s: RunResult['stages'][number]): string {
  return s.startedAt && s.endedAt ? `${((Date.parse(s.endedAt) - Date.parse(s.startedAt)) / 1000).toFixed(1)} s` : '';
}

/** JSON of a workflow history with every payload's bytes as text, so a value inside one is found by a search. */
function historyText(history: unknown): string {
  return JSON.stringify(history, (_k, v: unknown) => {
    if (v instanceof Uint8Array) return Buffer.from(v).toString('utf8');
    if (typeof v === 'bigint') return v.toString();
    return v;
  });
}

/** The object key of a stage's output file, from the stage's manifest (the only pointer to its attempt's prefix). */
async function outputKey(storage: ObjectStore, run: string, stage: string, file: string): Promise<string> {
  const manifest = JSON.parse(await storage.getText(`runs/${run}/${stage}/manifest.json`)) as OutputManifest;
  const entry = manifestFiles(manifest).find((f) => f.path === file);
  assert.ok(entry, `stage ${stage} of run ${run} has no output ${file}`);
  return entry.key;
}

describe('tanren serve, the MT-Bench judge on it, and the secrets audit (one tiny run)', () => {
  let workers: TestWorkers;
  let client: Client;
  let storage: ObjectStore;
  let env: TestWorkers['env'];
  let queues: TestWorkers['queues'];
  let prefix: string;
  let python: string;
  let servePort: number;
  let serveProc: ChildProcess | undefined;
  let serveStderr = '';
  let baseUrl = '';
  let s3Secret: string;
  const runs: Record<string, string> = {};
  const results: Record<string, RunResult> = {};

  const submit = async (key: string, spec: PipelineSpec, overrides: Record<string, string | number | boolean>) => {
    const input = renderRunInput(spec, { file: 'pipelines/wiki40b-ja.tiny.yaml', overrides, env });
    const rendered = input.spec as PipelineSpec;
    rendered.queues = { cpu: queues.cpu, gpu: queues.gpu };
    const workflowId = `${rendered.name}-${prefix}-${key}`;
    runs[key] = workflowId;
    const handle = await client.workflow.start(PIPELINE_WORKFLOW_TYPE, { taskQueue: queues.control, workflowId, args: [input] });
    return handle.result().then(
      (r) => (results[key] = r as RunResult),
      (err: unknown) => {
        throw err;
      },
    );
  };
  const cli = (args: string[]) =>
    exec(process.execPath, [CLI, ...args], { cwd: ROOT, env: process.env }).then(
      (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
      (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
    );

  before(async () => {
    python = stagesPython();
    servePort = await freePort();
    // Canaries in the workers' environment (the workers run in this process and read process.env).
    process.env.TANREN_JUDGE_API_KEY = CANARY.judge;
    process.env.AWS_SECRET_ACCESS_KEY = CANARY.aws;
    process.env.TANREN_S3_CANARY = CANARY.s3var;
    const logger = pino({ level: 'debug' }, { write: (s: string) => void workerLogs.push(s) });
    workers = await startTestWorkers({
      prefix: 'serve',
      python,
      logger,
      envOverrides: { TANREN_PROGRESS_INTERVAL_MS: 1000, TANREN_CPU_CONCURRENCY: 2, TANREN_JUDGE_BASE_URLS: `http://127.0.0.1:${servePort}/v1` },
    });
    ({ env, queues } = workers);
    prefix = queues.control.replace(/-control$/, '');
    s3Secret = s3Credentials(env).secretKey;
    storage = createObjectStore({ endpoint: env.TANREN_S3_ENDPOINT, bucket: env.TANREN_BUCKET, region: env.TANREN_S3_REGION, ...s3Credentials(env) });
    client = await connectClient(env);
  });

  after(async () => {
    serveProc?.kill('SIGTERM');
    await workers?.stop();
    await client?.connection.close();
    if (workers?.workRoot) rmSync(workers.workRoot, { recursive: true, force: true });
  });

  it('run 1 trains the models; mt-bench without a judge says so', { timeout: 20 * 60_000 }, async (t) => {
    const r = await submit('one', tinySpec(), OVERRIDES);
    for (const s of r.stages) t.diagnostic(`${s.id}: ${s.state} ${stageSeconds(s)} ${JSON.stringify(s.result)}`);
    assert.equal(r.state, 'succeeded', r.stages.map((s) => `${s.id}=${s.state} ${s.reason ?? ''}`).join('; '));
    const mt = r.stages.find((s) => s.id === 'mt-bench')!;
    assert.equal(mt.result!.judge, 'not configured');
    assert.ok(Number(mt.result!.answered) > 0);
    const manifest = JSON.parse(await storage.getText(mt.manifestKey!)) as OutputManifest;
    assert.ok(!manifest.files.some((f) => f.path === 'scores.json' || f.path === 'judgments.jsonl'), 'nothing graded without a judge');
    const lje = r.stages.find((s) => s.id === 'llm-jp-eval')!;
    assert.equal(typeof lje.result!.average, 'number', 'an llm-jp-eval average');
    const report = r.stages.find((s) => s.id === 'report')!.result!;
    assert.equal(report.run_point, false, 'no MT-Bench score yet, so no point');
    assert.equal(report.llm_jp_eval, lje.result!.average);
  });

  it('tanren serve refuses what it cannot serve, clearly', { timeout: 120_000 }, async () => {
    const noRun = await cli(['serve', 'no-such-run-xyz', 'sft']);
    assert.equal(noRun.code, 3, noRun.stderr);
    assert.match(noRun.stderr, /no such run: no-such-run-xyz/);
    const noStage = await cli(['serve', runs.one, 'dpo']);
    assert.equal(noStage.code, 3, noStage.stderr);
    assert.match(noStage.stderr, /has no stage "dpo" \(stages: preflight, /);
    const noModel = await cli(['serve', runs.one, 'tokenize']);
    assert.equal(noModel.code, 3, noModel.stderr);
    assert.match(
      noModel.stderr,
      /stage "tokenize" of run .* has no model: no model\/config\.json or model\/base\.json among its outputs \(.*text_document\.bin/,
    );
  });

  it('tanren serve answers OpenAI chat completions from the trained model', { timeout: 5 * 60_000 }, async () => {
    const cacheDir = path.join(workers.workRoot, 'serve-cache');
    serveProc = spawn(
      process.execPath,
      [CLI, 'serve', runs.one, 'judge-sft', '--port', String(servePort), '--model-name', 'tiny-judge', '--cache-dir', cacheDir, '--json'],
      {
        cwd: ROOT,
        env: process.env,
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    serveProc.stderr!.on('data', (b: Buffer) => (serveStderr += b.toString()));
    const announced = await new Promise<{ base_url: string; model: string; port: number }>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`tanren serve did not announce itself in 180 s; stderr:\n${serveStderr}`)), 180_000);
      createInterface({ input: serveProc!.stdout! }).once('line', (line) => {
        clearTimeout(timer);
        resolve(JSON.parse(line) as { base_url: string; model: string; port: number });
      });
      serveProc!.once('exit', (code) => reject(new Error(`tanren serve exited with ${code}; stderr:\n${serveStderr}`)));
    });
    baseUrl = announced.base_url;
    assert.equal(baseUrl, `http://127.0.0.1:${servePort}/v1`);
    assert.equal(announced.model, 'tiny-judge');
    assert.ok(existsSync(path.join(cacheDir, 'model', 'model.safetensors')), 'the weights were downloaded into the cache dir');

    const models = (await (await fetch(`${baseUrl}/models`)).json()) as { data: Array<{ id: string }> };
    assert.deepEqual(
      models.data.map((m) => m.id),
      ['tiny-judge'],
    );

    const ask = async (body: Record<string, unknown>) => {
      const res = await fetch(`${baseUrl}/chat/completions`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
      return { status: res.status, body: (await res.json()) as Record<string, any> };
    };
    const messages = [{ role: 'user', content: '東京は何地方にありますか？' }];
    const a = await ask({ model: 'tiny-judge', messages, temperature: 0.9, seed: 7, max_tokens: 8 });
    assert.equal(a.status, 200, JSON.stringify(a.body));
    assert.equal(a.body.object, 'chat.completion');
    assert.equal(a.body.model, 'tiny-judge');
    assert.equal(a.body.choices[0].message.role, 'assistant');
    assert.equal(typeof a.body.choices[0].message.content, 'string');
    assert.ok(a.body.usage.completion_tokens >= 1 && a.body.usage.completion_tokens <= 8, JSON.stringify(a.body.usage));
    assert.ok(a.body.usage.prompt_tokens > 5);
    assert.equal(a.body.usage.total_tokens, a.body.usage.prompt_tokens + a.body.usage.completion_tokens);
    const again = await ask({ model: 'tiny-judge', messages, temperature: 0.9, seed: 7, max_tokens: 8 });
    assert.equal(again.body.choices[0].message.content, a.body.choices[0].message.content, 'same seed, same sample');
    const short = await ask({ messages, temperature: 0, max_tokens: 1 });
    assert.equal(short.body.usage.completion_tokens, 1);
    assert.equal(short.body.choices[0].finish_reason, 'length');
    const wrong = await ask({ model: 'gpt-4o', messages });
    assert.equal(wrong.status, 404);
    assert.match(wrong.body.error.message, /this server serves 'tiny-judge'/);
    const bad = await ask({ messages: [{ role: 'wizard', content: 'x' }] });
    assert.equal(bad.status, 400);
    assert.match(bad.body.error.message, /messages\[0\]\.role/);
  });

  it('run 2 grades MT-Bench with the served model as judge; the rest comes from the cache', { timeout: 20 * 60_000 }, async (t) => {
    assert.ok(baseUrl, 'the server of the previous test is up');
    const dump = 'import json, os; json.dump(dict(os.environ), open(os.path.join(os.environ["TANREN_OUTPUT"], "env.json"), "w"))';
    const envDump = { id: 'env-dump', run: [python, '-c', dump], timeout: '2m', outputs: ['env.json'] };
    const r = await submit('two', tinySpec([envDump] as PipelineSpec['stages']), {
      ...OVERRIDES,
      judge_base_url: baseUrl,
      judge_model: 'tiny-judge',
      judge_api_key_env: 'TANREN_JUDGE_API_KEY',
      judge_note: 'tiny',
    });
    for (const s of r.stages) t.diagnostic(`${s.id}: ${s.state} ${stageSeconds(s)} ${JSON.stringify(s.result)}`);
    assert.equal(r.state, 'succeeded', r.stages.map((s) => `${s.id}=${s.state} ${s.reason ?? ''}`).join('; '));
    for (const s of r.stages) {
      const expected = ['mt-bench', 'report', 'env-dump'].includes(s.id) ? 'succeeded' : 'cached';
      assert.equal(s.state, expected, `stage ${s.id}`);
    }
    const mt = r.stages.find((s) => s.id === 'mt-bench')!;
    assert.equal(mt.result!.judge, 'tiny-judge');
    const scores = JSON.parse(await storage.getText(await outputKey(storage, runs.two, 'mt-bench', 'scores.json'))) as Record<string, any>;
    t.diagnostic(`scores.json: ${JSON.stringify({ score: scores.score, judged: scores.judged, unparsable: scores.unparsable, judge: scores.judge })}`);
    assert.equal(typeof scores.score, 'number', 'a numeric MT-Bench score');
    assert.ok(scores.score >= 1 && scores.score <= 10, `score ${scores.score}`);
    assert.equal(scores.judge.model, 'tiny-judge');
    assert.equal(scores.judge.base_url_host, `127.0.0.1:${servePort}`);
    assert.equal(scores.judge.note, TINY_NOTE);
    assert.ok(scores.judge_calls >= scores.judged && scores.judged > 0);
    const judgments = (await storage.getText(await outputKey(storage, runs.two, 'mt-bench', 'judgments.jsonl')))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { judge: string[]; rating: number | null; attempts: string[] });
    assert.equal(judgments.length, scores.judged);
    assert.ok(judgments.every((j) => j.judge[0] === 'tiny-judge' && j.attempts.length >= 1));
    assert.ok(judgments.filter((j) => typeof j.rating === 'number').length > 0, 'the judge gave ratings');
    assert.ok(
      (serveStderr.match(/POST \/v1\/chat\/completions HTTP\/1\.1" 200/g) ?? []).length >= scores.judge_calls,
      'the served model answered the judge calls',
    );

    // The report puts the run on the scatter at (its MT-Bench score, its llm-jp-eval average), each read
    // from the stage's own scores.json (llm-jp-eval's a cache hit from run 1).
    const ljeManifest = JSON.parse(await storage.getText(r.stages.find((s) => s.id === 'llm-jp-eval')!.manifestKey!)) as OutputManifest;
    const ljeScores = manifestFiles(ljeManifest).find((f) => f.path === 'scores.json')!;
    const lje = JSON.parse(await storage.getText(ljeScores.key)) as Record<string, any>;
    assert.equal(typeof lje.average, 'number', 'an llm-jp-eval average');
    assert.ok(lje.average >= 0 && lje.average <= 1, `llm-jp-eval average ${lje.average}`);
    assert.deepEqual(Object.keys(lje.categories).sort(), ['FA', 'MC', 'RC'], 'every category of data/jaster scored');
    const report = r.stages.find((s) => s.id === 'report')!.result!;
    t.diagnostic(`report: ${JSON.stringify(report)}`);
    assert.equal(report.run_point, true, "the run's point is on the scatter");
    assert.equal(report.mt_bench, scores.score);
    assert.equal(report.llm_jp_eval, lje.average);
    assert.equal(report.mt_bench_missing, undefined);
    // The drawn point: the run's red diamond where the chart's axes put those values (x: MT-Bench on
    // [0, 10] over 640 px, y: llm-jp-eval on [0, 1] over 420 px, upwards).
    const svg = await storage.getText(await outputKey(storage, runs.two, 'report', 'scatter.svg'));
    const diamond = /<path [^>]*aria-roledescription="point" transform="translate\(([\d.]+),([\d.]+)\)" d="M-[\d.]+,0L0,-[^"]*" fill="#d62728"/.exec(svg);
    assert.ok(diamond, "the scatter has the run's diamond");
    assert.ok(Math.abs(Number(diamond[1]) - (scores.score / 10) * 640) < 0.5, `x ${diamond[1]} for MT-Bench ${scores.score}`);
    assert.ok(Math.abs(Number(diamond[2]) - (1 - lje.average) * 420) < 0.5, `y ${diamond[2]} for llm-jp-eval ${lje.average}`);
    assert.ok(svg.includes(`>${runs.two}</text>`), 'labelled with the run');
    assert.doesNotMatch(svg, /is not plotted as a point/);
  });

  it('run 3: a failing stage prints its environment, judge key included, to stderr', { timeout: 5 * 60_000 }, async () => {
    const leak =
      'import os, sys\nfor k, v in sorted(os.environ.items()): print(f"{k}={v}", file=sys.stderr)\nprint("judge key " + os.environ["TANREN_JUDGE_API_KEY"], file=sys.stderr)\nsys.exit(1)';
    const spec = loadSpecFile(SPEC_FILE);
    const failing = {
      ...spec,
      params: {},
      stages: [
        { id: 'leaky', run: [python, '-c', leak], with: { judge: { api_key_env: 'TANREN_JUDGE_API_KEY' } }, retry: { maximumAttempts: 1 }, timeout: '2m' },
      ],
    } as unknown as PipelineSpec;
    const r = await submit('three', { ...failing, name: 'audit-fail' }, {}).catch((e: unknown) => e);
    const state = (r as RunResult).state ?? 'workflow failed';
    assert.notEqual(state, 'succeeded');
    const log = await storage.getText(`runs/${runs.three}/leaky/logs/attempt-1.log`);
    assert.match(log, /TANREN_STAGE_ID=leaky/, 'the stage did print its environment');
    assert.match(log, /TANREN_JUDGE_API_KEY=\[redacted\]/, 'the judge key was in it, and was redacted');
  });

  it("no canary in any workflow history, the workers' logs, any stored object or the report", { timeout: 10 * 60_000 }, async () => {
    assert.ok(s3Secret.length >= 6, 'the workers have a real S3 secret to look for');
    const canaries: Record<string, string> = { ...CANARY, s3Secret };
    const find = (where: string, text: string | Buffer) => {
      for (const [name, value] of Object.entries(canaries)) assert.ok(!text.includes(value), `${where} holds the ${name} canary`);
    };

    // The environment a plain `run:` stage saw: none of the worker's secrets or S3 settings.
    const seen = JSON.parse(await storage.getText(await outputKey(storage, runs.two, 'env-dump', 'env.json'))) as Record<string, string>;
    assert.equal(seen.TANREN_STAGE_ID, 'env-dump');
    assert.deepEqual(
      Object.keys(seen).filter((k) => /^(TANREN_S3_|AWS_|TEMPORAL_|MINIO_)/.test(k)),
      [],
    );
    assert.equal(seen.TANREN_JUDGE_API_KEY, undefined, 'a stage without a judge gets no judge key');

    // Histories: every run of this file (inputs, results, failures, heartbeats' last details).
    for (const id of Object.values(runs)) {
      const history = await client.workflow.getHandle(id).fetchHistory();
      const text = historyText(history);
      assert.ok(text.length > 1000, `history of ${id} was read`);
      find(`the history of ${id}`, text);
    }

    // The workers' logs: the stage output lines are there (so the search means something), the secrets are not.
    const logs = `${workerLogs.join('')}\n${JSON.stringify(runtimeLogs, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))}`;
    assert.match(logs, /TANREN_STAGE_ID=leaky/, 'the workers logged the stage output');
    find("the workers' logs", logs);

    // Every object in the bucket, byte for byte (models and checkpoints included).
    const minio = createMinioClient(objectStoreConfig(env));
    let objects = 0;
    for (const o of await storage.list('')) {
      const chunks: Buffer[] = [];
      for await (const c of await minio.getObject(env.TANREN_BUCKET, o.key)) chunks.push(c as Buffer);
      find(`s3://${env.TANREN_BUCKET}/${o.key}`, Buffer.concat(chunks));
      objects++;
    }
    assert.ok(objects > 50, `${objects} objects read`);

    // The report, as `tanren report` renders it.
    const local = path.join(workers.workRoot, 'audit-report');
    const made = await cli(['report', runs.two, '--json', '-o', local]);
    assert.equal(made.code, 0, made.stderr);
    const html = readFileSync((JSON.parse(made.stdout) as { local: string }).local, 'utf8');
    find('the report', html);
  });
});
