/**
 * Object storage for artifacts, logs and manifests: a thin layer over the
 * MinIO client (any S3 works). Every call is retried under the `transient`
 * policy and throws the named errors of ./errors.ts.
 */
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { sha256File } from '../files.js';
import { createMinioClient, type ObjectStoreConfig } from './client.js';
import { isNotFound, StorageAuthError, toStorageError } from './errors.js';
import { retry } from './retry.js';

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
  /** Bytes of `key` from `offset` to its end (empty when there is nothing past `offset`). */
  getBytes(key: string, offset?: number): Promise<Buffer>;
  /** Size of an object; undefined when there is no such object. */
  stat(key: string): Promise<StoredObject | undefined>;
  /** Every object under `prefix`, recursively. */
  list(prefix: string): Promise<StoredObject[]>;
  /** The "directories" right under `prefix` (without the prefix, without the trailing `/`), sorted. */
  listDirs(prefix: string): Promise<string[]>;
  remove(keys: string[]): Promise<void>;
  /**
   * sha256 (hex) of a stored object, streamed: never held in memory whole;
   * undefined when there is no such object. Optional: {@link sha256Object}
   * falls back to a temporary download for stores without it.
   */
  sha256?(key: string): Promise<string | undefined>;
}

/** Creates an {@link ObjectStore} for a MinIO/S3 endpoint such as `http://127.0.0.1:9000`. */
export function createObjectStore(config: ObjectStoreConfig): ObjectStore {
  const client = createMinioClient(config);
  const bucket = config.bucket;
  const hint = 'create it, and a user for it, with the set-up step (`infra/dev up`, or infra/production/minio/setup.sh)';
  return withStoragePolicy({
    bucket,
    endpoint: config.endpoint,
    async ensureBucket() {
      // Workers hold a user restricted to one bucket: it may not create buckets, nor see others.
      const denied = (err: unknown) => toStorageError(err).kind === 'auth';
      let exists: boolean;
      try {
        exists = await client.bucketExists(bucket);
      } catch (err) {
        if (denied(err))
          throw new StorageAuthError(
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
          throw new StorageAuthError(`bucket "${bucket}" does not exist at ${config.endpoint} and these credentials may not create it; ${hint}`, {
            cause: err,
          });
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
    async getBytes(key, offset = 0) {
      let stream;
      try {
        stream = offset > 0 ? await client.getPartialObject(bucket, key, offset) : await client.getObject(bucket, key);
      } catch (err) {
        // Asking past the end of the object: nothing new.
        if ((err as { code?: string }).code === 'InvalidRange') return Buffer.alloc(0);
        throw err;
      }
      const chunks: Buffer[] = [];
      for await (const chunk of stream) chunks.push(chunk as Buffer);
      return Buffer.concat(chunks);
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
    async listDirs(prefix) {
      const out: string[] = [];
      for await (const item of client.listObjectsV2(bucket, prefix, false)) {
        const p = (item as { prefix?: string }).prefix;
        if (p) out.push(p.slice(prefix.length).replace(/\/$/, ''));
      }
      return out.sort();
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

/**
 * Each call of `store` retried under the `transient` policy, its failure
 * thrown as the named error of its kind (./errors.ts). Longer outages are the
 * caller's: the stage runner wraps its calls in the `outage` policy.
 */
function withStoragePolicy(store: ObjectStore): ObjectStore {
  const wrapped = { ...store } as Record<string, unknown>;
  for (const [name, fn] of Object.entries(store)) {
    if (typeof fn !== 'function') continue;
    wrapped[name] = async (...args: unknown[]) => {
      try {
        return await retry(() => (fn as (...a: unknown[]) => Promise<unknown>).apply(store, args), 'transient');
      } catch (err) {
        throw toStorageError(err);
      }
    };
  }
  return wrapped as unknown as ObjectStore;
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
