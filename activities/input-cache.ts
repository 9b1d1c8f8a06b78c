/**
 * A worker's local cache of stage inputs, content-addressed by sha256: a
 * retried attempt, or the next stage on this host that reads the same dataset,
 * links the verified copy instead of downloading it again. Every object is
 * checked against its digest when it enters the cache and again before it is
 * used, so a file a stage changed in place is dropped and fetched anew. The
 * cache is bounded: past its size, the least recently used objects go.
 */
import { randomBytes } from 'node:crypto';
import { copyFile, link, mkdir, readdir, rename, rm, stat, utimes } from 'node:fs/promises';
import path from 'node:path';
import { sha256File } from './files.js';

const SHA256 = /^[0-9a-f]{64}$/;

/** What {@link InputCache.fetch} did for one file. */
export interface InputCacheOutcome {
  /** sha256 of the file now at the destination. */
  sha256: string;
  /** True when the file came from the cache, not from object storage. */
  hit: boolean;
}

/** Counters of one cache, for logs and tests. */
export interface InputCacheStats {
  hits: number;
  misses: number;
  evicted: number;
}

/** The content-addressed input cache under `<workRoot>/input-cache`. */
export class InputCache {
  readonly stats: InputCacheStats = { hits: 0, misses: 0, evicted: 0 };

  /**
   * @param dir directory of the cache (objects live under `<dir>/sha256/<2 hex>/<digest>`)
   * @param maxBytes size bound; after each insertion the least recently used objects are removed until it holds
   */
  constructor(
    readonly dir: string,
    readonly maxBytes: number,
  ) {}

  private objectPath(sha256: string): string {
    return path.join(this.dir, 'sha256', sha256.slice(0, 2), sha256);
  }

  /**
   * Puts the file with digest `sha256` at `dest`: linked (or copied) from the
   * cache when a verified copy is there, else fetched with `download` into a
   * temporary file, verified and then cached. Returns the digest of what is at
   * `dest`: when a download does not match, it is left at `dest` uncached, for
   * the caller to report.
   */
  async fetch(sha256: string, dest: string, download: (to: string) => Promise<void>): Promise<InputCacheOutcome> {
    await mkdir(path.dirname(dest), { recursive: true });
    if (!SHA256.test(sha256)) {
      await download(dest);
      return { sha256: await sha256File(dest), hit: false };
    }
    const obj = this.objectPath(sha256);
    if (await exists(obj)) {
      // Verified again on every use: a stage may have written through a hard link.
      if ((await sha256File(obj)) === sha256) {
        await place(obj, dest);
        const now = new Date();
        await utimes(obj, now, now).catch(() => undefined);
        this.stats.hits++;
        return { sha256, hit: true };
      }
      await rm(obj, { force: true });
    }
    this.stats.misses++;
    await mkdir(path.dirname(obj), { recursive: true });
    const tmp = `${obj}.part-${process.pid}-${randomBytes(4).toString('hex')}`;
    try {
      await download(tmp);
      const got = await sha256File(tmp);
      if (got !== sha256) {
        await rename(tmp, dest);
        return { sha256: got, hit: false };
      }
      // Atomic: a concurrent fetch of the same digest sees the whole file or none.
      await rename(tmp, obj);
    } finally {
      await rm(tmp, { force: true });
    }
    await place(obj, dest);
    await this.evict(obj);
    return { sha256, hit: false };
  }

  /** Removes the least recently used objects (never `keep`) until the cache fits its bound. */
  async evict(keep?: string): Promise<void> {
    const objects: Array<{ file: string; size: number; used: number }> = [];
    const root = path.join(this.dir, 'sha256');
    for (const sub of await readdir(root).catch(() => [] as string[])) {
      for (const name of await readdir(path.join(root, sub)).catch(() => [] as string[])) {
        if (!SHA256.test(name)) continue;
        const file = path.join(root, sub, name);
        try {
          const st = await stat(file);
          objects.push({ file, size: st.size, used: st.mtimeMs });
        } catch {
          // removed meanwhile
        }
      }
    }
    let total = objects.reduce((n, o) => n + o.size, 0);
    objects.sort((a, b) => a.used - b.used);
    for (const o of objects) {
      if (total <= this.maxBytes) break;
      if (o.file === keep) continue;
      await rm(o.file, { force: true });
      total -= o.size;
      this.stats.evicted++;
    }
  }
}

async function exists(file: string): Promise<boolean> {
  try {
    await stat(file);
    return true;
  } catch {
    return false;
  }
}

/** Hard-links `from` to `to` (same file system, no copy), else copies it. */
async function place(from: string, to: string): Promise<void> {
  await rm(to, { force: true });
  try {
    await link(from, to);
  } catch {
    await copyFile(from, to);
  }
}
