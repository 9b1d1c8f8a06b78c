/**
 * runStage: runs one stage as a child process that follows the stage protocol
 * (docs/stage-protocol.md), heartbeating its progress, and publishes its
 * outputs to object storage with a manifest written last. This file composes
 * the steps in activities/stage-runner/: the attempt's directory, its inputs
 * and resume checkpoint, the command, the process, its monitor, the exit
 * classification and the publishing of its outputs, all heartbeating through
 * one writer.
 */
import { writeFile } from 'node:fs/promises';
import { Context, CancelledFailure } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import { computeCacheKey, type CacheKeyParts } from './cache.js';
import { createCheckpointUploader } from './checkpoints/uploader.js';
import { keys } from './storage/keys.js';
import type { RetryOptions } from './storage/retry.js';
import { stageFailure } from './errors.js';
import { boundMetrics, boundResult, capHead, capTail, createRedactor, stageEnvironment } from './stage-env.js';
import { HANDED_ON_MANIFEST_BYTES, type OutputManifest, type StageResult, type StageTask } from './types.js';
import { attemptDir, checkRunId, KEPT_AS_ASKED, markAttemptDirKept, prepareAttemptDir, removeAttemptDir, type AttemptDir } from './stage-runner/attempt-dir.js';
import { checkGpuMemory, checkJudgeUrl, DIST_DIR, judgeKeyNames, secretValues, stageCommand, stageParams, stageProtocolEnv } from './stage-runner/command.js';
import { classifyExit } from './stage-runner/exit-classification.js';
import { takeGpus, type GpuLease } from './stage-runner/gpus.js';
import { closeAttempt, createHeartbeat, type HeartbeatWriter } from './stage-runner/heartbeat.js';
import { downloadInputs, inputRefs, restoreResume } from './stage-runner/inputs.js';
import { startMonitor } from './stage-runner/monitor.js';
import { startStageProcess } from './stage-runner/process.js';
import { checkDeclaredOutputs, publishOutputs, recordInCache } from './stage-runner/publish.js';
import { lookupStage, type StageCacheLookup } from './stage-runner/check-cache.js';
import type { StageRunnerDeps } from './stage-runner/types.js';

export type { BatchSettings, GpuSlotPool, StageHeartbeat, StageRunnerConfig, StageRunnerDeps } from './stage-runner/types.js';
export { runningDir } from './stage-runner/attempt-dir.js';
export { DIST_DIR, inputEnvName, launcherArgv } from './stage-runner/command.js';
export { shrinkBatch } from './stage-runner/exit-classification.js';
export { createCheckCache } from './stage-runner/check-cache.js';

/** Why an attempt that failed keeps its directory, if it does; set as the attempt goes. */
interface AttemptEnding {
  keepBecause?: string;
  /** Kept for what exists nowhere else (not only while the worker may still use it): no later sweep removes it. */
  keepForPeople?: boolean;
}

/** What an attempt starts from: its task, its heartbeat writer and what the activity found before it. */
interface AttemptSetup {
  task: StageTask;
  heartbeat: HeartbeatWriter;
  startedAt: string;
  /** The devices of the GPU slots it holds (the worker's own on a worker without slots). */
  cudaVisibleDevices: string | undefined;
  /** A cache look-up's key, under which a success is recorded (none: computed when the task asks to be cached). */
  cacheKey?: { key: string; parts: CacheKeyParts };
  /** The inputs' manifests the look-up read (not read again). */
  inputManifests?: readonly OutputManifest[];
}

/** How often an attempt beats before its program runs (the SDK sends at most one per throttle interval). */
const KEEP_ALIVE_MS = 1000;

/** Creates the `runStage` activity bound to its dependencies. */
export function createRunStage(deps: StageRunnerDeps) {
  const { storage, config } = deps;
  const redact = createRedactor([...(config.secrets ?? []), ...secretValues(config.workerEnv ?? process.env)]);

  /**
   * One attempt in a directory of its own, removed when the attempt ends, whichever way: the log and the checkpoints
   * are in object storage by then, and a multi-day run's failed attempts would otherwise fill the worker's disk
   * with their checkpoints and restored copies. Kept only where something in it exists nowhere else.
   */
  const runAttempt = async (a: AttemptSetup): Promise<StageResult> => {
    const { task } = a;
    const ctx = Context.current();
    checkRunId(task.runId);
    const dir = attemptDir(config.workRoot, task.runId, task.stage.id, ctx.info.attempt);
    await prepareAttemptDir(dir);
    const ending: AttemptEnding = {};
    const removeDir = () =>
      removeAttemptDir(dir).catch((err: unknown) => {
        ctx.log.warn('attempt directory not removed', { dir: dir.dir, error: String(err) });
      });
    // Kept on request (TANREN_KEEP_WORK_DIRS=1), marked so that no later worker's sweep removes it either.
    const keepAsAsked = () => markAttemptDirKept(dir, KEPT_AS_ASKED).catch(() => undefined);
    try {
      const result = await runInDir(a, dir, ending);
      // Nothing reads the directory again: the result need not wait for its removal.
      if (config.keepWorkDirs) await keepAsAsked();
      else void removeDir();
      return result;
    } catch (err) {
      if (ending.keepBecause) ctx.log.warn(`attempt directory kept: ${ending.keepBecause}`, { stage: task.stage.id, dir: dir.dir });
      // What is only there stays for people, also after this worker is gone; a program that may still run is
      // killed by the next worker, which then removes its directory.
      if (ending.keepBecause && ending.keepForPeople) await markAttemptDirKept(dir, ending.keepBecause).catch(() => undefined);
      else if (config.keepWorkDirs) await keepAsAsked();
      else if (!ending.keepBecause) await removeDir();
      throw err;
    }
  };

  const runInDir = async (a: AttemptSetup, dir: AttemptDir, ending: AttemptEnding): Promise<StageResult> => {
    const { task, heartbeat, startedAt, cudaVisibleDevices, cacheKey, inputManifests } = a;
    const { hb, beat, previous } = heartbeat;
    const ctx = Context.current();
    const attempt = ctx.info.attempt;
    const { stage, runId } = task;
    const log = ctx.log;

    const retryOpts: RetryOptions = {
      policy: 'outage',
      totalMs: config.storageRetryMs,
      onRetry: (n: number, err: unknown) => {
        beat({ phase: `object storage unavailable, retrying (${n})` });
        log.warn('object storage unavailable, retrying', { stage: stage.id, retry: n, error: String(err) });
      },
    };
    const { params, settings, shrunk } = stageParams(stage, previous?.nextSettings);
    if (shrunk) log.info('running with the micro-batch an earlier OutOfMemory left', { stage: stage.id, ...previous!.nextSettings });
    checkJudgeUrl(stage.id, params, config.judgeBaseUrls);
    // Unless this attempt learns otherwise (an OutOfMemory), the next one runs as this one does.
    if (settings) hb.nextSettings = settings;
    hb.settings = settings;
    if (task.queue === 'gpu' && config.device === 'cuda' && stage.memoryEstimateGiB !== undefined) {
      checkGpuMemory(stage.id, stage.memoryEstimateGiB, config.gpuFreeGiB?.(), cudaVisibleDevices);
    }

    // Independent, so together: the params and events files, the inputs (every file of each needed stage's
    // manifest, verified by digest) and the newest complete checkpoint in object storage to resume from
    // (the previous attempt's, by heartbeat, else any). A reset re-runs attempt 1, so even a first attempt looks.
    // A local stage is short and leaves no heartbeat: it starts afresh.
    const resumable = stage.checkpoint?.resume !== false && !ctx.info.isLocal;
    const [, , { inputEnv, manifests: inputManifestsRead }, resume] = await Promise.all([
      writeFile(dir.paramsFile, JSON.stringify(params, null, 2)),
      writeFile(dir.eventsFile, ''),
      downloadInputs(storage, config.inputCache, stage.id, inputRefs(task), dir.inputs, beat, retryOpts, inputManifests),
      resumable ? restoreResume(storage, deps.s3, runId, stage.id, dir.resume, previous?.checkpoint, log, retryOpts) : undefined,
    ]);
    const { argv, extraEnv } = stageCommand(stage, { python: config.python, projectDir: config.projectDir, pythonPath: process.env.PYTHONPATH, attempt });
    const env = stageProtocolEnv(
      { runId, pipeline: task.pipeline, stageId: stage.id, attempt, device: config.device, cudaVisibleDevices },
      dir,
      extraEnv,
      inputEnv,
    );

    let resumeInfo: Record<string, unknown> = {};
    if (resume) {
      env.TANREN_RESUME_FROM = resume.dir;
      resumeInfo = resume.resultInfo;
      hb.checkpoint ??= resume.ref;
      const skipped = resume.resultInfo.checkpoints_skipped as string | undefined;
      beat({ message: `resumed from checkpoint ${resume.ref.path}${skipped ? ` (skipped ${skipped})` : ''}` });
    }
    const uploader = createCheckpointUploader({
      storage,
      runId,
      stage: stage.id,
      checkpointsDir: dir.checkpoints,
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

    // The key of the program about to run (it reads its code on disk when it starts), computed before it starts: a
    // GPU stage's look-up was in its checkCache activity, maybe long before, and the sources may change while it trains.
    const recordKey =
      cacheKey ??
      (task.cache
        ? await computeCacheKey(
            storage,
            stage,
            // The manifests the download just read: no second GET per input.
            inputRefs(task).map((input, i) => ({ ...input, manifest: inputManifestsRead[i] })),
            { projectDir: config.projectDir, distDir: DIST_DIR },
          ).catch((err: unknown) => {
            // A record lost costs a later run a hit, never this stage.
            log.warn('cache key not computed: this attempt records no cache entry', { stage: stage.id, error: String(err) });
            return undefined;
          })
        : undefined);
    const proc = await startStageProcess({
      argv,
      cwd: config.projectDir,
      // Only the allowlisted part of the worker's environment: never its S3, Temporal or credential variables.
      env: stageEnvironment(config.workerEnv ?? process.env, env, config.stageEnvNames, judgeKeyNames(params)),
      logFile: dir.logFile,
      redact,
      log,
      workRoot: config.workRoot,
      queue: config.queue,
      runId,
      stageId: stage.id,
      attempt,
      signal: ctx.cancellationSignal,
      killGraceMs: task.killGraceMs ?? config.killGraceMs ?? 30_000,
      // Not where a GPU is used: CUDA does not survive a fork, and a library that probes the GPU while it is imported would break every child.
      prefork: (config.prefork ?? false) && config.device !== 'cuda',
    });
    ending.keepBecause = 'its program may still be running';
    // From here the monitor beats on every poll of the program's events.
    heartbeat.stopKeepAlive();
    const logKey = keys.log(runId, stage.id, attempt);
    const uploadLog = async () => {
      // A local stage (short, on the hot path of a chain) that printed nothing costs no object write;
      // `tanren logs` says so. Other attempts always leave a log, empty or not.
      if (proc.loggedLines === 0 && ctx.info.isLocal) return;
      try {
        await storage.putFile(logKey, dir.logFile);
      } catch (err) {
        log.warn('stage log not uploaded', { error: String(err) });
      }
    };
    const monitor = startMonitor({
      eventsFile: dir.eventsFile,
      stageId: stage.id,
      log,
      uploader,
      hb,
      beat,
      stallTimeoutMs: task.stallTimeoutMs,
      // SIGKILL: a stopped (SIGSTOP) or deadlocked program may never act on SIGTERM.
      onStall: () => proc.killGroup('SIGKILL'),
      pollIntervalMs: config.pollIntervalMs ?? 250,
      logUploadIntervalMs: config.logUploadIntervalMs ?? 5000,
      uploadLog,
    });

    const outcome = await proc.exited;
    await monitor.stop();
    await proc.reap();
    ending.keepBecause = undefined;
    await monitor.pump(true);
    await proc.closeLog();
    // The final log goes up while the attempt finishes; every way out of this attempt waits for it.
    const logUploaded = uploadLog();
    try {
      const { state } = monitor;
      // Checkpoints announced before the process ended still go up: the next attempt may need them.
      const uploading = setInterval(() => beat({ checkpoint: uploader.latest() ?? hb.checkpoint, phase: 'uploading checkpoints' }), 1000);
      let checkpointError: unknown;
      try {
        await uploader.flush();
      } catch (err) {
        checkpointError = err;
        ending.keepBecause = 'some of its checkpoints are not in object storage';
        ending.keepForPeople = true;
        log.warn('some checkpoints were not uploaded', { stage: stage.id, error: String(err) });
      } finally {
        clearInterval(uploading);
      }
      beat({ phase: undefined, checkpoint: uploader.latest() ?? hb.checkpoint });

      if (proc.cancelled) {
        throw new CancelledFailure(`stage "${stage.id}" cancelled`);
      }

      const failure = classifyExit({
        stageId: stage.id,
        exitCode: outcome.exitCode,
        signal: outcome.signal,
        error: state.error,
        stalled: monitor.stalled,
        stallTimeoutMs: task.stallTimeoutMs,
        step: state.step,
        settings,
        said: capHead(redact(state.error?.message ?? proc.tail.filter((l) => l.trim()).at(-1) ?? ''), 2000),
      });
      if (failure) {
        const details = {
          attempt,
          exitCode: outcome.exitCode,
          signal: outcome.signal,
          logKey,
          logTail: capTail(redact(proc.tail.slice(-20).join('\n')), 4000),
          settings,
        };
        if (failure.nonRetryable) throw ApplicationFailure.create({ type: failure.type, nonRetryable: true, message: failure.message, details: [details] });
        // The next attempt reads these from the last heartbeat of this one.
        if (failure.nextSettings) beat({ nextSettings: failure.nextSettings });
        throw stageFailure(failure.type, failure.message, details);
      }

      await checkDeclaredOutputs(stage.id, stage.outputs ?? [], dir.output);
      Object.assign(state.result, resumeInfo);
      if (checkpointError) state.result.checkpoint_upload_error = String((checkpointError as Error).message ?? checkpointError);
      const published = await publishOutputs({
        storage,
        runId,
        stageId: stage.id,
        attempt,
        outputDir: dir.output,
        result: state.result,
        beat,
        retryOpts,
        afterManifest: task.cache && recordKey ? (p) => recordInCache(storage, task, p, log, recordKey) : undefined,
      });
      const { files } = published;
      const handOn = ctx.info.isLocal ? JSON.stringify(published.manifest) : undefined;
      return {
        stage: stage.id,
        attempt,
        manifestKey: published.manifestKey,
        outputsPrefix: published.prefix,
        files: files.length,
        bytes: files.reduce((n, f) => n + f.size, 0),
        result: boundResult(state.result, redact),
        metrics: boundMetrics(state.metrics),
        ...(state.step !== undefined ? { step: state.step } : {}),
        ...(state.total !== undefined ? { total: state.total } : {}),
        attempts: closeAttempt(hb),
        startedAt,
        endedAt: new Date().toISOString(),
        ...(handOn && handOn.length <= HANDED_ON_MANIFEST_BYTES ? { manifest: published.manifest } : {}),
      };
    } finally {
      await logUploaded;
    }
  };

  /** The look-up of a task that asks for one; the attempt's keep-alive beats while a hit's objects are verified (about 5 s per GiB). */
  const lookUp = async (task: StageTask, beat: HeartbeatWriter['beat']): Promise<StageCacheLookup> => {
    beat({ phase: 'checking the cache' });
    try {
      return await lookupStage(storage, task, config.projectDir);
    } finally {
      beat({ phase: undefined });
    }
  };

  /** A verified hit: the run's own copy of the cached manifest; nothing runs. */
  const cacheHit = (task: StageTask, hit: Extract<StageCacheLookup, { hit: true }>, startedAt: string): StageResult => ({
    stage: task.stage.id,
    attempt: 0,
    manifestKey: hit.manifestKey,
    files: hit.files,
    bytes: hit.bytes,
    result: hit.result,
    metrics: {},
    attempts: [],
    startedAt,
    endedAt: new Date().toISOString(),
    cache: { hit: true, reason: hit.reason, fromRun: hit.fromRun },
  });

  return async function runStage(task: StageTask): Promise<StageResult> {
    const ctx = Context.current();
    const attempt = ctx.info.attempt;
    const startedAt = new Date().toISOString();
    // Filled in as the attempt goes; every heartbeat sends all of it, so the next attempt (and `tanren status`) sees it.
    const heartbeat = createHeartbeat(ctx, startedAt);
    const { hb, beat } = heartbeat;
    let lease: GpuLease | undefined;
    let lookup: StageCacheLookup | undefined;
    // Until the program runs: see keepAlive (a first attempt timed out waiting for a zygote with a 10 s heartbeatTimeout).
    heartbeat.keepAlive(KEEP_ALIVE_MS);
    try {
      if (task.lookupCache) {
        lookup = await lookUp(task, beat);
        if (lookup.hit) return cacheHit(task, lookup, startedAt);
      }
      lease = await takeGpus(config.gpuSlots, task, beat);
      const cacheKey = lookup ? { key: lookup.key, parts: lookup.parts } : undefined;
      const result = await runAttempt({
        task,
        heartbeat,
        startedAt,
        cudaVisibleDevices: lease?.cudaVisibleDevices ?? config.cudaVisibleDevices,
        cacheKey,
        inputManifests: lookup?.hit === false ? lookup.inputManifests : undefined,
      });
      return lookup ? { ...result, cache: { hit: false, reason: await lookup.reason } } : result;
    } catch (err) {
      if (!(err instanceof ApplicationFailure)) throw err;
      // Record this attempt's failure where the next attempt and the workflow will find it.
      const attempts = closeAttempt(hb, `${err.type ?? 'Error'}: ${err.message}`.slice(0, 1000));
      beat();
      const first = err.details?.[0];
      // What the cache said, for the run's status (the look-up happened in this activity).
      const said = { attempt, attempts, ...(lookup ? { cache: await lookup.reason } : {}) };
      if (first && typeof first === 'object' && !Array.isArray(first)) {
        Object.assign(first, said);
        throw err;
      }
      throw ApplicationFailure.create({
        type: err.type ?? undefined,
        message: err.message,
        nonRetryable: err.nonRetryable ?? false,
        details: [said],
        cause: err.cause,
      });
    } finally {
      heartbeat.stopKeepAlive();
      lease?.release();
    }
  };
}
