/**
 * runStage: runs one stage as a child process that follows the stage protocol
 * (docs/stage-protocol.md), heartbeating its progress, and publishes its
 * outputs to object storage with a manifest written last.
 */
import { createWriteStream, type WriteStream } from 'node:fs';
import { mkdir, rm, writeFile, access } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { Context, CancelledFailure } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import { execa } from 'execa';
import { EXIT_CODE_FAILURES, FailureTypes, type FailureType } from '../schemas/names.js';
import { STAGE_KINDS, isStageKind } from '../schemas/stage-kinds.js';
import { computeCacheKey, lookupCache, recordCache, type CacheLookup } from './cache.js';
import { EventFileReader, type StageEvent } from './events.js';
import { stageFailure, storageFailure } from './errors.js';
import { createCheckpointUploader, restoreLatestCheckpoint, type CheckpointRef } from './checkpoints.js';
import { describeFiles, keys, sha256File, withStorageRetry, type ObjectStore, type ObjectStoreConfig } from './storage.js';
import { attemptToken, manifestFiles, outputKeys } from './object-keys.js';
import type { InputCache } from './input-cache.js';
import { identify } from './process-identity.js';
import { boundMetrics, boundResult, capHead, capTail, createRedactor, DEFAULT_JUDGE_URLS, judgeUrlAllowed, stageEnvironment } from './stage-env.js';
import type { AttemptRecord, OutputManifest, StageResult, StageTask } from './types.js';

/** What a run id (the workflow id) may look like: it names directories and object keys. */
const RUN_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$/;

/** Values of the worker's credential variables, to keep them out of history. */
function secretValues(env: NodeJS.ProcessEnv): string[] {
  return Object.entries(env)
    .filter(([k, v]) => v && (/^TANREN_S3_(ACCESS|SECRET)_KEY$/.test(k) || /^TANREN_JUDGE_.*KEY/.test(k) || /SECRET|PASSWORD|TOKEN/.test(k)))
    .map(([, v]) => v!);
}

/** The variable a stage's `with.judge.api_key_env` names, the only judge key it is given. */
function judgeKeyNames(params: Record<string, unknown>): string[] {
  const name = (params.judge as { api_key_env?: unknown } | undefined)?.api_key_env;
  return typeof name === 'string' && name ? [name] : [];
}

/** Settings of the worker that runs stages. */
export interface StageRunnerConfig {
  /** Directory under which each attempt gets its work directory. */
  workRoot: string;
  /** Current directory of stage processes (the project root, where `run:` paths resolve). */
  projectDir: string;
  /** Python of the stages environment, for built-in kinds. */
  python?: string;
  /** `cuda` when the worker found a GPU, else `cpu`. */
  device: 'cpu' | 'cuda';
  /** Value for CUDA_VISIBLE_DEVICES on GPU workers. */
  cudaVisibleDevices?: string;
  /** Queue this worker serves (`cpu`/`gpu`): names its running-process records. */
  queue: 'cpu' | 'gpu';
  /** How often the events file is read. @default 250 */
  pollIntervalMs?: number;
  /** How often the stage log is copied to object storage while it runs. @default 5000 */
  logUploadIntervalMs?: number;
  /** Grace period between SIGTERM and SIGKILL. @default 30000 */
  killGraceMs?: number;
  /** Keep attempt work directories after success (for debugging). @default false */
  keepWorkDirs?: boolean;
  /** How long uploads and downloads retry while object storage is unreachable. @default 90000 */
  storageRetryMs?: number;
  /** Free GPU memory in GiB of the visible devices, or undefined when unknown (checked against `memoryEstimateGiB`). */
  gpuFreeGiB?: () => number | undefined;
  /** The worker's environment, of which stages get only the allowlisted part. @default process.env */
  workerEnv?: NodeJS.ProcessEnv;
  /** Names of further worker variables stage programs may see (TANREN_STAGE_ENV). */
  stageEnvNames?: readonly string[];
  /** URL prefixes the MT-Bench judge may be called at (TANREN_JUDGE_BASE_URLS). @default local addresses only */
  judgeBaseUrls?: readonly string[];
  /** Values that must never enter a run's history (the worker's credentials): redacted from messages and results. */
  secrets?: readonly string[];
  /** Local content-addressed cache of stage inputs (activities/input-cache.ts); inputs are downloaded each time without it. */
  inputCache?: InputCache;
  /** The GPU worker's devices as exclusive slots: each gpu-queue stage takes `gpus` of them and gets their CUDA_VISIBLE_DEVICES. */
  gpuSlots?: GpuSlotPool;
}

/** What the stage runner needs of the GPU worker's slots (worker/gpu.ts `GpuSlots`). */
export interface GpuSlotPool {
  readonly size: number;
  acquire(n: number, owner: string, signal?: AbortSignal): Promise<{ readonly cudaVisibleDevices: string; release(): void }>;
}

/** Settings an OutOfMemory retry changes, carried to the next attempt in heartbeat details. */
export interface BatchSettings {
  micro_batch_size: number;
  gradient_accumulation_steps: number;
}

/**
 * Heartbeat details of a stage attempt: the live progress `tanren status` and
 * the UI's Pending Activities show (no history event per tick), and what the
 * next attempt must know. Written by one function, so every beat has it all.
 */
export interface StageHeartbeat {
  attempt: number;
  /** What the attempt is doing besides running the program (downloading inputs, uploading outputs…). */
  phase?: string;
  step?: number;
  total?: number;
  message?: string;
  metrics?: Record<string, number>;
  lastCheckpoint?: { path: string; step?: number };
  /** The newest checkpoint of this attempt that is complete in object storage: the next attempt resumes from it. */
  checkpoint?: CheckpointRef;
  /** The batch settings this attempt runs with, when the stage has them. */
  settings?: BatchSettings;
  /** Settings the next attempt must use: this attempt's, or smaller ones after an OutOfMemory. */
  nextSettings?: BatchSettings;
  /** When the program last reported progress (ISO time). */
  progressAt?: string;
  /** Every attempt so far with its failure, carried from attempt to attempt. */
  attempts?: AttemptRecord[];
}

/** Halves the micro-batch and doubles gradient accumulation (same effective batch); undefined at micro-batch 1. */
export function shrinkBatch(s: BatchSettings): BatchSettings | undefined {
  if (s.micro_batch_size <= 1) return undefined;
  const micro = Math.floor(s.micro_batch_size / 2);
  return { micro_batch_size: micro, gradient_accumulation_steps: Math.round((s.gradient_accumulation_steps * s.micro_batch_size) / micro) };
}

function batchSettingsOf(params: Record<string, unknown>): BatchSettings | undefined {
  const micro = Number(params.micro_batch_size);
  if (!Number.isInteger(micro) || micro < 1) return undefined;
  const accum = Number(params.gradient_accumulation_steps ?? 1);
  return { micro_batch_size: micro, gradient_accumulation_steps: Number.isInteger(accum) && accum >= 1 ? accum : 1 };
}

/** Dependencies of the stage activities, injected so tests can use real or fake ones. */
export interface StageRunnerDeps {
  storage: ObjectStore;
  /** Connection settings of the same bucket, for parallel multipart checkpoint uploads. */
  s3?: ObjectStoreConfig;
  config: StageRunnerConfig;
}

/** The compiled project's root (dist/), where Node stage programs live. */
export const DIST_DIR = fileURLToPath(new URL('../', import.meta.url));

/** Upper-cases a stage id for `TANREN_INPUT_<ID>`. */
export function inputEnvName(stageId: string): string {
  return `TANREN_INPUT_${stageId.toUpperCase().replace(/[^A-Z0-9]/g, '_')}`;
}

/** Directory of the records of stage process groups a worker has running. */
export function runningDir(workRoot: string): string {
  return path.join(workRoot, 'running');
}

function lastLines(lines: string[], n: number): string {
  return lines.slice(-n).join('\n');
}

/** Creates the `runStage` activity bound to its dependencies. */
export function createRunStage(deps: StageRunnerDeps) {
  const { storage, config } = deps;
  const redact = createRedactor([...(config.secrets ?? []), ...secretValues(config.workerEnv ?? process.env)]);
  const pollInterval = config.pollIntervalMs ?? 250;
  const logUploadInterval = config.logUploadIntervalMs ?? 5000;

  const runAttempt = async (
    task: StageTask,
    hb: StageHeartbeat,
    beat: (change?: Partial<StageHeartbeat>) => void,
    startedAt: string,
    cudaVisibleDevices = config.cudaVisibleDevices,
  ): Promise<StageResult> => {
    const ctx = Context.current();
    const attempt = ctx.info.attempt;
    const { stage, runId } = task;
    const log = ctx.log;
    const previous = (ctx.info.heartbeatDetails ?? undefined) as StageHeartbeat | undefined;
    if (!RUN_ID.test(runId)) {
      // The run id names directories that are removed recursively and object keys: it must be plain.
      throw stageFailure(
        FailureTypes.InvalidPipelineSpec,
        `run id ${JSON.stringify(runId.slice(0, 100))}: use letters, digits, ".", "_" and "-" (at most 200, starting with a letter or digit)`,
      );
    }

    const retryOpts = {
      totalMs: config.storageRetryMs,
      onRetry: (n: number, err: unknown) => {
        beat({ phase: `object storage unavailable, retrying (${n})` });
        log.warn('object storage unavailable, retrying', { stage: stage.id, retry: n, error: String(err) });
      },
    };
    const dir = path.join(config.workRoot, runId, stage.id, `attempt-${attempt}`);
    const dirs = {
      inputs: path.join(dir, 'inputs'),
      output: path.join(dir, 'output'),
      checkpoints: path.join(dir, 'checkpoints'),
    };
    await rm(dir, { recursive: true, force: true });
    for (const d of Object.values(dirs)) await mkdir(d, { recursive: true });
    const paramsFile = path.join(dir, 'params.json');
    const eventsFile = path.join(dir, 'events.jsonl');
    const logFile = path.join(dir, 'stage.log');
    const params: Record<string, unknown> = { ...(stage.with ?? {}) };
    if (previous?.nextSettings && batchSettingsOf(params)) {
      const smaller = previous.nextSettings.micro_batch_size !== batchSettingsOf(params)!.micro_batch_size;
      Object.assign(params, previous.nextSettings);
      if (smaller) log.info('running with the micro-batch an earlier OutOfMemory left', { stage: stage.id, ...previous.nextSettings });
    }
    const judgeUrl = (params.judge as { base_url?: unknown } | undefined)?.base_url;
    if (typeof judgeUrl === 'string' && judgeUrl && !judgeUrlAllowed(judgeUrl, config.judgeBaseUrls ?? DEFAULT_JUDGE_URLS)) {
      throw stageFailure(
        FailureTypes.StageConfigError,
        `stage "${stage.id}": with.judge.base_url ${JSON.stringify(judgeUrl)} is not one this worker may call; ` +
          `allowed: ${(config.judgeBaseUrls ?? DEFAULT_JUDGE_URLS).join(', ')} (set TANREN_JUDGE_BASE_URLS on the worker)`,
      );
    }
    const settings = batchSettingsOf(params);
    // Unless this attempt learns otherwise (an OutOfMemory), the next one runs as this one does.
    if (settings) hb.nextSettings = settings;
    hb.settings = settings;
    await writeFile(paramsFile, JSON.stringify(params, null, 2));

    if (task.queue === 'gpu' && config.device === 'cuda' && stage.memoryEstimateGiB !== undefined) {
      const free = config.gpuFreeGiB?.();
      if (free !== undefined && free < stage.memoryEstimateGiB) {
        throw stageFailure(
          FailureTypes.StageConfigError,
          `stage "${stage.id}" needs about ${stage.memoryEstimateGiB} GiB of GPU memory (memoryEstimateGiB) but only ${free.toFixed(1)} GiB is free` +
            `${cudaVisibleDevices !== undefined ? ` on CUDA_VISIBLE_DEVICES=${cudaVisibleDevices}` : ''}: ` +
            'lower micro_batch_size (and raise gradient_accumulation_steps to keep the batch), enable gradient_checkpointing, ' +
            'or fine-tune with LoRA/QLoRA instead of all weights',
          { needGiB: stage.memoryEstimateGiB, freeGiB: free },
        );
      }
    }
    await writeFile(eventsFile, '');

    // Inputs: every file of each needed stage's manifest, verified by digest.
    const inputEnv: Record<string, string> = {};
    for (const input of task.inputs) {
      let manifest: OutputManifest;
      try {
        manifest = JSON.parse(await withStorageRetry(() => storage.getText(input.manifestKey), retryOpts)) as OutputManifest;
      } catch (err) {
        throw storageFailure(`reading the manifest of stage "${input.stage}" (${input.manifestKey})`, err);
      }
      const target = path.join(dirs.inputs, input.stage);
      await mkdir(target, { recursive: true });
      let files;
      try {
        files = manifestFiles(manifest);
      } catch (err) {
        throw stageFailure(FailureTypes.InvalidStageInput, `stage "${stage.id}": ${(err as Error).message} (${input.manifestKey})`);
      }
      for (const f of files) {
        const dest = path.join(target, f.path);
        let digest: string;
        try {
          digest = await fetchInput(config.inputCache, f.sha256, dest, (to) => withStorageRetry(() => storage.getFile(f.key, to), retryOpts));
        } catch (err) {
          throw storageFailure(`downloading ${f.key} for stage "${stage.id}"`, err);
        }
        if (digest !== f.sha256) {
          throw stageFailure(
            FailureTypes.InvalidStageInput,
            `stage "${stage.id}": input ${f.key} from stage "${input.stage}" has sha256 ${digest}, manifest says ${f.sha256}`,
          );
        }
      }
      inputEnv[inputEnvName(input.stage)] = target;
      beat({ phase: `downloading inputs of ${input.stage}` });
    }

    let argv: string[];
    const extraEnv: Record<string, string> = {};
    if (stage.run) {
      argv = stage.run;
    } else if (stage.uses && isStageKind(stage.uses) && STAGE_KINDS[stage.uses].runtime === 'node') {
      argv = [process.execPath, path.join(DIST_DIR, STAGE_KINDS[stage.uses].module)];
    } else if (stage.uses && isStageKind(stage.uses)) {
      if (!config.python) {
        // Retryable: the worker is at fault, not the run; a fixed (or another) worker takes the next attempt.
        throw stageFailure(
          FailureTypes.WorkerMisconfigured,
          `stage "${stage.id}" uses the built-in kind "${stage.uses}", but this worker has no stages environment: ` +
            'run `make stages` (or set TANREN_PYTHON to the Python of the stages environment) and restart the worker',
          { attempt },
        );
      }
      argv = launcherArgv(config.python, STAGE_KINDS[stage.uses].module, stage.gpus ?? 1);
      // The stages venv is shared by every clone; the code comes from this one.
      const stagesDir = path.join(config.projectDir, 'stages');
      extraEnv.PYTHONPATH = process.env.PYTHONPATH ? `${stagesDir}${path.delimiter}${process.env.PYTHONPATH}` : stagesDir;
    } else {
      throw stageFailure(FailureTypes.InvalidPipelineSpec, `stage "${stage.id}": unknown kind "${stage.uses}"`);
    }

    const env: Record<string, string> = {
      TANREN_RUN_ID: runId,
      TANREN_PIPELINE: task.pipeline,
      TANREN_STAGE_ID: stage.id,
      TANREN_ATTEMPT: String(attempt),
      TANREN_PARAMS: paramsFile,
      TANREN_INPUTS: dirs.inputs,
      TANREN_OUTPUT: dirs.output,
      TANREN_CHECKPOINTS: dirs.checkpoints,
      TANREN_EVENTS: eventsFile,
      TANREN_DEVICE: config.device,
      PYTHONUNBUFFERED: '1',
      ...extraEnv,
      ...inputEnv,
    };
    if (cudaVisibleDevices !== undefined) env.CUDA_VISIBLE_DEVICES = cudaVisibleDevices;

    // Resume from the newest complete checkpoint in object storage (the previous attempt's, by heartbeat, else any).
    const resumeInfo: Record<string, unknown> = {};
    if (stage.checkpoint?.resume !== false) {
      try {
        const restored = await withStorageRetry(
          () => restoreLatestCheckpoint(storage, runId, stage.id, path.join(dir, 'resume'), previous?.checkpoint, { s3: deps.s3 }),
          retryOpts,
        );
        for (const skip of restored?.skipped ?? []) {
          log.warn('checkpoint skipped', { stage: stage.id, checkpoint: skip.ref.path, reason: skip.reason });
        }
        if (restored) {
          env.TANREN_RESUME_FROM = restored.dir;
          resumeInfo.resumed_from = restored.ref.path;
          resumeInfo.resumed_from_step = restored.ref.step;
          if (restored.skipped.length) {
            resumeInfo.checkpoints_skipped = restored.skipped.map((k) => `${k.ref.path}: ${k.reason}`).join('; ');
          }
          log.info('resuming from checkpoint', { stage: stage.id, checkpoint: restored.ref.path, step: restored.ref.step });
          hb.checkpoint ??= restored.ref;
          beat({
            message: `resumed from checkpoint ${restored.ref.path}${restored.skipped.length ? ` (skipped ${restored.skipped.map((k) => `${k.ref.path}: ${k.reason}`).join('; ')})` : ''}`,
          });
        }
      } catch (err) {
        throw storageFailure(`restoring the latest checkpoint of stage "${stage.id}"`, err);
      }
    }
    const uploader = createCheckpointUploader({
      storage,
      runId,
      stage: stage.id,
      checkpointsDir: dirs.checkpoints,
      keep: stage.checkpoint?.keep ?? 2,
      s3: deps.s3,
      signal: ctx.cancellationSignal,
      log: {
        info: (m, a) => {
          log.info(m, { stage: stage.id, ...a });
        },
        warn: (m, a) => {
          log.warn(m, { stage: stage.id, ...a });
        },
      },
    });

    const logStream: WriteStream = createWriteStream(logFile, { flags: 'a' });
    const tail: string[] = [];
    const record = (streamName: 'stdout' | 'stderr', raw: string) => {
      // The log goes to object storage and the worker's log: no credential value of the worker in either.
      const line = redact(raw);
      logStream.write(`${line}\n`);
      tail.push(line);
      if (tail.length > 50) tail.shift();
      log.info(line, { stage: stage.id, attempt, stream: streamName });
    };

    let child;
    try {
      child = execa(argv[0], argv.slice(1), {
        cwd: config.projectDir,
        // Only the allowlisted part of the worker's environment: never its S3, Temporal or credential variables.
        env: stageEnvironment(config.workerEnv ?? process.env, env, config.stageEnvNames, judgeKeyNames(params)),
        extendEnv: false,
        detached: true, // own process group, so cancellation reaches grandchildren too
        reject: false,
        stdin: 'ignore',
        buffer: false,
        cleanup: true,
      });
    } catch (err) {
      throw stageFailure(FailureTypes.StageConfigError, `stage "${stage.id}": cannot start ${argv[0]}: ${(err as Error).message}`);
    }
    // Listen before any await: output written at once would otherwise be lost.
    const streamsClosed: Array<Promise<void>> = [];
    for (const [name, stream] of [
      ['stdout', child.stdout],
      ['stderr', child.stderr],
    ] as const) {
      if (!stream) continue;
      const lines = createInterface({ input: stream });
      lines.on('line', (l) => record(name, l));
      streamsClosed.push(new Promise<void>((r) => lines.once('close', () => r())));
    }
    // The last lines arrive after the exit event; a grandchild holding the pipe must not stall us.
    const drained = (ms: number) => Promise.race([Promise.all(streamsClosed), new Promise((r) => setTimeout(r, ms))]);
    const pid = child.pid;
    const record_ = pid ? path.join(runningDir(config.workRoot), `${config.queue}-${pid}.json`) : undefined;
    if (record_) {
      await mkdir(path.dirname(record_), { recursive: true });
      // Who owns the group, and who it is: the reaper of a restarted worker kills it only if both checks say so.
      await writeFile(record_, JSON.stringify({ pgid: pid, runId, stage: stage.id, attempt, stageProcess: identify(pid!), worker: identify(process.pid) }));
    }

    const killGroup = (signal: NodeJS.Signals) => {
      if (!pid) return;
      try {
        process.kill(-pid, signal);
      } catch {
        // the group is already gone
      }
    };
    let cancelled = false;
    let killTimer: NodeJS.Timeout | undefined;
    const onCancel = () => {
      cancelled = true;
      log.info('cancelling stage: SIGTERM to its process group', { stage: stage.id });
      killGroup('SIGTERM');
      killTimer = setTimeout(() => killGroup('SIGKILL'), task.killGraceMs ?? config.killGraceMs ?? 30_000);
    };
    ctx.cancellationSignal.addEventListener('abort', onCancel, { once: true });

    const reader = new EventFileReader(eventsFile, (line, why) => {
      log.warn(`stage event ignored (${why})`, { stage: stage.id, line: line.slice(0, 200) });
    });
    const state = {
      step: undefined as number | undefined,
      total: undefined as number | undefined,
      message: undefined as string | undefined,
      metrics: {} as Record<string, number>,
      result: {} as Record<string, unknown>,
      checkpoints: [] as Array<{ path: string; step?: number }>,
      error: undefined as { type: string; message: string } | undefined,
    };
    // Liveness by progress: once the program has reported a step, it must keep doing so.
    let lastProgressAt: number | undefined;
    let stalled = false;
    const apply = (e: StageEvent) => {
      switch (e.event) {
        case 'progress':
          state.step = e.step;
          state.total = e.total ?? state.total;
          state.message = e.message ?? state.message;
          lastProgressAt = Date.now();
          break;
        case 'metric':
          Object.assign(state.metrics, e.values);
          break;
        case 'checkpoint':
          state.checkpoints.push({ path: e.path, step: e.step });
          try {
            uploader.announce({ path: e.path, step: e.step });
          } catch (err) {
            log.warn('checkpoint event ignored', { stage: stage.id, error: String(err) });
          }
          break;
        case 'result':
          Object.assign(state.result, e.values);
          break;
        case 'error':
          state.error = { type: e.type, message: e.message };
          break;
        case 'artifact':
          break;
        default:
          log.debug('unknown stage event', { event: (e as { event: string }).event });
      }
    };
    const pump = async (final: boolean) => {
      for (const e of await reader.poll()) apply(e);
      beat({
        phase: undefined,
        step: state.step,
        total: state.total,
        message: state.message,
        metrics: state.metrics,
        lastCheckpoint: state.checkpoints.at(-1),
        checkpoint: uploader.latest() ?? hb.checkpoint,
        ...(lastProgressAt !== undefined ? { progressAt: new Date(lastProgressAt).toISOString() } : {}),
      });
      if (!final && !stalled && task.stallTimeoutMs && lastProgressAt !== undefined && Date.now() - lastProgressAt > task.stallTimeoutMs) {
        stalled = true;
        log.warn('stage stalled: no progress within its stallTimeout; killing it', { stage: stage.id, step: state.step, stallTimeoutMs: task.stallTimeoutMs });
        // SIGKILL: a stopped (SIGSTOP) or deadlocked program may never act on SIGTERM.
        killGroup('SIGKILL');
      }
    };
    const logKey = keys.log(runId, stage.id, attempt);
    let lastLogUpload = Date.now();
    const uploadLog = async () => {
      try {
        await storage.putFile(logKey, logFile);
      } catch (err) {
        log.warn('stage log not uploaded', { error: String(err) });
      }
    };

    let done = false;
    let wake: (() => void) | undefined;
    let pollTimer: NodeJS.Timeout | undefined;
    const poller = (async () => {
      while (!done) {
        // Interruptible, so a finished stage is noticed at once rather than after a poll interval.
        await new Promise<void>((r) => {
          wake = r;
          pollTimer = setTimeout(r, pollInterval);
        });
        if (done) break;
        try {
          await pump(false);
        } catch (err) {
          log.warn('reading stage events failed', { error: String(err) });
        }
        if (Date.now() - lastLogUpload >= logUploadInterval) {
          lastLogUpload = Date.now();
          await uploadLog();
        }
      }
    })();

    const outcome = await child;
    done = true;
    clearTimeout(pollTimer);
    wake?.();
    await poller;
    if (killTimer) clearTimeout(killTimer);
    ctx.cancellationSignal.removeEventListener('abort', onCancel);
    await drained(2000);
    // A stage may leave grandchildren behind; they belong to its group.
    killGroup('SIGKILL');
    await drained(1000);
    if (record_) await rm(record_, { force: true });
    await pump(true);
    await new Promise<void>((r) => logStream.end(r));
    await uploadLog();
    // Checkpoints announced before the process ended still go up: the next attempt may need them.
    const uploading = setInterval(() => beat({ checkpoint: uploader.latest() ?? hb.checkpoint, phase: 'uploading checkpoints' }), 1000);
    let checkpointError: unknown;
    try {
      await uploader.flush();
    } catch (err) {
      checkpointError = err;
      log.warn('some checkpoints were not uploaded', { stage: stage.id, error: String(err) });
    } finally {
      clearInterval(uploading);
    }
    beat({ phase: undefined, checkpoint: uploader.latest() ?? hb.checkpoint });

    if (cancelled) {
      throw new CancelledFailure(`stage "${stage.id}" cancelled`);
    }

    if (outcome.exitCode !== 0 || outcome.signal) {
      let type: FailureType = FailureTypes.StageCrashed;
      let reason: string;
      if (outcome.signal) {
        reason = `killed by ${outcome.signal}`;
      } else {
        type = EXIT_CODE_FAILURES[outcome.exitCode ?? -1] ?? FailureTypes.StageCrashed;
        reason = `exited with code ${outcome.exitCode}`;
      }
      if (state.error && (Object.values(FailureTypes) as string[]).includes(state.error.type)) {
        type = state.error.type as FailureType;
      }
      if (stalled) {
        type = FailureTypes.StageStalled;
        reason = `stalled: no progress for ${Math.round(task.stallTimeoutMs! / 1000)} s after step ${state.step} (stallTimeout), killed`;
      }
      const said = capHead(redact(state.error?.message ?? tail.filter((l) => l.trim()).at(-1) ?? ''), 2000);
      let message = `stage "${stage.id}" ${reason}${said ? `: ${said}` : ''}`;
      const details = { attempt, exitCode: outcome.exitCode, signal: outcome.signal, logKey, logTail: capTail(redact(lastLines(tail, 20)), 4000), settings };
      // A stage without a micro-batch is retried as it is: the memory may have been taken by something else.
      if (type === FailureTypes.OutOfMemory && settings) {
        const next = shrinkBatch(settings);
        if (!next) {
          throw ApplicationFailure.create({
            type,
            nonRetryable: true,
            message: `${message} — micro_batch_size is already 1: enable gradient_checkpointing, shorten seq_len, use LoRA/QLoRA, or choose a smaller model`,
            details: [details],
          });
        }
        message += ` — next attempt: micro_batch_size=${next.micro_batch_size}, gradient_accumulation_steps=${next.gradient_accumulation_steps}`;
        // The next attempt reads these from the last heartbeat of this one.
        beat({ nextSettings: next });
      }
      throw stageFailure(type, message, details);
    }

    for (const expected of stage.outputs ?? []) {
      try {
        await access(path.join(dirs.output, expected));
      } catch {
        throw stageFailure(
          FailureTypes.InvalidStageOutput,
          `stage "${stage.id}" succeeded but did not write its declared output "${expected}" (outputs[] in the spec)`,
        );
      }
    }

    // This execution's own prefix: never one an earlier attempt (or a reset's re-run of this one) wrote to.
    const prefix = outputKeys.attempt(runId, stage.id, attempt, attemptToken());
    const files = (await describeFiles(dirs.output, { stage: stage.id })).map((f) => ({ ...f, key: prefix + f.path }));
    Object.assign(state.result, resumeInfo);
    if (checkpointError) state.result.checkpoint_upload_error = String((checkpointError as Error).message ?? checkpointError);
    const manifest: OutputManifest = {
      runId,
      stage: stage.id,
      attempt,
      createdAt: '',
      prefix,
      files,
      result: state.result,
    };
    try {
      for (const f of files) {
        await withStorageRetry(() => storage.putFile(f.key, path.join(dirs.output, f.path)), retryOpts);
        beat({ phase: `uploading outputs: ${f.path}` });
      }
      manifest.createdAt = new Date().toISOString();
      // Written last, and the only pointer to this attempt's objects: a manifest means every file it lists is complete.
      await withStorageRetry(() => storage.putText(keys.manifest(runId, stage.id), JSON.stringify(manifest, null, 2)), retryOpts);
    } catch (err) {
      if (err instanceof ApplicationFailure) throw err;
      throw storageFailure(`uploading the outputs of stage "${stage.id}"`, err);
    }
    if (task.cache) {
      try {
        const { key, parts } = await computeCacheKey(storage, stage, task.inputs, { projectDir: config.projectDir, distDir: DIST_DIR });
        await recordCache(storage, task.pipeline, {
          key,
          parts,
          manifestKey: keys.manifest(runId, stage.id),
          manifest,
          runId,
          stage: stage.id,
          createdAt: new Date().toISOString(),
        });
      } catch (err) {
        log.warn('cache entry not recorded', { stage: stage.id, error: String(err) });
      }
    }
    if (!config.keepWorkDirs) await rm(dir, { recursive: true, force: true });
    return {
      stage: stage.id,
      attempt,
      manifestKey: keys.manifest(runId, stage.id),
      outputsPrefix: prefix,
      files: files.length,
      bytes: files.reduce((n, f) => n + f.size, 0),
      result: boundResult(state.result, redact),
      metrics: boundMetrics(state.metrics),
      ...(state.step !== undefined ? { step: state.step } : {}),
      ...(state.total !== undefined ? { total: state.total } : {}),
      attempts: closeAttempt(hb),
      startedAt,
      endedAt: new Date().toISOString(),
    };
  };

  return async function runStage(task: StageTask): Promise<StageResult> {
    const ctx = Context.current();
    const attempt = ctx.info.attempt;
    const startedAt = new Date().toISOString();
    const previous = (ctx.info.heartbeatDetails ?? undefined) as StageHeartbeat | undefined;
    // Filled in as the attempt goes; every heartbeat sends all of it, so the next attempt (and `tanren status`) sees it.
    const hb: StageHeartbeat = {
      attempt,
      checkpoint: previous?.checkpoint,
      nextSettings: previous?.nextSettings,
      attempts: [...(previous?.attempts ?? []).filter((a) => a.attempt < attempt), { attempt, startedAt }].slice(-MAX_ATTEMPTS_KEPT),
    };
    const beat = (change: Partial<StageHeartbeat> = {}) => {
      Object.assign(hb, change);
      ctx.heartbeat({ ...hb });
    };
    let lease: { cudaVisibleDevices: string; release(): void } | undefined;
    try {
      lease = await takeGpus(config.gpuSlots, task, beat);
      return await runAttempt(task, hb, beat, startedAt, lease?.cudaVisibleDevices ?? config.cudaVisibleDevices);
    } catch (err) {
      if (!(err instanceof ApplicationFailure)) throw err;
      // Record this attempt's failure where the next attempt and the workflow will find it.
      const attempts = closeAttempt(hb, `${err.type ?? 'Error'}: ${err.message}`.slice(0, 1000));
      beat();
      const first = err.details?.[0];
      if (first && typeof first === 'object' && !Array.isArray(first)) {
        Object.assign(first, { attempt, attempts });
        throw err;
      }
      throw ApplicationFailure.create({
        type: err.type ?? undefined,
        message: err.message,
        nonRetryable: err.nonRetryable ?? false,
        details: [{ attempt, attempts }],
        cause: err.cause,
      });
    } finally {
      lease?.release();
    }
  };
}

/** Downloads one input file through the worker's input cache when it has one; returns the digest of what arrived. */
async function fetchInput(cache: InputCache | undefined, sha256: string, dest: string, download: (to: string) => Promise<void>): Promise<string> {
  if (cache) return (await cache.fetch(sha256, dest, download)).sha256;
  await download(dest);
  return sha256File(dest);
}

/**
 * Waits for the GPUs a gpu-queue stage needs (`gpus`, default 1) on a worker
 * with slots, heartbeating while it waits so the wait never looks like a lost
 * worker; a stage needing more GPUs than the worker has fails retryably, so a
 * worker with more can take it.
 */
async function takeGpus(
  slots: GpuSlotPool | undefined,
  task: StageTask,
  beat: (change?: Partial<StageHeartbeat>) => void,
): Promise<{ cudaVisibleDevices: string; release(): void } | undefined> {
  if (!slots || task.queue !== 'gpu') return undefined;
  const n = task.stage.gpus ?? 1;
  if (n > slots.size) {
    throw stageFailure(
      FailureTypes.WorkerMisconfigured,
      `stage "${task.stage.id}" needs ${n} GPUs (gpus) but this worker serves ${slots.size}: start a worker with more in TANREN_GPU_DEVICES, or lower gpus`,
    );
  }
  const ctx = Context.current();
  beat({ phase: `waiting for ${n} free GPU${n === 1 ? '' : 's'}` });
  const timer = setInterval(() => beat(), 5000);
  try {
    return await slots.acquire(n, `${task.runId}/${task.stage.id}`, ctx.cancellationSignal);
  } finally {
    clearInterval(timer);
  }
}

/**
 * The argv of a built-in Python kind: `python -m tanren_stages.<module>`, or
 * with several GPUs `python -m torch.distributed.run --nproc-per-node N -m …`
 * (torchrun: one data-parallel process per GPU).
 */
export function launcherArgv(python: string, module: string, gpus: number): string[] {
  if (gpus <= 1) return [python, '-m', `tanren_stages.${module}`];
  return [python, '-m', 'torch.distributed.run', '--standalone', `--nproc-per-node=${gpus}`, '-m', `tanren_stages.${module}`];
}

/** Attempts recorded in heartbeats (and a stage's result): the most kept. */
const MAX_ATTEMPTS_KEPT = 20;

/** Ends the current attempt's record (with its failure, if any); returns every attempt recorded. */
function closeAttempt(hb: StageHeartbeat, failure?: string): AttemptRecord[] {
  const current = hb.attempts?.at(-1);
  if (current && current.endedAt === undefined) {
    current.endedAt = new Date().toISOString();
    if (failure) current.failure = failure;
  }
  return hb.attempts ?? [];
}

/** Creates the `checkCache` activity: looks a stage up in the cross-run cache. */
export function createCheckCache(deps: StageRunnerDeps) {
  return async function checkCache(task: StageTask): Promise<CacheLookup> {
    try {
      const found = await lookupCache(deps.storage, task.pipeline, task.stage, task.inputs, { projectDir: deps.config.projectDir, distDir: DIST_DIR });
      if (!found.hit) return found;
      // Every run gets its own manifest, pointing at the cached objects by their exact keys, so the run stands on its own.
      const { manifest, ...hit } = found;
      const own = keys.manifest(task.runId, task.stage.id);
      const copy = { ...manifest, files: manifestFiles(manifest), cachedFrom: manifest.cachedFrom ?? found.fromRun };
      await deps.storage.putText(own, JSON.stringify(copy, null, 2));
      return { ...hit, manifestKey: own };
    } catch (err) {
      throw storageFailure(`looking up the cache for stage "${task.stage.id}"`, err);
    }
  };
}
