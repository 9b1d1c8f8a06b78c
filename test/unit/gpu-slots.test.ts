/**
 * GPU slots without GPUs (a fake device list): one stage per GPU, a stage
 * asking for several GPUs takes them all and runs alone, requests are served
 * in arrival order, CUDA_VISIBLE_DEVICES of concurrent stages are disjoint.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { GpuRequestError, GpuSlots } from '../../worker/gpu.js';
import { launcherArgv } from '../../activities/run-stage.js';
import { validatePipelineSpec } from '../../schemas/validate.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Span {
  name: string;
  devices: string[];
  start: number;
  end: number;
}

/** Runs a "stage" that holds its lease for `ms`. */
async function stage(slots: GpuSlots, name: string, gpus: number, ms: number, spans: Span[]): Promise<void> {
  const lease = await slots.acquire(gpus, name);
  const start = performance.now();
  await sleep(ms);
  spans.push({ name, devices: lease.cudaVisibleDevices.split(','), start, end: performance.now() });
  lease.release();
}

const overlap = (a: Span, b: Span) => a.start < b.end && b.start < a.end;

describe('GPU slots', () => {
  it('runs two 1-GPU stages at once on two slots; a 2-GPU stage overlaps neither; devices are disjoint', async () => {
    const lockDir = mkdtempSync(path.join(os.tmpdir(), 'tanren-slots-'));
    const slots = new GpuSlots(['0', '1'], { dir: lockDir, host: 'fake-host' });
    const spans: Span[] = [];
    const seenLocks = new Set<number>();
    const watch = setInterval(() => seenLocks.add(readdirSync(lockDir).length), 5);
    await Promise.all([
      stage(slots, 'a', 1, 150, spans),
      stage(slots, 'b', 1, 150, spans),
      stage(slots, 'wide', 2, 100, spans),
      stage(slots, 'c', 1, 150, spans),
      stage(slots, 'd', 1, 150, spans),
    ]);
    clearInterval(watch);
    const by = (n: string) => spans.find((s) => s.name === n)!;
    // a and b ran together, on different GPUs.
    assert.ok(overlap(by('a'), by('b')), 'two 1-GPU stages run concurrently');
    assert.notDeepEqual(by('a').devices, by('b').devices);
    assert.deepEqual(by('wide').devices.sort(), ['0', '1']);
    for (const s of spans.filter((x) => x.name !== 'wide')) {
      assert.equal(s.devices.length, 1);
      assert.ok(!overlap(s, by('wide')), `${s.name} overlaps the 2-GPU stage`);
    }
    // Arrival order: c and d waited behind the wide stage rather than overtaking it.
    assert.ok(by('c').start >= by('wide').end && by('d').start >= by('wide').end);
    for (const x of spans)
      for (const y of spans)
        if (x !== y && overlap(x, y)) assert.equal(x.devices.filter((d) => y.devices.includes(d)).length, 0, `${x.name} and ${y.name} share a GPU`);
    // Each held slot held a lock file; all are gone afterwards.
    assert.ok(seenLocks.has(2), 'both slot locks were held at some point');
    assert.deepEqual(readdirSync(lockDir), []);
  });

  it('writes who holds a slot into its lock file and refuses more GPUs than there are', async () => {
    const lockDir = mkdtempSync(path.join(os.tmpdir(), 'tanren-slots-'));
    const slots = new GpuSlots(['3'], { dir: lockDir, host: 'h1' });
    const lease = await slots.acquire(1, 'run-1/pretrain');
    assert.equal(lease.cudaVisibleDevices, '3');
    const file = path.join(lockDir, 'slot-h1-3.lock');
    assert.ok(existsSync(file));
    assert.equal(JSON.parse(readFileSync(file, 'utf8')).owner, 'run-1/pretrain');
    lease.release();
    lease.release(); // twice is harmless
    assert.ok(!existsSync(file));
    await assert.rejects(slots.acquire(2, 'big'), (e: Error) => e instanceof GpuRequestError && /asks for 2 GPU\(s\) but this worker serves 1/.test(e.message));
  });

  it('gives up waiting when the stage is cancelled, and the next waiter gets the slot', async () => {
    const slots = new GpuSlots(['0']);
    const first = await slots.acquire(1, 'first');
    const ac = new AbortController();
    const cancelled = slots.acquire(1, 'cancelled', ac.signal);
    const next = slots.acquire(1, 'next');
    ac.abort(new Error('cancelled by the workflow'));
    await assert.rejects(cancelled, /cancelled by the workflow/);
    first.release();
    const lease = await next;
    assert.equal(lease.cudaVisibleDevices, '0');
    lease.release();
  });

  it('launches a multi-GPU built-in stage with torchrun, one process per GPU', () => {
    assert.deepEqual(launcherArgv('/py', 'pretrain', 1), ['/py', '-m', 'tanren_stages.pretrain']);
    assert.deepEqual(launcherArgv('/py', 'pretrain', 2), [
      '/py',
      '-m',
      'torch.distributed.run',
      '--standalone',
      '--nproc-per-node=2',
      '-m',
      'tanren_stages.pretrain',
    ]);
  });
});

describe('gpus and host in a spec', () => {
  const spec = (stage: Record<string, unknown>) => ({ name: 'p', stages: [{ id: 's', ...stage }] });
  const problems = (stage: Record<string, unknown>) => {
    const v = validatePipelineSpec(spec(stage));
    return v.ok ? [] : v.problems.map((p) => `${p.path}: ${p.message}`);
  };

  it('accepts gpus and host on gpu-queue stages', () => {
    assert.deepEqual(problems({ run: ['train'], queue: 'gpu', gpus: 2, host: 'gpu-b' }), []);
    assert.deepEqual(problems({ uses: 'pretrain', gpus: 2 }), []);
  });

  it('refuses them elsewhere, and several GPUs for kinds that run on one', () => {
    assert.match(problems({ run: ['x'], gpus: 2 }).join('\n'), /gpus: only a stage on the gpu queue/);
    assert.match(problems({ run: ['x'], host: 'a' }).join('\n'), /host: only a stage on the gpu queue/);
    assert.match(problems({ uses: 'sft', gpus: 2 }).join('\n'), /"sft" runs on one GPU/);
    assert.match(problems({ run: ['x'], queue: 'gpu', host: 'Bad_Host' }).join('\n'), /host/);
  });
});
