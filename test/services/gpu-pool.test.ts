/**
 * GPU host pools and multi-GPU hosts, on the real dev server and MinIO with
 * real worker processes: GPU workers as "hosts" (each its own TANREN_GPU_HOST)
 * joining one pool share its stages, one stage at a time per GPU; a stage
 * pinned with `host:` runs on that host only; a worker with two (fake) GPUs
 * runs two 1-GPU stages at once and a `gpus: 2` stage alone.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Client } from '@temporalio/client';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { gpuHostQueue, gpuPoolQueue, PIPELINE_WORKFLOW_TYPE } from '../../schemas/names.js';
import type { PipelineSpec } from '../../schemas/pipeline.js';
import { connectClient } from '../../worker/connection.js';
import type { RunResult } from '../../workflows/pipeline.js';
import { ROOT, stateDir, unique, waitFor } from '../helpers/env.js';
import { startWorkerProcess, stopWorkerProcess, type WorkerProcess } from '../helpers/worker-process.js';
import { startTestWorkers, type TestWorkers } from '../helpers/workers.js';

Runtime.install({ logger: new DefaultLogger('WARN') });

const WORK = path.join(ROOT, 'test', 'fixtures', 'gpu-work.mjs');
const STAGE_SECONDS = 2;

interface Ran {
  id: string;
  host: string;
  cuda: string;
  start: number;
  end: number;
}

const overlap = (a: Ran, b: Ran) => a.start < b.end && b.start < a.end;

describe('GPU pools and multi-GPU hosts', () => {
  let workers: TestWorkers;
  let client: Client;
  const tag = `gp${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
  const hosts = { a: `${tag}-a`, b: `${tag}-b`, wide: `${tag}-w` };
  const pool = `${tag}-pool`;
  // Under the test services' state directory: kept after the run for a look at the workers' logs.
  const logDir = path.join(stateDir(), 'gpu-pool-logs');
  mkdirSync(logDir, { recursive: true });
  const gpuWorkers: WorkerProcess[] = [];
  const workDirs = new Map<string, string>();

  const startGpuHost = async (host: string, extra: Record<string, string> = {}) => {
    workDirs.set(host, mkdtempSync(path.join(logDir, `work-${host}-`)));
    const w = await startWorkerProcess(
      'gpu',
      {
        TANREN_GPU_HOST: host,
        TANREN_STAGE_ENV: 'TANREN_GPU_HOST',
        TANREN_WORK_DIR: workDirs.get(host)!,
        TANREN_PROGRESS_INTERVAL_MS: '200',
        ...extra,
      },
      logDir,
      host,
    );
    gpuWorkers.push(w);
    return w;
  };

  let poolHosts: Promise<unknown> | undefined;
  /** Hosts a and b in the pool, started once by whichever test needs them first (each test also runs alone). */
  const startPoolHosts = () =>
    (poolHosts ??= Promise.all([startGpuHost(hosts.a, { TANREN_GPU_POOL: pool }), startGpuHost(hosts.b, { TANREN_GPU_POOL: pool })]));

  /** Runs independent `gpu-work` stages; returns where and when each ran, and the run's wall time. */
  const runStages = async (name: string, stages: Array<Partial<PipelineSpec['stages'][number]> & { id: string }>, gpuQueue: string) => {
    const spec = {
      name: `pool-${name}`,
      queues: { cpu: workers.queues.cpu, gpu: gpuQueue },
      defaults: { cache: false, retry: { maximumAttempts: 2, initialInterval: '1s' } },
      stages: stages.map((s) => ({ queue: 'gpu', run: [process.execPath, WORK], with: { seconds: STAGE_SECONDS }, ...s })),
    };
    const t0 = performance.now();
    const result = (await client.workflow.execute(PIPELINE_WORKFLOW_TYPE, {
      taskQueue: workers.queues.control,
      workflowId: unique(`pool-${name}`),
      args: [{ spec, options: {} }],
    })) as RunResult;
    const wall = (performance.now() - t0) / 1000;
    const ran = result.stages.map((s) => ({ id: s.id, ...(s.result as Omit<Ran, 'id'>) }));
    return { ran, wall };
  };

  before(async () => {
    workers = await startTestWorkers({ prefix: 'pool', gpu: false });
    client = await connectClient(workers.env);
  });

  after(async () => {
    for (const w of gpuWorkers) await stopWorkerProcess(w);
    await workers?.stop();
    await client?.connection.close();
  });

  it('two hosts in one pool share six stages, running at the same time, each host one stage at a time', { timeout: 180_000 }, async () => {
    const six = Array.from({ length: 6 }, (_, i) => ({ id: `work-${i + 1}` }));
    await startPoolHosts();
    const two = await runStages('two-hosts', six, gpuPoolQueue(pool));
    const perHost = new Map<string, Ran[]>();
    for (const r of two.ran) perHost.set(r.host, [...(perHost.get(r.host) ?? []), r]);
    assert.deepEqual([...perHost.keys()].sort(), [hosts.a, hosts.b].sort(), 'both hosts ran stages');
    for (const [host, ran] of perHost) {
      for (const x of ran) for (const y of ran) if (x !== y) assert.ok(!overlap(x, y), `${host} ran ${x.id} and ${y.id} at once`);
    }
    // The pool's point is that its hosts work at once: a stage of one host overlaps a stage of the other (a
    // structural check: the wall-time ratio to one host is a speed figure and moved with the load of the machine).
    const [onA, onB] = [perHost.get(hosts.a)!, perHost.get(hosts.b)!];
    assert.ok(
      onA.some((x) => onB.some((y) => overlap(x, y))),
      `no stage of ${hosts.a} overlapped one of ${hosts.b}: ${JSON.stringify(two.ran.map(({ id, host, start, end }) => ({ id, host, start, end })))}`,
    );
    console.log(
      `[gpu-pool] six ${STAGE_SECONDS}s stages on two hosts: ${two.wall.toFixed(1)} s; split ${[...perHost].map(([h, r]) => `${h}:${r.length}`).join(' ')}`,
    );
  });

  it('a stage pinned to a host runs there, whatever queues.gpu names', { timeout: 60_000 }, async () => {
    await startPoolHosts();
    const { ran } = await runStages(
      'pinned',
      [
        { id: 'pinned-b', host: hosts.b, with: { seconds: 0.2 } },
        { id: 'pinned-a', host: hosts.a, with: { seconds: 0.2 } },
      ],
      gpuPoolQueue(pool),
    );
    assert.deepEqual(Object.fromEntries(ran.map((r) => [r.id, r.host])), { 'pinned-b': hosts.b, 'pinned-a': hosts.a });
  });

  it('a two-GPU host runs two 1-GPU stages at once on disjoint devices, and a gpus: 2 stage alone on both', { timeout: 120_000 }, async () => {
    await startGpuHost(hosts.wide, { TANREN_GPU_DEVICES: '0,1' });
    const { ran } = await runStages(
      'two-gpus',
      [{ id: 'one-a' }, { id: 'one-b' }, { id: 'both', gpus: 2, with: { seconds: 1 } }, { id: 'one-c' }],
      gpuHostQueue(hosts.wide),
    );
    const by = (id: string) => ran.find((r) => r.id === id)!;
    assert.equal(by('both').cuda.split(',').sort().join(','), '0,1');
    const singles = ran.filter((r) => r.id !== 'both');
    for (const s of singles) {
      assert.ok(s.cuda === '0' || s.cuda === '1', `${s.id} got CUDA_VISIBLE_DEVICES=${s.cuda}`);
      assert.ok(!overlap(s, by('both')), `${s.id} overlaps the 2-GPU stage`);
    }
    let concurrent = 0;
    for (const x of singles) {
      for (const y of singles) {
        if (x.id < y.id && overlap(x, y)) {
          concurrent++;
          assert.notEqual(x.cuda, y.cuda, `${x.id} and ${y.id} ran at once on GPU ${x.cuda}`);
        }
      }
    }
    assert.ok(concurrent >= 1, 'two 1-GPU stages ran at the same time');
  });

  it("a retried stage takes its input from the host's cache, not from object storage", { timeout: 60_000 }, async () => {
    // Notes the inode and text of its input in a file of the test's, then fails its first attempt; the second
    // attempt runs on the same (pinned) host.
    const notes = mkdtempSync(path.join(logDir, 'input-notes-'));
    const flaky = [
      process.execPath,
      '-e',
      `const fs = require('fs');
const f = process.env.TANREN_INPUT_PRODUCE + '/digest.txt';
const note = JSON.parse(fs.readFileSync(process.env.TANREN_PARAMS, 'utf8')).note;
fs.writeFileSync(note + '-' + process.env.TANREN_ATTEMPT, JSON.stringify({ ino: fs.statSync(f).ino, text: fs.readFileSync(f, 'utf8') }));
process.exit(process.env.TANREN_ATTEMPT === '1' ? 1 : 0);`,
    ];
    await startPoolHosts();
    const { ran } = await runStages(
      'input-cache',
      [
        { id: 'produce', host: hosts.a, with: { seconds: 0.2 } },
        { id: 'consume', host: hosts.a, needs: ['produce'], run: flaky, with: { note: path.join(notes, 'attempt') } },
      ],
      gpuPoolQueue(pool),
    );
    assert.equal(ran.length, 2);
    const [first, second] = [1, 2].map((a) => JSON.parse(readFileSync(path.join(notes, `attempt-${a}`), 'utf8')) as { ino: number; text: string });
    const work = workDirs.get(hosts.a)!;
    // Each attempt's input was a link to the cached object…
    const digest = createHash('sha256').update(first.text).digest('hex');
    const cached = path.join(work, 'input-cache', 'sha256', digest.slice(0, 2), digest);
    assert.equal(first.ino, statSync(cached).ino, "attempt 1's input is the cached object");
    // …the same inode in attempt 2: a second download would have replaced the object.
    assert.equal(second.ino, first.ino, 'attempt 2 reused the cached input');
    // Both attempts' directories go (the failed one's too), and the run's with them; the cache stays.
    await waitFor('the attempts cleaned up', () => !readdirSync(work).some((d) => d.startsWith('pool-input-cache-')), 10_000, 50);
    assert.ok(existsSync(cached), 'the cached input outlives the run');
  });
});
