/**
 * Every object key tanren writes, in one place. The bucket holds:
 *
 *     runs/<run>/<stage>/attempts/<n>-<token>/outputs/<files>   one attempt execution's outputs
 *     runs/<run>/<stage>/manifest.json                          the stage's manifest, written last
 *     runs/<run>/<stage>/logs/attempt-<n>.log                   each attempt's log
 *     runs/<run>/<stage>/checkpoints/<path>/{files/…, manifest.json}
 *     cache/keys/<key>.json, cache/stages/<pipeline>/<stage>.json
 *
 * Each attempt execution uploads its outputs under a prefix of its own, and
 * the stage's manifest (written last) lists the exact key of every object:
 * the manifest is the pointer, so a reader never sees a mix of two attempts,
 * and an attempt never overwrites objects another run's manifest (a cache
 * hit) still points at.
 */
import { randomBytes } from 'node:crypto';
import type { ManifestEntry, OutputManifest } from '../types.js';

/** Keys of a stage of a run. */
export const keys = {
  /** Prefix of everything of one stage of a run: `runs/<run>/<stage>/`. */
  stagePrefix: (runId: string, stage: string) => `runs/${runId}/${stage}/`,
  /** The stage's manifest: `runs/<run>/<stage>/manifest.json`. */
  manifest: (runId: string, stage: string) => `runs/${runId}/${stage}/manifest.json`,
  /** Prefix of the stage's attempt logs. */
  logs: (runId: string, stage: string) => `runs/${runId}/${stage}/logs/`,
  /** One attempt's log: `runs/<run>/<stage>/logs/attempt-<n>.log`. */
  log: (runId: string, stage: string, attempt: number) => `runs/${runId}/${stage}/logs/attempt-${attempt}.log`,
};

/** Output prefixes of a stage. */
export const outputKeys = {
  /**
   * Prefix of one attempt execution's outputs: `runs/<run>/<stage>/attempts/<n>-<token>/outputs/`.
   * The token differs per execution, so a reset that runs attempt 1 again writes somewhere new.
   */
  attempt: (runId: string, stage: string, attempt: number, token: string) => `runs/${runId}/${stage}/attempts/${attempt}-${token}/outputs/`,
  /** Where manifests written before per-attempt prefixes keep their files: `runs/<run>/<stage>/outputs/`. */
  legacy: (runId: string, stage: string) => `runs/${runId}/${stage}/outputs/`,
};

/** Keys of checkpoints (`<path>` as the stage announced it, relative to `$TANREN_CHECKPOINTS`). */
export const checkpointKeys = {
  /** Prefix of all checkpoints of a stage of a run. */
  root: (runId: string, stage: string) => `runs/${runId}/${stage}/checkpoints/`,
  /** Prefix of one checkpoint. */
  checkpoint: (runId: string, stage: string, cpPath: string) => `runs/${runId}/${stage}/checkpoints/${cpPath}/`,
  /** Prefix of one checkpoint's files. */
  files: (runId: string, stage: string, cpPath: string) => `runs/${runId}/${stage}/checkpoints/${cpPath}/files/`,
  /** Key of one checkpoint's manifest, written after all its files. */
  manifest: (runId: string, stage: string, cpPath: string) => `runs/${runId}/${stage}/checkpoints/${cpPath}/manifest.json`,
};

/** Keys of the cross-run cache. */
export const cacheKeys = {
  /** The entry of one cache key. */
  entry: (key: string) => `cache/keys/${key}.json`,
  /** The latest entry of a stage of a pipeline (a miss says what changed against it). */
  lastOfStage: (pipeline: string, stage: string) => `cache/stages/${pipeline}/${stage}.json`,
};

/** A fresh token for {@link outputKeys.attempt}: 8 hex digits. */
export function attemptToken(): string {
  return randomBytes(4).toString('hex');
}

/** What names a manifest's objects; `prefix` and the entries' `key` are absent in older manifests. */
type ManifestWhere = Pick<OutputManifest, 'runId' | 'stage'> & { prefix?: string };

/**
 * The object key of one file of a manifest: its recorded `key`, or for an
 * older manifest without keys its `prefix` (else the legacy prefix) plus its path.
 * Throws when a recorded key is not a key under `runs/`.
 */
export function manifestObjectKey(manifest: ManifestWhere, entry: ManifestEntry): string {
  if (entry.key !== undefined) {
    if (typeof entry.key !== 'string' || !entry.key.startsWith('runs/') || entry.key.split('/').some((s) => s === '..' || s === '.')) {
      throw new Error(
        `manifest of stage "${manifest.stage}" (run ${manifest.runId}): file "${entry.path}" has key ${JSON.stringify(entry.key)}, not an object key under runs/`,
      );
    }
    return entry.key;
  }
  return (manifest.prefix ?? outputKeys.legacy(manifest.runId, manifest.stage)) + entry.path;
}

/** The manifest's files, each with its object key (derived for an older manifest). */
export function manifestFiles(manifest: ManifestWhere & { files: ReadonlyArray<ManifestEntry> }): Array<ManifestEntry & { key: string }> {
  return manifest.files.map((f) => ({ ...f, key: manifestObjectKey(manifest, f) }));
}
