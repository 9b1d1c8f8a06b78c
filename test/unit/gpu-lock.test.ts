/** GPU locks are per physical device: workers with overlapping device lists never both hold a GPU. */
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { describe, it } from 'node:test';
import { acquireGpuLocks, physicalGpuIds } from '../../worker/gpu.js';
import { ROOT } from '../helpers/env.js';

const uuid = (i: string) => (({ '0': 'GPU-aaaa', '1': 'GPU-bbbb' }) as Record<string, string>)[i];

describe('GPU locks', () => {
  it('names devices by UUID where known, else by index', () => {
    assert.deepEqual(physicalGpuIds('0, 1', uuid), ['GPU-aaaa', 'GPU-bbbb']);
    assert.deepEqual(physicalGpuIds('2', uuid), ['index-2']);
    assert.deepEqual(physicalGpuIds('GPU-cccc,0,0', uuid), ['GPU-cccc', 'GPU-aaaa']);
  });

  it('refuses a second worker on an overlapping device set, whatever its queue, and takes nothing half-way', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'tanren-gpulock-'));
    const first = acquireGpuLocks(dir, '0', uuid);
    // Another worker process, on another queue, with devices "1,0".
    const other = (devices: string) =>
      spawnSync(
        process.execPath,
        [
          '-e',
          `import(${JSON.stringify(path.join(ROOT, 'dist/worker/gpu.js'))}).then(m => { m.acquireGpuLocks(${JSON.stringify(dir)}, ${JSON.stringify(devices)}, (i) => ({ '0': 'GPU-aaaa', '1': 'GPU-bbbb' })[i]); }).catch(e => { console.error(e.message); process.exit(7); })`,
        ],
        { encoding: 'utf8' },
      );
    const refused = other('1,0');
    assert.equal(refused.status, 7, refused.stderr);
    assert.match(refused.stderr, /another GPU worker \(pid \d+\) already serves device\(s\) gpu-GPU-aaaa/);
    // Device 1 was not left locked by the refused worker (it exited; its lock of device 1, if any, is stale anyway).
    assert.equal(other('1').status, 0);
    first();
    assert.equal(other('0,1').status, 0, 'free once released');
  });
});
