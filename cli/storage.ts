/**
 * What the CLI needs of a run's objects: the object store built from the
 * environment, read helpers (manifests, logs, partial reads for `logs
 * --follow`), and which stages a run has, from Temporal when it still knows
 * the run, else from the objects themselves.
 */
import type { Client } from '@temporalio/client';
import { defaultPayloadConverter, isGrpcServiceError } from '@temporalio/client';
import { mkdir, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { sha256File } from '../activities/files.js';
import { classifyStorageError, isNotFound } from '../activities/storage/errors.js';
import { keys } from '../activities/storage/keys.js';
import { createObjectStore, type ObjectStore } from '../activities/storage/store.js';
import type { ManifestEntry, OutputManifest } from '../activities/types.js';
import { objectStoreConfig, type TanrenEnv } from '../worker/config.js';
import { statusQuery, type RunResult } from '../workflows/pipeline.js';
import { CliError, client as connect } from './common.js';
import { ExitCodes } from './output.js';

/** The object store as the CLI uses it: its errors are {@link CliError}s that say what to fix. */
export type CliStore = ObjectStore;

/** gRPC status NOT_FOUND. */
const GRPC_NOT_FOUND = 5;

/** Turns object-storage errors people can act on into {@link CliError}s. */
function storageError(e: TanrenEnv, err: unknown): unknown {
  if (err instanceof CliError) return err;
  const kind = classifyStorageError(err);
  const code = (err as { code?: string }).code ?? '';
  if (kind === 'auth') {
    return new CliError(
      `object storage refused the credentials (${code || (err as Error).message}); check TANREN_S3_ACCESS_KEY/TANREN_S3_SECRET_KEY or TANREN_S3_CREDENTIALS_FILE`,
      ExitCodes.config,
    );
  }
  if (code === 'NoSuchBucket') {
    return new CliError(
      `bucket "${e.TANREN_BUCKET}" does not exist at ${e.TANREN_S3_ENDPOINT} (TANREN_BUCKET); no run has stored anything there`,
      ExitCodes.notFound,
    );
  }
  if (kind === 'transient') {
    return new CliError(
      `cannot reach object storage at ${e.TANREN_S3_ENDPOINT} (${(err as Error).message || code}); start it with \`infra/dev up\` or set TANREN_S3_ENDPOINT`,
      ExitCodes.unavailable,
    );
  }
  return err;
}

/** Builds the object store of the environment (credentials from env vars or the credentials file). */
export function cliStore(e: TanrenEnv): CliStore {
  const base = createObjectStore(objectStoreConfig(e));
  const wrapped = { ...base } as Record<string, unknown>;
  for (const [name, fn] of Object.entries(base)) {
    if (typeof fn !== 'function') continue;
    wrapped[name] = async (...args: unknown[]) => {
      try {
        return await (fn as (...a: unknown[]) => Promise<unknown>).apply(base, args);
      } catch (err) {
        throw storageError(e, err);
      }
    };
  }
  return wrapped as unknown as CliStore;
}

/** A stage's manifest, or undefined while it has none (not finished, failed, or no such stage). */
export async function readManifest(store: ObjectStore, run: string, stage: string): Promise<OutputManifest | undefined> {
  try {
    return JSON.parse(await store.getText(keys.manifest(run, stage))) as OutputManifest;
  } catch (err) {
    if (isNotFound(err)) return undefined;
    throw err;
  }
}

/** A stage's manifest and where it was found. */
export interface FoundManifest {
  manifest: OutputManifest;
  key: string;
  /** Set when the stage was a cache hit: the run whose outputs it reused. */
  cachedFrom?: string;
}

/**
 * Finds stage manifests of a run: the run's own (`runs/<run>/<stage>/manifest.json`)
 * or, for a stage the cache satisfied, the manifest of the run that produced
 * the outputs, whose key the workflow knows (its result, or its status query
 * while it runs). Asks Temporal at most once per run, and only when needed.
 */
export function manifestFinder(e: TanrenEnv, store: ObjectStore, run: string, c?: Client) {
  let fromWorkflow: Promise<Map<string, string>> | undefined;
  const workflowKeys = async (): Promise<Map<string, string>> => {
    const out = new Map<string, string>();
    let temporal = c;
    try {
      temporal ??= await connect(e);
    } catch {
      return out;
    }
    try {
      const handle = temporal.workflow.getHandle(run);
      const desc = await handle.describe();
      let stages: Array<{ id: string; manifestKey?: string }> = [];
      if (desc.status.name === 'COMPLETED') stages = ((await handle.result()) as RunResult).stages;
      else stages = (await handle.query(statusQuery)).stages;
      for (const s of stages) if (s.manifestKey) out.set(s.id, s.manifestKey);
    } catch {
      // Unknown to Temporal, or no worker answers the query: only the run's own manifests count.
    }
    return out;
  };
  return async (stage: string): Promise<FoundManifest | undefined> => {
    const own = await readManifest(store, run, stage);
    if (own) {
      // A cache hit's own manifest points at the outputs of the run that made them.
      const from = (own as OutputManifest & { cachedFrom?: string }).cachedFrom ?? (own.runId !== run ? own.runId : undefined);
      return { manifest: own, key: keys.manifest(run, stage), ...(from ? { cachedFrom: from } : {}) };
    }
    fromWorkflow ??= workflowKeys();
    const key = (await fromWorkflow).get(stage);
    if (!key || key === keys.manifest(run, stage)) return undefined;
    try {
      const manifest = JSON.parse(await store.getText(key)) as OutputManifest;
      return { manifest, key, ...(manifest.runId !== run ? { cachedFrom: manifest.runId } : {}) };
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  };
}

/**
 * Downloads the object `key` (a manifest entry's, see manifestObjectKey) to `target` through a temporary file and checks it against the manifest's sha256;
 * a file that does not match is deleted. Returns what went wrong (for the user), or undefined when `target` is good.
 */
export async function downloadVerified(store: ObjectStore, key: string, entry: ManifestEntry, target: string): Promise<string | undefined> {
  const part = `${target}.tanren-part-${process.pid}`;
  await mkdir(path.dirname(target), { recursive: true });
  try {
    await store.getFile(key, part);
  } catch (err) {
    await rm(part, { force: true });
    if (isNotFound(err)) return `${entry.path}: listed in the manifest but missing from s3://${store.bucket}/${key}`;
    throw err;
  }
  const actual = await sha256File(part);
  if (actual !== entry.sha256) {
    await rm(part, { force: true });
    return `${entry.path}: sha256 mismatch: the manifest says ${entry.sha256}, the downloaded file has ${actual}; deleted it`;
  }
  await rename(part, target);
  return undefined;
}

/** Attempt numbers that have a log object, ascending. */
export async function logAttempts(store: ObjectStore, run: string, stage: string): Promise<number[]> {
  const prefix = keys.logs(run, stage);
  const attempts: number[] = [];
  for (const o of await store.list(prefix)) {
    const m = /^attempt-(\d+)\.log$/.exec(o.key.slice(prefix.length));
    if (m) attempts.push(Number(m[1]));
  }
  return attempts.sort((a, b) => a - b);
}

/** What is known of a run's stages. */
export interface RunStages {
  run: string;
  /** Stage ids in spec order (from the run's input), or those with objects when Temporal no longer knows the run. */
  stages: string[];
  /** Temporal's status of the run (RUNNING, COMPLETED, …); undefined when Temporal does not know it. */
  temporalStatus?: string;
  /** Where the stage list came from. */
  source: 'temporal' | 'storage';
}

function stagesOfInput(input: unknown): string[] | undefined {
  const stages = (input as { spec?: { stages?: Array<{ id?: unknown }> } } | undefined)?.spec?.stages;
  if (!Array.isArray(stages)) return undefined;
  const ids = stages.map((s) => s?.id).filter((id): id is string => typeof id === 'string');
  return ids.length ? ids : undefined;
}

/**
 * The stages of `run`: from the input of its workflow (first history event) when
 * Temporal knows the run, else from the stage prefixes in object storage.
 * Throws a not-found {@link CliError} when neither knows the run.
 */
export async function runStages(e: TanrenEnv, store: CliStore, run: string, c?: Client): Promise<RunStages> {
  let temporal: Client | undefined = c;
  if (!temporal) {
    try {
      temporal = await connect(e);
    } catch (err) {
      // Temporal is down: the objects still say which stages ran.
      process.stderr.write(`warning: ${(err as Error).message}; listing what object storage holds\n`);
    }
  }
  if (temporal) {
    try {
      const handle = temporal.workflow.getHandle(run);
      const desc = await handle.describe();
      const history = await temporal.workflowService.getWorkflowExecutionHistory({
        namespace: e.TEMPORAL_NAMESPACE,
        execution: { workflowId: run, runId: desc.runId },
        maximumPageSize: 1,
      });
      const started = history.history?.events?.[0]?.workflowExecutionStartedEventAttributes;
      const payload = started?.input?.payloads?.[0];
      let stages: string[] | undefined;
      try {
        stages = payload ? stagesOfInput(defaultPayloadConverter.fromPayload(payload)) : undefined;
      } catch {
        // Not JSON, or not a tanren input: fall back to the objects.
      }
      if (stages) return { run, stages, temporalStatus: desc.status.name, source: 'temporal' };
      const stored = await store.listDirs(`runs/${run}/`);
      return { run, stages: stored, temporalStatus: desc.status.name, source: 'storage' };
    } catch (err) {
      const notFound = (err as Error).name === 'WorkflowNotFoundError' || (isGrpcServiceError(err) && Number(err.code) === GRPC_NOT_FOUND);
      if (!notFound) throw err;
    }
  }
  const stored = await store.listDirs(`runs/${run}/`);
  if (!stored.length) throw new CliError(`no such run: ${run} (neither Temporal nor object storage s3://${store.bucket}/runs/ knows it)`, ExitCodes.notFound);
  return { run, stages: stored, source: 'storage' };
}

/** Checks that `stage` is one of the run's stages; not-found error listing them otherwise. */
export function requireStage(known: RunStages, stage: string): void {
  if (!known.stages.includes(stage)) {
    throw new CliError(`run ${known.run} has no stage "${stage}" (stages: ${known.stages.join(', ') || 'none'})`, ExitCodes.notFound);
  }
}

/** `1.5 KiB`, `12 MiB`. */
export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = -1;
  do {
    v /= 1024;
    i++;
  } while (v >= 1024 && i < units.length - 1);
  return `${v >= 100 ? Math.round(v) : v.toFixed(1)} ${units[i]}`;
}
