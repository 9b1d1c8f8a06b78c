/**
 * Object storage for artifacts, logs and manifests: a thin layer over the
 * MinIO client (any S3 works) that verifies what it moves.
 */
import { createHash } from 'node:crypto';
import { constants, createReadStream, type Dirent } from 'node:fs';
import { mkdir, mkdtemp, open, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import * as Minio from 'minio';
import { FailureTypes } from '../schemas/names.js';
import { stageFailure } from './errors.js';
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
  /**
   * sha256 (hex) of a stored object, streamed: never held in memory whole;
   * undefined when there is no such object. Optional: {@link sha256Object}
   * falls back to a temporary download for stores without it.
   */
  sha256?(key: string): Promise<string | undefined>;
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
      // Workers hold a user restricted to one bucket: it may not create buckets, nor see others.
      const denied = (err: unknown) => (err as { code?: string }).code === 'AccessDenied';
      const hint = 'create it, and a user for it, with the set-up step (`infra/dev up`, or infra/production/minio/setup.sh)';
      let exists: boolean;
      try {
        exists = await client.bucketExists(bucket);
      } catch (err) {
        if (denied(err))
          throw new Error(
            `these credentials may not use bucket "${bucket}" at ${config.endpoint} (is TANREN_BUCKET the bucket the set-up gave this user?); ${hint}`,
            { cause: err },
          );
        throw err;
      }
      if (exists) return;
      try {
        await client.makeBucket(bucket, config.region ?? 'us-east-1');
      } catch (err) {
        // Two workers starting together may both try to create it.
        if (await client.bucketExists(bucket)) return;
        if (denied(err))
          throw new Error(`bucket "${bucket}" does not exist at ${config.endpoint} and these credentials may not create it; ${hint}`, { cause: err });
        throw err;
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
        if (isNotFound(err)) return undefined;
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
    async sha256(key) {
      let stream;
      try {
        stream = await client.getObject(bucket, key);
      } catch (err) {
        if (isNotFound(err)) return undefined;
        throw err;
      }
      const hash = createHash('sha256');
      for await (const chunk of stream) hash.update(chunk as Buffer);
      return hash.digest('hex');
    },
  });
}

function isNotFound(err: unknown): boolean {
  const code = (err as { code?: string }).code;
  return code === 'NotFound' || code === 'NoSuchKey';
}

/**
 * sha256 (hex) of a stored object, or undefined when it does not exist.
 * Streams it through the hash when the store can ({@link ObjectStore.sha256}),
 * else downloads it to a temporary file and hashes that; either way the object
 * is never buffered in memory whole.
 */
export async function sha256Object(storage: ObjectStore, key: string): Promise<string | undefined> {
  if (storage.sha256) return storage.sha256(key);
  const tmp = await mkdtemp(path.join(os.tmpdir(), 'tanren-sha256-'));
  try {
    const file = path.join(tmp, 'object');
    try {
      await storage.getFile(key, file);
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
    return await sha256File(file);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
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

/** What is at a path that is not a regular file or a directory, for people: `a symbolic link`, `a FIFO`… */
function irregularKind(e: Dirent): string {
  if (e.isSymbolicLink()) return 'symbolic link';
  if (e.isFIFO()) return 'FIFO';
  if (e.isSocket()) return 'socket';
  if (e.isBlockDevice() || e.isCharacterDevice()) return 'device';
  return 'special file';
}

/** A directory's contents: regular files, and everything else that is neither one nor a directory. */
export interface DirectoryScan {
  /** Regular files, relative with `/` separators, sorted. */
  files: string[];
  /** Symbolic links (to files or directories, or dangling) and special files, sorted by path; never followed. */
  irregular: Array<{ path: string; kind: string }>;
}

/** Walks `dir` without following symbolic links; see {@link DirectoryScan}. */
export async function scanDirectory(dir: string): Promise<DirectoryScan> {
  const files: string[] = [];
  const irregular: DirectoryScan['irregular'] = [];
  const walk = async (rel: string) => {
    const entries = await readdir(path.join(dir, rel), { withFileTypes: true });
    for (const e of entries) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) await walk(r);
      else if (e.isFile()) files.push(r);
      else irregular.push({ path: r, kind: irregularKind(e) });
    }
  };
  await walk('');
  return { files: files.sort(), irregular: irregular.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0)) };
}

/** Every regular file under `dir`, as paths relative to it with `/` separators, sorted (symbolic links and special files are left out). */
export async function listFiles(dir: string): Promise<string[]> {
  return (await scanDirectory(dir)).files;
}

/** Options of {@link describeFiles}. */
export interface DescribeFilesOptions {
  /** The stage whose outputs these are, named in the error. */
  stage?: string;
}

/** Names at most a few paths: `"a", "b", "c" and 4 more`. */
function namePaths(paths: string[], most = 5): string {
  const shown = paths
    .slice(0, most)
    .map((p) => JSON.stringify(p))
    .join(', ');
  return paths.length > most ? `${shown} and ${paths.length - most} more` : shown;
}

/**
 * The `InvalidStageOutput` failure for symbolic links or special files in an
 * output directory: `stage "x" wrote a symbolic link "path" in its outputs; write the file itself`.
 */
export function irregularOutputFailure(irregular: DirectoryScan['irregular'], where: DescribeFilesOptions & { dir: string }) {
  const links = irregular.filter((i) => i.kind === 'symbolic link').map((i) => i.path);
  const special = irregular.filter((i) => i.kind !== 'symbolic link');
  const parts: string[] = [];
  if (links.length === 1) parts.push(`a symbolic link ${namePaths(links)}`);
  else if (links.length) parts.push(`symbolic links ${namePaths(links)}`);
  if (special.length === 1) parts.push(`a ${special[0].kind} ${namePaths([special[0].path])}`);
  else if (special.length) parts.push(`special files ${namePaths(special.map((s) => s.path))}`);
  const what = parts.join(' and ');
  const fix = irregular.length === 1 ? 'write the file itself' : 'write the files themselves';
  const message =
    where.stage !== undefined ? `stage "${where.stage}" wrote ${what} in its outputs; ${fix}` : `output directory ${where.dir} has ${what}; ${fix}`;
  return stageFailure(FailureTypes.InvalidStageOutput, message, { irregular: irregular.slice(0, 50) });
}

/**
 * Builds manifest entries (size and sha256) for every file under `dir`.
 *
 * Outputs must be regular files: a symbolic link (or a FIFO, socket or device)
 * anywhere under `dir` fails with a non-retryable `InvalidStageOutput`
 * ApplicationFailure naming it, rather than being left out of the manifest.
 * Each file is opened without following links and sized and hashed through
 * that one descriptor, so a file swapped for a link after the walk fails too.
 */
export async function describeFiles(dir: string, opts: DescribeFilesOptions = {}): Promise<ManifestEntry[]> {
  const { files, irregular } = await scanDirectory(dir);
  if (irregular.length) throw irregularOutputFailure(irregular, { ...opts, dir });
  const entries: ManifestEntry[] = [];
  for (const rel of files) {
    let fh;
    try {
      fh = await open(path.join(dir, rel), constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
    } catch (err) {
      if ((err as { code?: string }).code === 'ELOOP') throw irregularOutputFailure([{ path: rel, kind: 'symbolic link' }], { ...opts, dir });
      throw err;
    }
    try {
      const s = await fh.stat();
      if (!s.isFile()) throw irregularOutputFailure([{ path: rel, kind: 'special file' }], { ...opts, dir });
      const hash = createHash('sha256');
      let size = 0;
      for await (const chunk of fh.createReadStream({ autoClose: false, start: 0 })) {
        hash.update(chunk as Buffer);
        size += (chunk as Buffer).length;
      }
      entries.push({ path: rel, size, sha256: hash.digest('hex') });
    } finally {
      await fh.close();
    }
  }
  return entries;
}

/** Object key layout of a run. */
export const keys = {
  stagePrefix: (runId: string, stage: string) => `runs/${runId}/${stage}/`,
  /**
   * Where outputs lived before each attempt got a prefix of its own: read only through a manifest
   * (activities/object-keys.ts, `manifestFiles`), which says where its files are.
   * @deprecated new outputs go to `outputKeys.attempt` (activities/object-keys.ts)
   */
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
