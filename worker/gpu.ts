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
    const devices = out
      .split('\n')
      .map((l) => l.trim())
      .filter(Boolean);
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
  return [
    ...new Set(
      devices
        .split(',')
        .map((d) => d.trim())
        .filter(Boolean)
        .map((d) => (d.startsWith('GPU-') ? d : (uuidOf(d) ?? `index-${d}`))),
    ),
  ];
}

let uuids: Map<string, string> | undefined;
function nvidiaUuid(index: string): string | undefined {
  if (!uuids) {
    uuids = new Map();
    try {
      const out = execFileSync('nvidia-smi', ['--query-gpu=index,uuid', '--format=csv,noheader'], {
        encoding: 'utf8',
        timeout: 10_000,
        stdio: ['ignore', 'pipe', 'ignore'],
      });
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

/** The GPUs one stage holds: released exactly once, when the stage ends. */
export interface GpuLease {
  /** Device ids held, in slot order. */
  readonly devices: readonly string[];
  /** The value for the stage's CUDA_VISIBLE_DEVICES. */
  readonly cudaVisibleDevices: string;
  release(): void;
}

/** A stage asked for more GPUs than this worker has: another worker (with more) must take it. */
export class GpuRequestError extends Error {
  override name = 'GpuRequestError';
}

/**
 * The GPUs of one worker as exclusive slots, one stage per GPU. A stage asks
 * for `n` slots and gets them all at once or waits; requests are served in
 * arrival order, so a stage waiting for two GPUs is not starved by 1-GPU
 * stages arriving after it (they wait behind it). On a host with GPUs each held
 * slot also holds a lock file (pid and stage inside), so what runs where is
 * visible on the host and no other process takes the same GPU meanwhile.
 */
export class GpuSlots {
  private readonly free: string[];
  private readonly waiting: Array<{ n: number; owner: string; grant: (l: GpuLease) => void; fail: (e: unknown) => void }> = [];

  /**
   * @param devices the worker's devices (TANREN_GPU_DEVICES split on commas), one slot each
   * @param locks where the per-slot lock files go and the host name in their names; none without a real GPU
   *   (then the slots are this process's alone, as on a CPU fallback)
   */
  constructor(
    readonly devices: readonly string[],
    private readonly locks?: { dir: string; host: string },
  ) {
    if (!devices.length) throw new GpuRequestError('no GPU devices to serve: TANREN_GPU_DEVICES is empty');
    this.free = [...devices];
  }

  /** Number of slots (the worker's activity concurrency). */
  get size(): number {
    return this.devices.length;
  }

  /**
   * Waits for `n` free slots and takes them. Rejects with {@link GpuRequestError}
   * when `n` exceeds the slots there are, and with the signal's reason when
   * `signal` aborts while waiting.
   */
  acquire(n: number, owner: string, signal?: AbortSignal): Promise<GpuLease> {
    if (!Number.isInteger(n) || n < 1 || n > this.size) {
      return Promise.reject(
        new GpuRequestError(`${owner} asks for ${n} GPU(s) but this worker serves ${this.size} (TANREN_GPU_DEVICES=${this.devices.join(',')})`),
      );
    }
    return new Promise<GpuLease>((resolve, reject) => {
      const entry = {
        n,
        owner,
        grant: (l: GpuLease) => {
          signal?.removeEventListener('abort', onAbort);
          resolve(l);
        },
        fail: reject,
      };
      const onAbort = () => {
        const i = this.waiting.indexOf(entry);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(signal!.reason instanceof Error ? signal!.reason : new Error(String(signal!.reason)));
        this.pump();
      };
      if (signal?.aborted) return reject(signal.reason instanceof Error ? signal.reason : new Error(String(signal.reason)));
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(entry);
      this.pump();
    });
  }

  private pump(): void {
    while (this.waiting.length && this.waiting[0].n <= this.free.length) {
      const w = this.waiting.shift()!;
      // Lowest device ids first, so a lone stage gets the same GPU each time.
      this.free.sort((a, b) => this.devices.indexOf(a) - this.devices.indexOf(b));
      const taken = this.free.splice(0, w.n);
      const releases: Array<() => void> = [];
      try {
        if (this.locks) for (const d of taken) releases.push(acquireSlotLock(this.locks.dir, this.locks.host, d, w.owner));
      } catch (err) {
        releases.forEach((r) => r());
        this.free.push(...taken);
        w.fail(err);
        continue;
      }
      let released = false;
      w.grant({
        devices: taken,
        cudaVisibleDevices: taken.join(','),
        release: () => {
          if (released) return;
          released = true;
          releases.forEach((r) => r());
          this.free.push(...taken);
          this.pump();
        },
      });
    }
  }
}

/** Takes the lock file of one slot (`slot-<host>-<device>.lock`); a lock left by a dead process is taken over. */
function acquireSlotLock(lockDir: string, host: string, device: string, owner: string): () => void {
  mkdirSync(lockDir, { recursive: true });
  const file = path.join(lockDir, `slot-${host}-${device}`.replace(/[^0-9a-zA-Z_.-]/g, '_') + '.lock');
  for (let tries = 0; tries < 2; tries++) {
    try {
      writeFileSync(file, JSON.stringify({ pid: process.pid, owner, startedAt: new Date().toISOString() }), { flag: 'wx' });
      return () => rmSync(file, { force: true });
    } catch (err) {
      if ((err as { code?: string }).code !== 'EEXIST') throw err;
      let holder: { pid?: number } = {};
      try {
        holder = JSON.parse(readFileSync(file, 'utf8')) as { pid?: number };
      } catch {
        // unreadable: stale
      }
      if (holder.pid && holder.pid !== process.pid && pidInUse(holder.pid)) {
        throw new GpuLockedError(`GPU ${device} of host ${host} is held by another process (pid ${holder.pid}, lock ${file})`);
      }
      rmSync(file, { force: true });
    }
  }
  throw new GpuLockedError(`could not take the GPU slot lock ${file}`);
}
