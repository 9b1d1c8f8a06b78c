/**
 * Verified download of a checkpoint, and restore-with-fallback for retried
 * attempts: the newest complete checkpoint whose every file matches its
 * manifest, skipping corrupt ones for the one before.
 */
import { mkdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { sha256File } from '../files.js';
import type { ObjectStoreConfig } from '../storage/client.js';
import { isNotFound } from '../storage/errors.js';
import { checkpointKeys } from '../storage/keys.js';
import { createMultipartClient } from '../storage/multipart.js';
import type { ObjectStore } from '../storage/store.js';
import type { ManifestEntry } from '../types.js';
import { checkPath, CheckpointCorruptError, listCheckpoints, parseManifest, type CheckpointLog, type CheckpointRef } from './manifest.js';

/** Options of {@link downloadCheckpoint}. */
export interface DownloadOptions {
  /** Connection settings of the bucket: files are then streamed and hashed in one pass (else `storage.getFile` + a hash pass). */
  s3?: ObjectStoreConfig;
  /** Files downloaded at once. @default 4 */
  concurrency?: number;
  log?: CheckpointLog;
}

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
    if (isNotFound(err)) throw new CheckpointCorruptError(`checkpoint manifest ${ref.key} is missing (deleted by retention?)`, ref.key);
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
      if (isNotFound(err)) throw new CheckpointCorruptError(`checkpoint ${ref.path}: object ${key} is missing (manifest says sha256 ${f.sha256})`, key);
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
