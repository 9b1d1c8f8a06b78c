/**
 * Types exchanged between the pipeline workflow and the stage activities.
 * Type-only for the workflow: it imports nothing at run time from here.
 */
import type { StageSpec } from '../schemas/pipeline.js';

/** Where a needed stage's verified outputs are. */
export interface StageInputRef {
  stage: string;
  /** Object key of the needed stage's manifest. */
  manifestKey: string;
  /**
   * The manifest itself, when the needed stage was a local stage with a small manifest and this stage is local
   * too (neither task enters the history): saves reading it back. Absent otherwise; then it is read by its key.
   */
  manifest?: OutputManifest;
}

/**
 * A needed stage as a task names it. Without `manifestKey`, the manifest is this run's of that stage
 * (`runs/<run>/<stage>/manifest.json`): the workflow leaves such keys out of a task whose inputs would pass
 * 1 MiB (a fan-in of thousands of stages; the task is one payload of at most 2 MB).
 */
export type TaskInputRef = Omit<StageInputRef, 'manifestKey'> & { manifestKey?: string };

/** Everything an activity needs to run one stage, as the workflow sends it. */
export interface StageTask {
  runId: string;
  pipeline: string;
  stage: StageSpec;
  queue: 'cpu' | 'gpu';
  inputs: TaskInputRef[];
  /** Grace period between SIGTERM and SIGKILL on cancellation, ms. */
  killGraceMs?: number;
  /** Record the outputs in the cross-run cache after success. @default false */
  cache?: boolean;
  /**
   * Look the stage up in the cross-run cache first and return a verified hit
   * instead of running it (`StageResult.cache` says which). Set by runs that
   * check the cache inside `runStage` rather than in a `checkCache` activity. @default false
   */
  lookupCache?: boolean;
  /** Kill and retry (StageStalled) a stage that reported progress and then none for this long. */
  stallTimeoutMs?: number;
}

/** One file of a manifest. */
export interface ManifestEntry {
  path: string;
  size: number;
  sha256: string;
  /**
   * The object's exact key. Output manifests record it (the manifest is the pointer to one
   * attempt's objects); absent in checkpoint manifests and older output manifests: `prefix` + `path`.
   */
  key?: string;
}

/** The manifest of a stage's outputs, written after every file it lists. */
export interface OutputManifest {
  runId: string;
  stage: string;
  attempt: number;
  createdAt: string;
  /** Prefix under which `files` live: this attempt's own (`runs/<run>/<stage>/attempts/<n>-<token>/outputs/`). */
  prefix: string;
  files: ManifestEntry[];
  result: Record<string, unknown>;
}

/** One attempt of a stage, as the attempts themselves record it. */
export interface AttemptRecord {
  attempt: number;
  startedAt: string;
  endedAt?: string;
  /** `<FailureType>: <message>` of a failed attempt. */
  failure?: string;
}

/** What a successful stage returns to the workflow. */
export interface StageResult {
  stage: string;
  attempt: number;
  manifestKey: string;
  /** Prefix of this attempt's outputs (absent in results of older workers). */
  outputsPrefix?: string;
  files: number;
  bytes: number;
  result: Record<string, unknown>;
  metrics: Record<string, number>;
  /** The last progress the stage reported, so a finished stage shows its final step, not the last tick seen. */
  step?: number;
  total?: number;
  /** Every attempt of the stage, failed ones with their failure. */
  attempts?: AttemptRecord[];
  startedAt: string;
  endedAt: string;
  /**
   * What the cache look-up said, when the task asked for one (`lookupCache`):
   * on a hit nothing ran, and `manifestKey` is this run's copy of the cached manifest.
   */
  cache?: { hit: boolean; reason: string; fromRun?: string };
  /**
   * The manifest, from a local stage whose manifest is at most {@link HANDED_ON_MANIFEST_BYTES} as JSON:
   * the workflow hands it on to the local stages that need this one (see {@link StageInputRef.manifest}).
   */
  manifest?: OutputManifest;
}

/**
 * Largest manifest (as JSON) a local stage returns to be handed on. A local stage's result is recorded in its
 * marker event, so this bounds what handing on adds to the history: at most 2 KiB per stage.
 */
export const HANDED_ON_MANIFEST_BYTES = 2048;

/** Progress signal of runs started before progress moved to heartbeats; still accepted (and ignored) so old runs replay. */
export interface StageProgress {
  stage: string;
  attempt: number;
  kind: 'started' | 'progress' | 'attempt-failed';
  step?: number;
  total?: number;
  message?: string;
  metrics?: Record<string, number>;
  failure?: { type: string; message: string };
  at: string;
}
