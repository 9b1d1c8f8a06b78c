/**
 * Parallel, resumable transfers of large files to and from MinIO/S3, for
 * checkpoints. Uses minio-js's multipart calls (`initiateNewMultipartUpload`,
 * `uploadPart`, `completeMultipartUpload`, `abortMultipartUpload`), which v8
 * exposes on the client but does not document, and hashed streamed downloads.
 *
 * A part that fails (the server went away, a 5xx) is retried on its own after
 * a backoff; when the server has forgotten the upload id (`NoSuchUpload`) the
 * multipart upload starts again from the first part.
 */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, open, readFile } from 'node:fs/promises';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import os from 'node:os';
import path from 'node:path';
import type * as Minio from 'minio';
import { createMinioClient, type ObjectStoreConfig } from './client.js';
import { isUploadLost } from './errors.js';
import { retry, type RetryOptions } from './retry.js';

/** Limits of the retries of one transfer: the `transfer` policy's, with these fields overridden. */
export type TransferRetryOptions = Pick<RetryOptions, 'attempts' | 'totalMs' | 'firstDelayMs' | 'maxDelayMs' | 'jitter'>;

/** Tuning of multipart transfers. */
export interface MultipartOptions {
  /** Bytes per part (S3 allows 5 MiB – 5 GiB). @default 32 MiB */
  partSize?: number;
  /** Parts in flight at once, per file. @default {@link defaultPartConcurrency} (1–4 by CPU count) */
  concurrency?: number;
  /** Retries of each part or file. @default the `transfer` policy: 8 tries, 0.5 s doubling to 10 s, ±20 % jitter */
  retry?: TransferRetryOptions;
  /** Called before each retry, for logging. */
  onRetry?: (what: string, attempt: number, err: unknown) => void;
}

/** What an upload sent: its size and the sha256 of the bytes read. */
export interface UploadedFile {
  size: number;
  sha256: string;
  parts: number;
}

const MiB = 1024 * 1024;
const HASH_SLICE = 4 * MiB;
/** Default part size: large enough for few requests, small enough to keep 4 in memory. */
export const DEFAULT_PART_SIZE = 32 * MiB;

/**
 * Parts in flight per file by default for this host: one per CPU, 1 to 4.
 * On a 2-core host 2 parts keep the link busy without the upload's HTTP and
 * hashing competing with training for both cores at once.
 */
export function defaultPartConcurrency(cpus: number = os.availableParallelism()): number {
  return Math.min(4, Math.max(1, Math.floor(cpus)));
}

/**
 * Runs one call of a transfer under the `transfer` policy (with `retry`'s
 * overrides), naming it in `onRetry`. A lost upload id (`NoSuchUpload`) is
 * permanent for one call: the whole upload starts again (the `multipart` policy).
 */
function withTransferRetry<T>(what: string, fn: () => Promise<T>, opts: Pick<MultipartOptions, 'retry' | 'onRetry'>): Promise<T> {
  return retry(fn, {
    policy: 'transfer',
    ...opts.retry,
    onRetry: (attempt, err) => opts.onRetry?.(what, attempt, err),
  });
}

/** Parallel multipart transfers of single large files, hashing what they move. */
export interface MultipartClient {
  readonly bucket: string;
  /**
   * Uploads `file` to `key` as a multipart upload, `concurrency` parts at a
   * time, hashing the file as it is read (one read pass). Retries a failed
   * part after a backoff; restarts the upload if its id was lost.
   */
  uploadFile(key: string, file: string, opts?: MultipartOptions): Promise<UploadedFile>;
  /** Uploads a small file in one PUT (read once into memory, hashed on the way), with retries. */
  putSmallFile(key: string, file: string, opts?: MultipartOptions): Promise<UploadedFile>;
  /**
   * Downloads `key` (of `size` bytes) to `file` in one streamed GET, hashing
   * the bytes as they arrive (no second read). Retries transient errors.
   * @returns the sha256 of the bytes written
   */
  downloadFile(key: string, file: string, size: number, opts?: MultipartOptions): Promise<string>;
}

/**
 * Creates a {@link MultipartClient} for the bucket of `config`. `client`
 * replaces the minio-js client made from `config` (tests inject faults with it).
 */
export function createMultipartClient(config: ObjectStoreConfig, client: Minio.Client = createMinioClient(config, { unsignedPayload: true })): MultipartClient {
  const bucket = config.bucket;
  // Part buffers are reused across parts and files (at most `concurrency` per part size are
  // live): a fresh 32 MiB buffer per part costs an mmap and ~8 k page faults each time.
  const pool = new Map<number, Buffer[]>();
  const takeBuffer = (size: number) => pool.get(size)?.pop() ?? Buffer.allocUnsafeSlow(size);
  const giveBuffer = (buf: Buffer, limit: number) => {
    const free = pool.get(buf.length) ?? [];
    pool.set(buf.length, free);
    if (free.length < limit) free.push(buf);
  };

  async function uploadOnce(key: string, file: string, opts: MultipartOptions): Promise<UploadedFile> {
    const partSize = opts.partSize ?? DEFAULT_PART_SIZE;
    const concurrency = Math.max(1, opts.concurrency ?? defaultPartConcurrency());
    const fh = await open(file, 'r');
    try {
      const size = (await fh.stat()).size;
      const uploadId = await withTransferRetry(
        `initiating multipart upload of ${key}`,
        () => client.initiateNewMultipartUpload(bucket, key, { 'Content-Type': 'application/octet-stream' }),
        opts,
      );
      const hash = createHash('sha256');
      const etags: Array<{ part: number; etag: string }> = [];
      const inflight = new Set<Promise<void>>();
      let failure: unknown;
      let partNumber = 0;
      try {
        for (let offset = 0; offset < size; offset += partSize) {
          if (failure) break;
          const length = Math.min(partSize, size - offset);
          const whole = takeBuffer(partSize);
          const buf = length === partSize ? whole : whole.subarray(0, length);
          let got = 0;
          while (got < length) {
            const { bytesRead } = await fh.read(buf, got, length - got, offset + got);
            if (bytesRead === 0) throw new Error(`${file} shrank while it was uploaded (expected ${size} bytes)`);
            got += bytesRead;
          }
          // Parts are read in order, so the whole-file digest costs no second read. Hashed in
          // slices with a turn of the event loop between them, so other parts' sockets keep moving.
          for (let at = 0; at < length; at += HASH_SLICE) {
            hash.update(buf.subarray(at, Math.min(length, at + HASH_SLICE)));
            if (at + HASH_SLICE < length) await new Promise<void>((r) => setImmediate(r));
          }
          const n = ++partNumber;
          const task = withTransferRetry(
            `uploading part ${n} of ${key}`,
            () => client.uploadPart({ bucketName: bucket, objectName: key, uploadID: uploadId, partNumber: n, headers: {} }, buf),
            opts,
          )
            .then(
              (r) => {
                etags.push({ part: n, etag: r.etag });
              },
              (err) => {
                failure ??= err;
              },
            )
            .finally(() => giveBuffer(whole, concurrency));
          const tracked: Promise<void> = task.finally(() => inflight.delete(tracked));
          inflight.add(tracked);
          if (inflight.size >= concurrency) await Promise.race(inflight);
        }
        await Promise.all(inflight);
        // eslint-disable-next-line @typescript-eslint/only-throw-error -- the first failed part's error, rethrown as it was caught
        if (failure) throw failure;
        etags.sort((a, b) => a.part - b.part);
        await withTransferRetry(`completing multipart upload of ${key}`, () => client.completeMultipartUpload(bucket, key, uploadId, etags), opts);
      } catch (err) {
        await Promise.allSettled(inflight);
        // Best effort: frees the parts on the server; fails harmlessly if it is down.
        if (!isUploadLost(err)) await client.abortMultipartUpload(bucket, key, uploadId).catch(() => undefined);
        throw err;
      }
      return { size, sha256: hash.digest('hex'), parts: partNumber };
    } finally {
      await fh.close();
    }
  }

  return {
    bucket,
    async uploadFile(key, file, opts = {}) {
      // A server restart may drop the upload id; then the whole upload starts over (twice at most).
      return retry(() => uploadOnce(key, file, opts), {
        policy: 'multipart',
        onRetry: (round, err) => opts.onRetry?.(`multipart upload of ${key} (upload id lost, starting again)`, round, err),
      });
    },
    async putSmallFile(key, file, opts = {}) {
      const buf = await readFile(file);
      const sha256 = createHash('sha256').update(buf).digest('hex');
      await withTransferRetry(`uploading ${key}`, () => client.putObject(bucket, key, buf, buf.length), opts);
      return { size: buf.length, sha256, parts: 1 };
    },
    async downloadFile(key, file, size, opts = {}) {
      await mkdir(path.dirname(file), { recursive: true });
      // One streamed GET per file, hashed on the way through: on a loaded host this measured
      // as fast as parallel ranges, with one pass over the bytes and no part buffers.
      return withTransferRetry(
        `downloading ${key}`,
        async () => {
          const hash = createHash('sha256');
          let got = 0;
          const stream = await client.getObject(bucket, key);
          await pipeline(
            stream,
            new Transform({
              transform(chunk: Buffer, _enc, cb) {
                hash.update(chunk);
                got += chunk.length;
                cb(null, chunk);
              },
            }),
            createWriteStream(file),
          );
          if (got !== size) throw new Error(`short read of ${key}: got ${got} of ${size} bytes`);
          return hash.digest('hex');
        },
        opts,
      );
    },
  };
}
