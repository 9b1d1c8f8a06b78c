/**
 * Object storage for artifacts, logs and manifests: a thin layer over the
 * MinIO client (any S3 works) that verifies what it moves.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import * as Minio from 'minio';
import type { ManifestEntry } from './types.js';

/** Connection settings of the object store. Credentials never enter workflow history. */
export interface ObjectStoreConfig {
  endpoint: string;
  accessKey: string;
  secretKey: string;
  bucket: string;
  region?: string;
}

/** One stored object. */
export interface StoredObject {
  key: string;
  size: number;
}

/** What activities and the CLI need of object storage. */
export interface ObjectStore {
  readonly bucket: string;
  readonly endpoint: string;
  ensureBucket(): Promise<void>;
  putFile(key: string, file: string): Promise<void>;
  putText(key: string, text: string, contentType?: string): Promise<void>;
  getText(key: string): Promise<string>;
  getFile(key: string, file: string): Promise<void>;
  stat(key: string): Promise<StoredObject | undefined>;
  list(prefix: string): Promise<StoredObject[]>;
  remove(keys: string[]): Promise<void>;
}

/** minio-js client options for an endpoint URL such as `https://s3.example:9000`. */
export function minioClientOptions(config: ObjectStoreConfig): Minio.ClientOptions {
  const url = new URL(config.endpoint);
  return {
    endPoint: url.hostname,
    port: url.port ? Number(url.port) : url.protocol === 'https:' ? 443 : 80,
    useSSL: url.protocol === 'https:',
    accessKey: config.accessKey,
    secretKey: config.secretKey,
    region: config.region ?? 'us-east-1',
  };
}

/** Creates an {@link ObjectStore} for a MinIO/S3 endpoint such as `http://127.0.0.1:9000`. */
export function createObjectStore(config: ObjectStoreConfig): ObjectStore {
  const client = new Minio.Client(minioClientOptions(config));
  const bucket = config.bucket;
  return withTransientRetries({
    bucket,
    endpoint: config.endpoint,
    async ensureBucket() {
      if (!(await client.bucketExists(bucket))) {
        try {
          await client.makeBucket(bucket, config.region ?? 'us-east-1');
        } catch (err) {
          // Two workers starting together may both try to create it.
          if (!(await client.bucketExists(bucket))) throw err;
        }
      }
    },
    async putFile(key, file) {
      await client.fPutObject(bucket, key, file);
    },
    async putText(key, text, contentType = 'application/json') {
      await client.putObject(bucket, key, Buffer.from(text), undefined, { 'Content-Type': contentType });
    },
    async getText(key) {
      const stream = await client.getObject(bucket, key);
      const chunks: Buffer[] = [];
      for await (const chunk of stream) chunks.push(chunk as Buffer);
      return Buffer.concat(chunks).toString('utf8');
    },
    async getFile(key, file) {
      await mkdir(path.dirname(file), { recursive: true });
      await client.fGetObject(bucket, key, file);
    },
    async stat(key) {
      try {
        const s = await client.statObject(bucket, key);
        return { key, size: s.size };
      } catch (err) {
        const code = (err as { code?: string }).code;
        if (code === 'NotFound' || code === 'NoSuchKey') return undefined;
        throw err;
      }
    },
    async list(prefix) {
      const out: StoredObject[] = [];
      for await (const item of client.listObjectsV2(bucket, prefix, true)) {
        const it = item as { name?: string; size?: number };
        if (it.name) out.push({ key: it.name, size: it.size ?? 0 });
      }
      return out;
    },
    async remove(keys) {
      if (keys.length) await client.removeObjects(bucket, keys);
    },
  });
}

/** True for errors of a connection the server closed under us (a reused keep-alive socket, a restart). */
export function isTransientNetworkError(err: unknown): boolean {
  const e = err as { code?: string; message?: string };
  return e?.code === 'ECONNRESET' || e?.code === 'EPIPE' || /socket hang up/i.test(e?.message ?? '');
}

/** Retries each call of a store twice on a dropped connection; longer outages are the caller's (see withStorageRetry). */
function withTransientRetries(store: ObjectStore): ObjectStore {
  const wrapped = { ...store } as Record<string, unknown>;
  for (const [name, fn] of Object.entries(store)) {
    if (typeof fn !== 'function') continue;
    wrapped[name] = async (...args: unknown[]) => {
      for (let attempt = 1; ; attempt++) {
        try {
          return await (fn as (...a: unknown[]) => Promise<unknown>).apply(store, args);
        } catch (err) {
          if (attempt >= 3 || !isTransientNetworkError(err)) throw err;
          await new Promise((r) => setTimeout(r, 100 * attempt));
        }
      }
    };
  }
  return wrapped as unknown as ObjectStore;
}

/** sha256 of a file, hex. */
export async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Every regular file under `dir`, as paths relative to it with `/` separators, sorted. */
export async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (rel: string) => {
    const entries = await readdir(path.join(dir, rel), { withFileTypes: true });
    for (const e of entries) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) await walk(r);
      else if (e.isFile()) out.push(r);
    }
  };
  await walk('');
  return out.sort();
}

/** Builds manifest entries (size and sha256) for every file under `dir`. */
export async function describeFiles(dir: string): Promise<ManifestEntry[]> {
  const files = await listFiles(dir);
  const entries: ManifestEntry[] = [];
  for (const rel of files) {
    const full = path.join(dir, rel);
    entries.push({ path: rel, size: (await stat(full)).size, sha256: await sha256File(full) });
  }
  return entries;
}

/** Object key layout of a run. */
export const keys = {
  stagePrefix: (runId: string, stage: string) => `runs/${runId}/${stage}/`,
  outputs: (runId: string, stage: string) => `runs/${runId}/${stage}/outputs/`,
  manifest: (runId: string, stage: string) => `runs/${runId}/${stage}/manifest.json`,
  log: (runId: string, stage: string, attempt: number) => `runs/${runId}/${stage}/logs/attempt-${attempt}.log`,
};

/** Options of {@link withStorageRetry}. */
export interface StorageRetryOptions {
  /** Give up after this long. @default 90000 */
  totalMs?: number;
  /** First wait; doubles up to 5 s. @default 250 */
  firstDelayMs?: number;
  /** Called before each wait, e.g. to heartbeat while the store is away. */
  onRetry?: (attempt: number, err: unknown) => void;
}

/**
 * Runs a storage call, retrying with backoff while the object store is
 * unreachable (a MinIO restart), so a brief outage does not cost the stage.
 */
export async function withStorageRetry<T>(fn: () => Promise<T>, opts: StorageRetryOptions = {}): Promise<T> {
  const deadline = Date.now() + (opts.totalMs ?? 90_000);
  let delay = opts.firstDelayMs ?? 250;
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (Date.now() + delay > deadline) throw err;
      opts.onRetry?.(attempt, err);
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 5000);
    }
  }
}
