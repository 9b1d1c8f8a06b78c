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
}

/** Everything an activity needs to run one stage. */
export interface StageTask {
  runId: string;
  pipeline: string;
  stage: StageSpec;
  queue: 'cpu' | 'gpu';
  inputs: StageInputRef[];
  /** Grace period between SIGTERM and SIGKILL on cancellation, ms. */
  killGraceMs?: number;
  /** Record the outputs in the cross-run cache after success. @default false */
  cache?: boolean;
}

/** One file of a manifest. */
export interface ManifestEntry {
  path: string;
  size: number;
  sha256: string;
}

/** The manifest of a stage's outputs, written after every file it lists. */
export interface OutputManifest {
  runId: string;
  stage: string;
  attempt: number;
  createdAt: string;
  /** Prefix under which `files` live. */
  prefix: string;
  files: ManifestEntry[];
  result: Record<string, unknown>;
}

/** What a successful stage returns to the workflow. */
export interface StageResult {
  stage: string;
  attempt: number;
  manifestKey: string;
  files: number;
  bytes: number;
  result: Record<string, unknown>;
  metrics: Record<string, number>;
  startedAt: string;
  endedAt: string;
}

/** Live progress of a stage, sent to the workflow as a signal and kept in heartbeats. */
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
