/**
 * Background upload of the checkpoint directories a training stage
 * announces: files first (large ones by a separate low-priority process,
 * ./upload-process.ts), the manifest last, then retention of the newest K.
 */
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { listFiles, sha256File } from '../files.js';
import type { ObjectStoreConfig } from '../storage/client.js';
import { checkpointKeys } from '../storage/keys.js';
import { createMultipartClient, type MultipartClient, type MultipartOptions, type TransferRetryOptions } from '../storage/multipart.js';
import { retry } from '../storage/retry.js';
import type { ObjectStore } from '../storage/store.js';
import type { ManifestEntry } from '../types.js';
import {
  checkPath,
  CheckpointUploadError,
  InvalidCheckpointPathError,
  listCheckpoints,
  stepOf,
  type CheckpointEvent,
  type CheckpointLog,
  type CheckpointManifest,
  type CheckpointRef,
} from './manifest.js';
import { defaultUploadTuning, runUploadProcess, type UploadProcessStats } from './upload-process.js';

const MiB = 1024 * 1024;

/** Options of {@link createCheckpointUploader}. */
export interface CheckpointUploaderOptions {
  storage: ObjectStore;
  runId: string;
  stage: string;
  /** The attempt's `$TANREN_CHECKPOINTS`. */
  checkpointsDir: string;
  /** Complete checkpoints to keep in storage (newest by step); older ones are deleted. At least 1. */
  keep: number;
  log?: CheckpointLog;
  /**
   * Connection settings of the same bucket, for parallel multipart uploads of
   * large files. Without it every file goes through `storage.putFile`.
   */
  s3?: ObjectStoreConfig;
  /** Files of at least this many bytes use multipart (when `s3` is given). @default 16 MiB */
  multipartThreshold?: number;
  /** Part size and parallelism of multipart uploads. @default 32 MiB parts, 1–4 at a time by CPU count */
  multipart?: Pick<MultipartOptions, 'partSize' | 'concurrency'>;
  /** Replaces the multipart client made from `s3` (tests inject faults with it); files then go up in this process. */
  multipartClient?: MultipartClient;
  /**
   * With `s3`: read, hash and send the files in a separate low-priority
   * process (./upload-process.ts) instead of this one, so that
   * training keeps the CPU. @default true
   */
  uploadProcess?: boolean;
  /**
   * Checkpoints smaller than this (all files together) go up in this process
   * even with `uploadProcess`: starting the upload process costs about as
   * much CPU as sending ~100 MiB here, and it would only make small
   * checkpoints lag behind training. @default 64 MiB
   */
  processThreshold?: number;
  /** Aborting it kills a running upload process; queued checkpoints then fail at once. */
  signal?: AbortSignal;
  /** Called with the upload process's resource use after each checkpoint it sent (benchmarks). */
  onUploadStats?: (stats: UploadProcessStats & { path: string }) => void;
  /** Backoff of failed object-store calls. @default the `transfer` policy: 8 tries, 0.5 s doubling to 10 s (~45 s in all) */
  retry?: TransferRetryOptions;
}

/** Uploads announced checkpoints in the background. */
export interface CheckpointUploader {
  /**
   * Queues a complete checkpoint directory for upload and returns at once.
   * Checkpoints are uploaded one at a time, in announce order.
   */
  announce(ev: CheckpointEvent): void;
  /**
   * Resolves when every checkpoint announced so far has been handled; rejects
   * with {@link CheckpointUploadError} if any announced checkpoint (since the
   * uploader was created) failed after its retries.
   */
  flush(): Promise<void>;
  /** The newest-announced checkpoint whose manifest this uploader has written. */
  latest(): CheckpointRef | undefined;
  /** Every checkpoint this uploader published, in order (older ones may since have been deleted by retention). */
  published(): CheckpointRef[];
}

/**
 * Creates an uploader for the checkpoints one attempt of a stage announces.
 * Files go to `runs/<run>/<stage>/checkpoints/<path>/files/…`, then the
 * manifest is written; then checkpoints beyond the newest `keep` are deleted
 * (manifest first). Failed object-store calls are retried with backoff; a
 * checkpoint that still fails gets no manifest (its uploaded files are removed
 * on a best-effort basis) and makes {@link CheckpointUploader.flush} reject.
 * With `s3`, the files of each checkpoint of at least `processThreshold`
 * bytes are read, hashed and sent by a separate low-priority process
 * (`uploadProcess`); manifests, retention and cleanup stay here.
 */
export function createCheckpointUploader(opts: CheckpointUploaderOptions): CheckpointUploader {
  const { storage, runId, stage, checkpointsDir, log } = opts;
  const keep = Math.max(1, Math.floor(opts.keep));
  const threshold = opts.multipartThreshold ?? 16 * MiB;
  const inChild = !!opts.s3 && !opts.multipartClient && opts.uploadProcess !== false;
  const mp: MultipartClient | undefined = opts.multipartClient ?? (opts.s3 ? createMultipartClient(opts.s3) : undefined);
  const onRetry = (what: string, attempt: number, err: unknown) =>
    log?.warn(`checkpoint upload: retrying ${what}`, { attempt, error: (err as Error)?.message ?? String(err) });
  /** One object-store call under the `transfer` policy (with `opts.retry`'s overrides), named in the log when retried. */
  const transfer = <T>(what: string, fn: () => Promise<T>) =>
    retry(fn, { policy: 'transfer', ...opts.retry, onRetry: (attempt, err) => onRetry(what, attempt, err) });
  const publishedRefs: CheckpointRef[] = [];
  const failures: CheckpointUploadError['failures'] = [];
  let chain: Promise<void> = Promise.resolve();

  async function uploadOne(ev: CheckpointEvent): Promise<void> {
    const cpPath = checkPath(ev.path);
    const step = stepOf(ev, cpPath);
    const dir = path.join(checkpointsDir, cpPath);
    const st = await stat(dir).catch(() => undefined);
    if (!st?.isDirectory()) throw new InvalidCheckpointPathError(`checkpoint "${cpPath}" (step ${step}): ${dir} is not a directory`);
    const manifestKey = checkpointKeys.manifest(runId, stage, cpPath);
    const prefix = checkpointKeys.files(runId, stage, cpPath);
    const started = Date.now();
    const uploaded: string[] = [];
    let uploaderCpuSeconds: number | undefined;
    try {
      // The same path announced again (a resumed attempt re-saving a step):
      // its old manifest must not describe files that are being replaced.
      if (await transfer(`checking ${manifestKey}`, () => storage.stat(manifestKey))) {
        await transfer(`removing ${manifestKey}`, () => storage.remove([manifestKey]));
      }
      const files: ManifestEntry[] = [];
      const rels = await listFiles(dir);
      const sizes = await Promise.all(rels.map(async (rel) => (await stat(path.join(dir, rel))).size));
      const viaChild = inChild && sizes.reduce((a, b) => a + b, 0) >= (opts.processThreshold ?? 64 * MiB);
      if (viaChild) {
        uploaded.push(...rels.map((rel) => prefix + rel));
        const { files: sent, stats } = await runUploadProcess(
          {
            s3: opts.s3!,
            files: rels.map((rel) => ({ key: prefix + rel, file: path.join(dir, rel) })),
            multipartThreshold: threshold,
            partSize: opts.multipart?.partSize ?? defaultUploadTuning().partSize,
            concurrency: opts.multipart?.concurrency ?? defaultUploadTuning().concurrency,
            retry: opts.retry,
          },
          { signal: opts.signal, onRetry: (what, attempt, error) => log?.warn(`checkpoint upload: retrying ${what}`, { attempt, error }) },
        );
        sent.forEach((f, i) => files.push({ path: rels[i], size: f.size, sha256: f.sha256 }));
        uploaderCpuSeconds = stats.cpuSeconds;
        opts.onUploadStats?.({ ...stats, path: cpPath });
      }
      for (const rel of viaChild ? [] : rels) {
        const full = path.join(dir, rel);
        const key = prefix + rel;
        const size = (await stat(full)).size;
        uploaded.push(key);
        if (mp) {
          const r =
            size >= threshold
              ? await mp.uploadFile(key, full, { ...opts.multipart, retry: opts.retry, onRetry })
              : await mp.putSmallFile(key, full, { retry: opts.retry, onRetry });
          files.push({ path: rel, size: r.size, sha256: r.sha256 });
        } else {
          const sha256 = await sha256File(full);
          await transfer(`uploading ${key}`, () => storage.putFile(key, full));
          files.push({ path: rel, size, sha256 });
        }
      }
      const manifest: CheckpointManifest = { runId, stage, step, path: cpPath, createdAt: new Date().toISOString(), prefix, files };
      // Written last: a manifest means every file it lists is complete.
      await transfer(`writing ${manifestKey}`, () => storage.putText(manifestKey, JSON.stringify(manifest, null, 2)));
      const ref: CheckpointRef = { key: manifestKey, path: cpPath, step };
      publishedRefs.push(ref);
      const bytes = files.reduce((n, f) => n + f.size, 0);
      log?.info('checkpoint uploaded', { path: cpPath, step, files: files.length, bytes, seconds: (Date.now() - started) / 1000, uploaderCpuSeconds });
    } catch (err) {
      // Never leave a manifest for a failed checkpoint (a manifest put whose reply was lost may
      // have landed), and free what was sent. Best effort: storage may still be down.
      try {
        await storage.remove([manifestKey]);
        if (uploaded.length) await storage.remove(uploaded);
      } catch {
        /* left for retention or a later attempt */
      }
      throw err;
    }
    try {
      await applyRetention();
    } catch (err) {
      log?.warn('checkpoint retention failed (will try again after the next checkpoint)', { error: (err as Error)?.message ?? String(err) });
    }
  }

  async function applyRetention(): Promise<void> {
    const all = await transfer('listing checkpoints', () => listCheckpoints(storage, runId, stage));
    for (const old of all.slice(keep)) {
      // Manifest first: a checkpoint without one is incomplete and never used.
      await transfer(`removing ${old.key}`, () => storage.remove([old.key]));
      const prefix = checkpointKeys.files(runId, stage, old.path);
      const objects = await transfer(`listing ${prefix}`, () => storage.list(prefix));
      for (let i = 0; i < objects.length; i += 1000) {
        const batch = objects.slice(i, i + 1000).map((o) => o.key);
        await transfer(`removing files of ${old.path}`, () => storage.remove(batch));
      }
      log?.info('old checkpoint deleted', { path: old.path, step: old.step, keep });
    }
  }

  return {
    announce(ev) {
      const copy = { path: ev.path, step: ev.step };
      chain = chain.then(() =>
        uploadOne(copy).catch((error: unknown) => {
          failures.push({ path: String(copy.path), step: copy.step, error });
          log?.warn('checkpoint not uploaded', { path: copy.path, step: copy.step, error: (error as Error)?.message ?? String(error) });
        }),
      );
    },
    async flush() {
      // Checkpoints announced while waiting extend the chain; wait for those too.
      let seen: Promise<void>;
      do {
        seen = chain;
        await seen;
      } while (seen !== chain);
      if (failures.length) throw new CheckpointUploadError([...failures]);
    },
    latest: () => publishedRefs.at(-1),
    published: () => [...publishedRefs],
  };
}
