/**
 * The operations commands against real workers, the dev server and MinIO:
 * `tanren runs`, `artifacts`, `get` (with a tampered object), `logs` and
 * `logs --follow` on a stage that is still running.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Client, Connection } from '@temporalio/client';
import { keys } from '../../activities/storage/keys.js';
import { createObjectStore, type ObjectStore } from '../../activities/storage/store.js';
import type { OutputManifest } from '../../activities/types.js';
import { loadSpecFile, renderRunInput } from '../../cli/spec-file.js';
import { PIPELINE_WORKFLOW_TYPE, SEARCH_ATTRIBUTES } from '../../schemas/names.js';
import type { PipelineSpec } from '../../schemas/pipeline.js';
import { s3Credentials } from '../../worker/config.js';
import { statusQuery } from '../../workflows/pipeline.js';
import { ROOT, unique, waitFor } from '../helpers/env.js';
import { startTestWorkers, type TestWorkers } from '../helpers/workers.js';

const CLI = path.join(ROOT, 'dist', 'cli', 'main.js');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'tanren-cli-ops-'));

interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
  /** When the first stdout bytes arrived (ms since the epoch). */
  firstStdoutAt?: number;
}

/** Runs the CLI as a child process without blocking the in-process workers. */
function tanren(...args: string[]): Promise<CliResult> {
  return tanrenWatched({}, ...args);
}

/** {@link tanren}, with `onStdout` hearing everything printed so far each time more arrives. */
function tanrenWatched(opts: { onStdout?: (soFar: string) => void }, ...args: string[]): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { cwd: ROOT, env: { ...process.env, NO_COLOR: '1' } });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let firstStdoutAt: number | undefined;
    child.stdout.on('data', (d: Buffer) => {
      firstStdoutAt ??= Date.now();
      out.push(d);
      opts.onStdout?.(Buffer.concat(out).toString('utf8'));
    });
    child.stderr.on('data', (d: Buffer) => err.push(d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8'), firstStdoutAt }));
  });
}

const sha256 = (data: string | Buffer) => createHash('sha256').update(data).digest('hex');

describe('tanren runs / artifacts / get / logs through real workers', () => {
  let workers: TestWorkers;
  let client: Client;
  let storage: ObjectStore;
  const ids: string[] = [];

  before(async () => {
    workers = await startTestWorkers({ prefix: 'ops' });
    client = new Client({ connection: await Connection.connect({ address: workers.env.TEMPORAL_ADDRESS }), namespace: workers.env.TEMPORAL_NAMESPACE });
    storage = createObjectStore({ endpoint: workers.env.TANREN_S3_ENDPOINT, bucket: workers.env.TANREN_BUCKET, ...s3Credentials(workers.env) });
  });
  after(async () => {
    for (const id of ids)
      await client.workflow
        .getHandle(id)
        .terminate('test cleanup')
        .catch(() => {});
    await workers?.stop();
    await client?.connection.close();
  });

  /** Starts a spec file's run the way `tanren submit` does, on the test queues. */
  async function start(file: string, workflowId: string, opts: { mutate?: (spec: PipelineSpec) => void; noCache?: boolean } = {}) {
    const spec = loadSpecFile(file);
    opts.mutate?.(spec);
    const input = renderRunInput(spec, { file: path.relative(ROOT, file), env: workers.env, noCache: opts.noCache ?? true });
    (input.spec as PipelineSpec).queues = { cpu: workers.queues.cpu, gpu: workers.queues.gpu };
    ids.push(workflowId);
    return client.workflow.start(PIPELINE_WORKFLOW_TYPE, {
      taskQueue: workers.queues.control,
      workflowId,
      args: [input],
      searchAttributes: { [SEARCH_ATTRIBUTES.pipeline]: [spec.name], [SEARCH_ATTRIBUTES.status]: ['running'] },
    });
  }

  describe('a finished demo run', () => {
    const run = unique('ops-demo');
    let manifest: OutputManifest;

    before(async () => {
      const handle = await start(path.join(ROOT, 'pipelines', 'demo.yaml'), run, {
        // The demo stages write only events; make freq-0 say something on stdout.
        mutate: (spec) => {
          spec.stages.find((s) => s.id === 'freq-0')!.run = ['sh', '-c', 'echo "hello from freq-0"; exec python3 pipelines/demo/wordcount.py freq'];
        },
      });
      await handle.result();
      manifest = JSON.parse(await storage.getText(keys.manifest(run, 'merge'))) as OutputManifest;
    });

    it('runs --pipeline demo --json lists it as succeeded (once visibility catches up)', async () => {
      const row = await waitFor(
        `${run} in \`tanren runs\` as succeeded`,
        async () => {
          const r = await tanren('runs', '--pipeline', 'demo', '--json', '--limit', '200');
          assert.equal(r.code, 0, r.stderr);
          const rows = JSON.parse(r.stdout) as Array<{ workflowId: string; pipeline: string; status: string; startTime: string; durationMs: number }>;
          return rows.find((x) => x.workflowId === run && x.status === 'succeeded');
        },
        30_000,
        500,
      );
      assert.equal(row.pipeline, 'demo');
      assert.ok(row.durationMs > 0);
      const succeeded = await tanren('runs', '--pipeline', 'demo', '--status', 'succeeded', '--limit', '200');
      assert.equal(succeeded.code, 0, succeeded.stderr);
      assert.match(succeeded.stdout, /^RUN\s+PIPELINE\s+STATUS\s+STAGE\s+STARTED\s+DURATION/);
      assert.match(succeeded.stdout, new RegExp(`${run}\\s+demo\\s+succeeded`));
      const running = await tanren('runs', '--pipeline', 'demo', '--status', 'running', '--json', '--limit', '200');
      assert.ok(!(JSON.parse(running.stdout) as Array<{ workflowId: string }>).some((x) => x.workflowId === run));
      assert.equal((await tanren('runs', '--status', 'sleeping')).code, 2);
    });

    it("artifacts --json lists merge's top-words.json with the manifest's full sha256", async () => {
      const r = await tanren('artifacts', run, '--json');
      assert.equal(r.code, 0, r.stderr);
      const out = JSON.parse(r.stdout) as {
        stages: Array<{ stage: string; finished: boolean; result?: Record<string, unknown>; files: Array<{ path: string; size: number; sha256: string }> }>;
      };
      assert.deepEqual(
        out.stages.map((s) => s.stage),
        ['count', 'shard', 'freq-0', 'freq-1', 'chars', 'merge'],
      );
      const merge = out.stages.find((s) => s.stage === 'merge')!;
      assert.equal(merge.finished, true);
      // The program's result, from the manifest (where a large run's status leaves it out).
      assert.equal(typeof merge.result?.distinct_words, 'number');
      assert.deepEqual(merge.result, manifest.result);
      const file = merge.files.find((f) => f.path === 'top-words.json')!;
      assert.match(file.sha256, /^[0-9a-f]{64}$/);
      assert.equal(file.sha256, manifest.files.find((f) => f.path === 'top-words.json')!.sha256);
      const human = await tanren('artifacts', run, 'merge');
      assert.equal(human.code, 0, human.stderr);
      assert.match(human.stdout, new RegExp(`merge\\s+top-words\\.json\\s+\\d+ B\\s+${file.sha256.slice(0, 12)}\\b`));
    });

    it('get downloads and verifies an output; a tampered object fails with both digests and leaves no file', async () => {
      const dest = path.join(tmp, `${run}-top-words.json`);
      const ok = await tanren('get', run, 'merge', 'top-words.json', dest);
      assert.equal(ok.code, 0, ok.stderr);
      const text = readFileSync(dest, 'utf8');
      assert.ok(Array.isArray(JSON.parse(text)) || typeof JSON.parse(text) === 'object');
      const expected = manifest.files.find((f) => f.path === 'top-words.json')!.sha256;
      assert.equal(sha256(text), expected);

      const tampered = '{"tampered": true}\n';
      await storage.putText(manifest.prefix + 'top-words.json', tampered);
      const bad = path.join(tmp, `${run}-tampered.json`);
      const r = await tanren('get', run, 'merge', 'top-words.json', bad);
      assert.equal(r.code, 1);
      assert.ok(r.stderr.includes(expected), r.stderr);
      assert.ok(r.stderr.includes(sha256(tampered)), r.stderr);
      assert.equal(existsSync(bad), false);
      assert.deepEqual(
        readdirSync(tmp).filter((f) => f.includes('tanren-part')),
        [],
      );
      // Put the real bytes back: the cross-run cache may hand these outputs to later runs.
      await storage.putFile(manifest.prefix + 'top-words.json', dest);
    });

    it("logs prints the stage's output; unknown runs, stages and paths exit 3", async () => {
      const r = await tanren('logs', run, 'freq-0');
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /hello from freq-0/);
      const attempt1 = await tanren('logs', run, 'freq-0', '--attempt', '1');
      assert.equal(attempt1.stdout, r.stdout);

      for (const args of [
        ['logs', run, 'no-such-stage'],
        ['logs', run, 'freq-0', '--attempt', '7'],
        ['logs', unique('no-such-run'), 'freq-0'],
        ['artifacts', run, 'no-such-stage'],
        ['artifacts', unique('no-such-run')],
        ['get', run, 'no-such-stage', 'x', path.join(tmp, 'x')],
        ['get', run, 'merge', 'no-such-file.json', path.join(tmp, 'x')],
      ]) {
        const res = await tanren(...args);
        assert.equal(res.code, 3, `${args.join(' ')}: ${res.stderr}`);
        assert.match(res.stderr, /^error: /);
      }
      assert.match((await tanren('logs', run, 'no-such-stage')).stderr, /has no stage "no-such-stage" \(stages: count, shard, freq-0, freq-1, chars, merge\)/);
    });
  });

  it('artifacts, get and logs of cache hits resolve to the run that produced the outputs', async () => {
    const demo = path.join(ROOT, 'pipelines', 'demo.yaml');
    // freq-0 says something (the demo stages print nothing), in both runs alike: the same cache key.
    const mutate = (spec: PipelineSpec) => {
      spec.stages.find((s) => s.id === 'freq-0')!.run = ['sh', '-c', 'echo "hello from cached freq-0"; exec python3 pipelines/demo/wordcount.py freq'];
    };
    const first = unique('ops-cache-a');
    await (await start(demo, first, { noCache: false, mutate })).result();
    const second = unique('ops-cache-b');
    await (await start(demo, second, { noCache: false, mutate })).result();
    const r = await tanren('artifacts', second, '--json');
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout) as {
      stages: Array<{ stage: string; finished: boolean; cachedFrom?: string; files: Array<{ path: string; sha256: string }> }>;
    };
    assert.ok(
      out.stages.every((s) => s.finished),
      r.stdout,
    );
    const merge = out.stages.find((s) => s.stage === 'merge')!;
    assert.ok(merge.cachedFrom && merge.cachedFrom !== second, 'merge of the second run is a cache hit');
    const dest = path.join(tmp, `${second}-top-words.json`);
    const got = await tanren('get', second, 'merge', 'top-words.json', dest);
    assert.equal(got.code, 0, got.stderr);
    assert.equal(sha256(readFileSync(dest)), merge.files.find((f) => f.path === 'top-words.json')!.sha256);
    const freq = out.stages.find((s) => s.stage === 'freq-0')!;
    const logs = await tanren('logs', second, 'freq-0');
    assert.equal(logs.code, 0, logs.stderr);
    assert.match(logs.stderr, new RegExp(`cache hit in ${second}; the log of run ${freq.cachedFrom}`));
    assert.match(logs.stdout, /hello from cached freq-0/, "the producing run's log");
  });

  it('logs --follow prints the lines of a running stage as they are uploaded and exits when the stage ends', async () => {
    // The stage prints ten lines and then waits for a file that the test creates only once `logs --follow` has printed
    // them: the CLI provably followed a running stage (the worker uploads the log every 5 s), whatever the host's load.
    const go = path.join(tmp, `follow-go-${process.pid}-${Date.now()}`);
    const script = [
      'import os, sys, time',
      "for i in range(10): print('line', i, flush=True)",
      'deadline = time.time() + 120',
      `while not os.path.exists(${JSON.stringify(go)}):`,
      '    if time.time() > deadline: sys.exit("the test never said go")',
      '    time.sleep(0.05)',
      "for i in range(10, 20): print('line', i, flush=True)",
    ].join('\n');
    const file = path.join(tmp, 'follow.yaml');
    writeFileSync(file, ['name: ops-follow', 'stages:', '  - id: talk', `    run: [python3, -c, ${JSON.stringify(script)}]`, ''].join('\n'));
    const run = unique('ops-follow');
    const handle = await start(file, run);
    await waitFor('stage talk running', async () => (await handle.query(statusQuery)).stages.find((s) => s.id === 'talk')?.state === 'running', 30_000, 100);
    let said = false;
    const r = await tanrenWatched(
      {
        onStdout: (soFar) => {
          if (!said && soFar.includes('line 9\n')) {
            said = true;
            writeFileSync(go, '');
          }
        },
      },
      'logs',
      run,
      'talk',
      '--follow',
      '--interval',
      '300',
    );
    assert.equal(r.code, 0, r.stderr);
    assert.ok(said, 'the first ten lines were printed while the stage waited');
    assert.deepEqual(
      r.stdout.trim().split('\n'),
      Array.from({ length: 20 }, (_, i) => `line ${i}`),
    );
    assert.match(r.stderr, /talk attempt 1: succeeded/);
  });
});
