/**
 * What a checkpoint in object storage is: its reference, its manifest, the
 * rules for the path a stage announces, the errors of checkpoint handling,
 * and the listing of a stage's complete checkpoints. Keys: checkpointKeys in
 * activities/storage/keys.ts.
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
import path from 'node:path';
import { isNotFound } from '../storage/errors.js';
import { checkpointKeys } from '../storage/keys.js';
import type { ObjectStore } from '../storage/store.js';
import type { ManifestEntry } from '../types.js';

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

/** Validates an announced path: relative, no `..`, `/` separators; returns it normalized. */
export function checkPath(p: unknown): string {
  if (typeof p !== 'string' || !p.trim()) throw new InvalidCheckpointPathError(`checkpoint event: "path" must be a non-empty string, got ${JSON.stringify(p)}`);
  const norm = path.posix.normalize(p.replace(/\\/g, '/')).replace(/\/+$/, '');
  if (path.posix.isAbsolute(norm) || norm === '.' || norm === '..' || norm.startsWith('../') || norm.split('/').includes('..')) {
    throw new InvalidCheckpointPathError(`checkpoint event: path "${p}" must be a directory relative to $TANREN_CHECKPOINTS, without ".."`);
  }
  return norm;
}

/** The step of a checkpoint event: its `step`, else the last number in its path, else 0. */
export function stepOf(ev: CheckpointEvent, cpPath: string): number {
  if (typeof ev.step === 'number' && Number.isFinite(ev.step)) return ev.step;
  const m = /(\d+)(?!.*\d)/.exec(cpPath);
  return m ? Number(m[1]) : 0;
}

/** Parses a manifest; undefined when it is not one of `cpPath`. */
export function parseManifest(text: string, cpPath?: string): CheckpointManifest | undefined {
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
      if (isNotFound(err)) continue; // deleted meanwhile
      throw err;
    }
    // A file named manifest.json inside a checkpoint's files/ is not a manifest of `cpPath`.
    const m = parseManifest(text, cpPath);
    if (m) found.push({ key: obj.key, path: cpPath, step: m.step, createdAt: m.createdAt ?? '' });
  }
  found.sort((a, b) => b.step - a.step || b.createdAt.localeCompare(a.createdAt));
  return found.map(({ key, path: p, step }) => ({ key, path: p, step }));
}
