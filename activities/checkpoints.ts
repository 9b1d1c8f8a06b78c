/**
 * Checkpoints in object storage: background upload of the checkpoint
 * directories a training stage announces, retention, listing, verified
 * download and restore-with-fallback for retried attempts.
 *
 * Layout (one prefix per checkpoint, `<path>` as announced, relative to
 * `$TANREN_CHECKPOINTS`):
 *
 *     runs/<run>/<stage>/checkpoints/<path>/files/<relative file>
 *     runs/<run>/<stage>/checkpoints/<path>/manifest.json   ← written last
 *
 * A checkpoint is complete only when its manifest exists; the manifest lists
 * every file's size and sha256, and is deleted first when a checkpoint is
 * removed, so a half-written or half-deleted checkpoint is never used.
 */
import { mkdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { defaultUploadTuning, runUploadProcess, type UploadProcessStats } from './checkpoint-upload.js';
import { createMultipartClient, withRetry, type MultipartClient, type MultipartOptions, type RetryOptions } from './multipart.js';
import { listFiles, sha256File, type ObjectStore, type ObjectStoreConfig } from './storage.js';
import type { ManifestEntry } from './types.js';

/** A complete (manifested) checkpoint in object storage. Small and secret-free: fit for heartbeat details. */
export interface CheckpointRef {
  /** Object key of the checkpoint's manifest. */
  key: string;
  /** The checkpoint's directory, relative to `$TANREN_CHECKPOINTS` (e.g. `step-000100`). */
  path: string;
  step: number;
}

/** The manifest of one checkpoint, written after all of its files. */
export interface CheckpointManifest {
  runId: string;
  stage: string;
  step: number;
  path: string;
  createdAt: string;
  /** Prefix under which `files` live. */
  prefix: string;
  files: ManifestEntry[];
}

/** The `checkpoint` event of the stage protocol. */
export interface CheckpointEvent {
  path: string;
  step?: number;
}

/** Logger shape of the Temporal activity `log` (and of pino-like loggers). */
export interface CheckpointLog {
  info(message: string, meta?: Record<string, unknown>): void;
  warn(message: string, meta?: Record<string, unknown>): void;
}

/** A downloaded checkpoint file does not match its manifest, or is missing. */
export class CheckpointCorruptError extends Error {
  override name = 'CheckpointCorruptError' as const;
  constructor(
    message: string,
    /** Object key of the offending file (or manifest). */
    readonly objectKey: string,
  ) {
    super(message);
  }
}

/** One or more announced checkpoints could not be uploaded (after retries). */
export class CheckpointUploadError extends Error {
  override name = 'CheckpointUploadError' as const;
  constructor(readonly failures: Array<{ path: string; step?: number; error: unknown }>) {
    super(`${failures.length} checkpoint(s) not uploaded: ` + failures.map((f) => `${f.path}: ${(f.error as Error)?.message ?? String(f.error)}`).join('; '), {
      cause: failures.at(-1)?.error,
    });
  }
}

/** An announced checkpoint path that cannot be used (absolute, `..`, missing directory). */
export class InvalidCheckpointPathError extends Error {
  override name = 'InvalidCheckpointPathError' as const;
}

/** Object keys of checkpoints. */
export const checkpointKeys = {
  /** Prefix of all checkpoints of a stage of a run. */
  root: (runId: string, stage: string) => `runs/${runId}/${stage}/checkpoints/`,
  /** Prefix of one checkpoint. */
  checkpoint: (runId: string, stage: string, cpPath: string) => `runs/${runId}/${stage}/checkpoints/${cpPath}/`,
  /** Prefix of one checkpoint's files. */
  files: (runId: string, stage: string, cpPath: string) => `runs/${runId}/${stage}/checkpoints/${cpPath}/files/`,
  /** Key of one checkpoint's manifest. */
  manifest: (runId: string, stage: string, cpPath: string) => `runs/${runId}/${stage}/checkpoints/${cpPath}/manifest.json`,
};

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
   * process (activities/checkpoint-upload.ts) instead of this one, so that
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
  /** Backoff of failed object-store calls. @default 8 tries, 0.5 s doubling to 10 s (~45 s in all) */
  retry?: RetryOptions;
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

/** Validates an announced path: relative, no `..`, `/` separators; returns it normalized. */
function checkPath(p: unknown): string {
  if (typeof p !== 'string' || !p.trim()) throw new InvalidCheckpointPathError(`checkpoint event: "path" must be a non-empty string, got ${JSON.stringify(p)}`);
  const norm = path.posix.normalize(p.replace(/\\/g, '/')).replace(/\/+$/, '');
  if (path.posix.isAbsolute(norm) || norm === '.' || norm === '..' || norm.startsWith('../') || norm.split('/').includes('..')) {
    throw new InvalidCheckpointPathError(`checkpoint event: path "${p}" must be a directory relative to $TANREN_CHECKPOINTS, without ".."`);
  }
  return norm;
}

/** The step of a checkpoint event: its `step`, else the last number in its path, else 0. */
function stepOf(ev: CheckpointEvent, cpPath: string): number {
  if (typeof ev.step === 'number' && Number.isFinite(ev.step)) return ev.step;
  const m = /(\d+)(?!.*\d)/.exec(cpPath);
  return m ? Number(m[1]) : 0;
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
  const retry = { ...opts.retry, onRetry };
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
      if (await withRetry(`checking ${manifestKey}`, () => storage.stat(manifestKey), retry)) {
        await withRetry(`removing ${manifestKey}`, () => storage.remove([manifestKey]), retry);
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
          await withRetry(`uploading ${key}`, () => storage.putFile(key, full), retry);
          files.push({ path: rel, size, sha256 });
        }
      }
      const manifest: CheckpointManifest = { runId, stage, step, path: cpPath, createdAt: new Date().toISOString(), prefix, files };
      // Written last: a manifest means every file it lists is complete.
      await withRetry(`writing ${manifestKey}`, () => storage.putText(manifestKey, JSON.stringify(manifest, null, 2)), retry);
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
    const all = await withRetry('listing checkpoints', () => listCheckpoints(storage, runId, stage), retry);
    for (const old of all.slice(keep)) {
      // Manifest first: a checkpoint without one is incomplete and never used.
      await withRetry(`removing ${old.key}`, () => storage.remove([old.key]), retry);
      const prefix = checkpointKeys.files(runId, stage, old.path);
      const objects = await withRetry(`listing ${prefix}`, () => storage.list(prefix), retry);
      for (let i = 0; i < objects.length; i += 1000) {
        const batch = objects.slice(i, i + 1000).map((o) => o.key);
        await withRetry(`removing files of ${old.path}`, () => storage.remove(batch), retry);
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

/** Parses a manifest; undefined when it is not one of `cpPath`. */
function parseManifest(text: string, cpPath?: string): CheckpointManifest | undefined {
  try {
    const m = JSON.parse(text) as CheckpointManifest;
    if (typeof m !== 'object' || !m || !Array.isArray(m.files) || typeof m.path !== 'string' || typeof m.step !== 'number') return undefined;
    if (cpPath !== undefined && m.path !== cpPath) return undefined;
    return m;
  } catch {
    return undefined;
  }
}

/**
 * The complete checkpoints (those with a manifest) of a stage of a run,
 * newest step first (ties: newest manifest first).
 */
export async function listCheckpoints(storage: ObjectStore, runId: string, stage: string): Promise<CheckpointRef[]> {
  const root = checkpointKeys.root(runId, stage);
  const found: Array<CheckpointRef & { createdAt: string }> = [];
  for (const obj of await storage.list(root)) {
    if (!obj.key.endsWith('/manifest.json')) continue;
    const cpPath = obj.key.slice(root.length, -'/manifest.json'.length);
    let text: string;
    try {
      text = await storage.getText(obj.key);
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code === 'NoSuchKey' || code === 'NotFound') continue; // deleted meanwhile
      throw err;
    }
    // A file named manifest.json inside a checkpoint's files/ is not a manifest of `cpPath`.
    const m = parseManifest(text, cpPath);
    if (m) found.push({ key: obj.key, path: cpPath, step: m.step, createdAt: m.createdAt ?? '' });
  }
  found.sort((a, b) => b.step - a.step || b.createdAt.localeCompare(a.createdAt));
  return found.map(({ key, path: p, step }) => ({ key, path: p, step }));
}

/** Options of {@link downloadCheckpoint}. */
export interface DownloadOptions {
  /** Connection settings of the bucket: files are then streamed and hashed in one pass (else `storage.getFile` + a hash pass). */
  s3?: ObjectStoreConfig;
  /** Files downloaded at once. @default 4 */
  concurrency?: number;
  log?: CheckpointLog;
}

const isMissing = (err: unknown) => {
  const code = (err as { code?: string } | undefined)?.code;
  return code === 'NoSuchKey' || code === 'NotFound';
};

/**
 * Downloads every file of a checkpoint into `destDir` (emptied first) and
 * verifies each file's size and sha256 against the manifest. Throws
 * {@link CheckpointCorruptError} when the manifest is unreadable, a file is
 * missing or differs; other errors (storage unavailable) are rethrown as they are.
 * @returns `destDir`
 */
export async function downloadCheckpoint(storage: ObjectStore, ref: CheckpointRef, destDir: string, opts: DownloadOptions = {}): Promise<string> {
  let text: string;
  try {
    text = await storage.getText(ref.key);
  } catch (err) {
    if (isMissing(err)) throw new CheckpointCorruptError(`checkpoint manifest ${ref.key} is missing (deleted by retention?)`, ref.key);
    throw err;
  }
  const manifest = parseManifest(text);
  if (!manifest) throw new CheckpointCorruptError(`checkpoint manifest ${ref.key} is not a valid checkpoint manifest`, ref.key);
  const mp = opts.s3 ? createMultipartClient(opts.s3) : undefined;
  const root = path.resolve(destDir);
  await rm(root, { recursive: true, force: true });
  await mkdir(root, { recursive: true });
  const one = async (f: ManifestEntry) => {
    const key = manifest.prefix + f.path;
    const dest = path.resolve(root, f.path);
    if (!dest.startsWith(root + path.sep))
      throw new CheckpointCorruptError(`checkpoint manifest ${ref.key}: file path "${f.path}" leaves the checkpoint directory`, ref.key);
    const remote = await storage.stat(key);
    if (!remote) throw new CheckpointCorruptError(`checkpoint ${ref.path}: object ${key} is missing (manifest says ${f.size} bytes, sha256 ${f.sha256})`, key);
    let digest: string;
    try {
      if (mp) {
        digest = await mp.downloadFile(key, dest, remote.size, { retry: { attempts: 3 } });
      } else {
        await storage.getFile(key, dest);
        digest = await sha256File(dest);
      }
    } catch (err) {
      if (isMissing(err)) throw new CheckpointCorruptError(`checkpoint ${ref.path}: object ${key} is missing (manifest says sha256 ${f.sha256})`, key);
      throw err;
    }
    const size = (await stat(dest)).size;
    if (digest !== f.sha256 || size !== f.size) {
      throw new CheckpointCorruptError(
        `checkpoint ${ref.path}: object ${key} has sha256 ${digest} (${size} bytes), manifest ${ref.key} says sha256 ${f.sha256} (${f.size} bytes)`,
        key,
      );
    }
  };
  // Largest first, `concurrency` files at a time.
  const queue = [...manifest.files].sort((a, b) => b.size - a.size);
  const workers = Array.from({ length: Math.max(1, opts.concurrency ?? 4) }, async () => {
    for (let f = queue.shift(); f; f = queue.shift()) await one(f);
  });
  const results = await Promise.allSettled(workers);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
  return root;
}

/** What {@link restoreLatestCheckpoint} restored, and what it passed over. */
export interface RestoredCheckpoint {
  ref: CheckpointRef;
  /** Local directory of the verified checkpoint: set `TANREN_RESUME_FROM` to it. */
  dir: string;
  skipped: Array<{ ref: CheckpointRef; reason: string }>;
}

/**
 * Downloads the newest usable checkpoint of a stage into `destRoot/<path>`:
 * the `hint` first (e.g. the last checkpoint of the previous attempt's
 * heartbeat details) if its manifest still exists, then every complete
 * checkpoint newest step first. Corrupt ones are skipped (with the reason) for
 * the previous one; storage errors are rethrown. Undefined when none is usable.
 */
export async function restoreLatestCheckpoint(
  storage: ObjectStore,
  runId: string,
  stage: string,
  destRoot: string,
  hint?: CheckpointRef,
  opts: DownloadOptions = {},
): Promise<RestoredCheckpoint | undefined> {
  const candidates: CheckpointRef[] = [];
  if (hint && typeof hint.key === 'string' && hint.key.startsWith(checkpointKeys.root(runId, stage)) && (await storage.stat(hint.key))) {
    candidates.push(hint);
  }
  for (const ref of await listCheckpoints(storage, runId, stage)) if (ref.key !== hint?.key) candidates.push(ref);
  // Newest first: the hint (the last checkpoint the previous attempt heartbeated) may be older than one
  // uploaded just before its worker died. Among equal steps the hint goes first (sort is stable).
  candidates.sort((a, b) => (b.step ?? -1) - (a.step ?? -1));
  const skipped: RestoredCheckpoint['skipped'] = [];
  for (const ref of candidates) {
    let dir: string;
    try {
      dir = path.join(destRoot, checkPath(ref.path));
    } catch (err) {
      skipped.push({ ref, reason: (err as Error).message });
      continue;
    }
    try {
      await downloadCheckpoint(storage, ref, dir, opts);
      return { ref, dir, skipped };
    } catch (err) {
      if (!(err instanceof CheckpointCorruptError)) throw err;
      await rm(dir, { recursive: true, force: true });
      skipped.push({ ref, reason: err.message });
      opts.log?.warn('checkpoint skipped', { path: ref.path, step: ref.step, reason: err.message });
    }
  }
  return undefined;
}
