/**
 * The GPU host's guarantees: one GPU worker per host and device set (a lock
 * file), and an honest answer to "is there a GPU here".
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pidInUse } from '../activities/process-identity.js';

/** What the worker found about GPUs. */
export interface GpuProbe {
  found: boolean;
  /** Device names from nvidia-smi, when found. */
  devices: string[];
  /** Why none was found. */
  reason?: string;
}

/** Asks nvidia-smi for the visible devices. */
export function probeGpu(): GpuProbe {
  try {
    const out = execFileSync('nvidia-smi', ['--query-gpu=name,memory.total', '--format=csv,noheader'], {
      encoding: 'utf8',
      timeout: 10_000,
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    const devices = out.split('\n').map((l) => l.trim()).filter(Boolean);
    return devices.length ? { found: true, devices } : { found: false, devices: [], reason: 'nvidia-smi lists no device' };
  } catch (err) {
    const code = (err as { code?: string }).code;
    return { found: false, devices: [], reason: code === 'ENOENT' ? 'nvidia-smi not found' : `nvidia-smi failed: ${(err as Error).message}` };
  }
}

/** Raised when another GPU worker holds the host and device set. */
export class GpuLockedError extends Error {
  override name = 'GpuLockedError';
}


/**
 * Takes the per-host, per-device lock of a GPU worker. A lock whose owner
 * died is taken over. Returns the release function.
 */
export function acquireGpuLock(lockDir: string, devices: string): () => void {
  mkdirSync(lockDir, { recursive: true });
  const file = path.join(lockDir, `gpu-${os.hostname()}-${devices.replace(/[^0-9a-zA-Z]/g, '_')}.lock`);
  for (let tries = 0; tries < 2; tries++) {
    try {
      writeFileSync(file, JSON.stringify({ pid: process.pid, startedAt: new Date().toISOString() }), { flag: 'wx' });
      return () => rmSync(file, { force: true });
    } catch (err) {
      if ((err as { code?: string }).code !== 'EEXIST') throw err;
      let owner: { pid?: number } = {};
      try {
        owner = JSON.parse(readFileSync(file, 'utf8')) as { pid?: number };
      } catch {
        // unreadable lock: treat as stale
      }
      if (owner.pid && owner.pid !== process.pid && pidInUse(owner.pid)) {
        throw new GpuLockedError(
          `another GPU worker (pid ${owner.pid}) already serves device(s) ${devices} on ${os.hostname()} (lock ${file}); ` +
            'stop it first, or give this worker other devices with TANREN_GPU_DEVICES',
        );
      }
      rmSync(file, { force: true });
    }
  }
  throw new GpuLockedError(`could not take the GPU lock ${file}`);
}

/** Physical ids of the devices in a CUDA_VISIBLE_DEVICES-style list: the GPU's UUID where nvidia-smi knows it, else the index. */
export function physicalGpuIds(devices: string, uuidOf: (index: string) => string | undefined = nvidiaUuid): string[] {
  return [...new Set(devices.split(',').map((d) => d.trim()).filter(Boolean).map((d) => (d.startsWith('GPU-') ? d : (uuidOf(d) ?? `index-${d}`))))];
}

let uuids: Map<string, string> | undefined;
function nvidiaUuid(index: string): string | undefined {
  if (!uuids) {
    uuids = new Map();
    try {
      const out = execFileSync('nvidia-smi', ['--query-gpu=index,uuid', '--format=csv,noheader'], { encoding: 'utf8', timeout: 10_000, stdio: ['ignore', 'pipe', 'ignore'] });
      for (const line of out.split('\n')) {
        const [i, u] = line.split(',').map((x) => x.trim());
        if (i && u) uuids.set(i, u);
      }
    } catch {
      // no nvidia-smi: indexes it is
    }
  }
  return uuids.get(index);
}

/**
 * Takes one lock per physical GPU in `devices` (so workers whose device lists
 * overlap, whatever their queue names, never both run), all or none. Returns
 * the release function.
 */
export function acquireGpuLocks(lockDir: string, devices: string, uuidOf?: (index: string) => string | undefined): () => void {
  const releases: Array<() => void> = [];
  try {
    for (const id of physicalGpuIds(devices, uuidOf)) releases.push(acquireGpuLock(lockDir, `gpu-${id}`));
  } catch (err) {
    for (const r of releases) r();
    throw err;
  }
  return () => releases.forEach((r) => r());
}

/** Where GPU locks live: one directory per host, shared by every user (sticky, like /tmp). */
export function gpuLockDir(): string {
  const dir = process.env.TANREN_GPU_LOCK_DIR ?? path.join(os.tmpdir(), 'tanren-gpu-locks');
  mkdirSync(dir, { recursive: true, mode: 0o1777 });
  return dir;
}

/** Free memory in GiB of the first visible device (CUDA_VISIBLE_DEVICES order), from nvidia-smi; undefined when unknown. */
export function gpuFreeMemoryGiB(devices: string): number | undefined {
  const first = devices.split(',')[0]?.trim();
  try {
    const out = execFileSync('nvidia-smi', ['--query-gpu=memory.free', '--format=csv,noheader,nounits', ...(first ? ['-i', first] : [])], {
      encoding: 'utf8',
      timeout: 10_000,
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    const mib = Number(out.split('\n')[0]?.trim());
    return Number.isFinite(mib) ? mib / 1024 : undefined;
  } catch {
    return undefined;
  }
}
