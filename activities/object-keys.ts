/**
 * Object keys of a stage's outputs. Each attempt execution uploads its
 * outputs under a prefix of its own, and the stage's manifest (written last)
 * lists the exact key of every object: the manifest is the pointer, so a
 * reader never sees a mix of two attempts, and an attempt never overwrites
 * objects another run's manifest (a cache hit) still points at.
 */
import { randomBytes } from 'node:crypto';
import type { ManifestEntry, OutputManifest } from './types.js';

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
