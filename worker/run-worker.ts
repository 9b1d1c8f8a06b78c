/**
 * Worker entry points. A CPU worker serves pipeline workflows (the control
 * queue) and CPU stages in parallel; a GPU worker serves its host's GPU queue
 * (and its pool's, when it joins one), one stage per GPU.
 */
import { rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker, type WorkflowBundle } from '@temporalio/worker';
import type { Logger } from 'pino';
import { createActivities } from '../activities/index.js';
import { flushCacheRecords } from '../activities/cache.js';
import { pidInUse, stillRunning } from '../activities/process-identity.js';
import { INPUT_CACHE_DIR, readRunningRecords, sweepOrphanAttemptDirs } from '../activities/stage-runner/attempt-dir.js';
import { createObjectStore } from '../activities/storage/store.js';
import { gpuHostName, gpuQueueName, listSetting, objectStoreConfig, type TanrenEnv } from './config.js';
import { connectWorker } from './connection.js';
import { acquireGpuLocks, gpuFreeMemoryGiB, gpuLockDir, GpuSlots, probeGpu } from './gpu.js';
import { InputCache } from '../activities/input-cache.js';
import { gpuPoolQueue } from '../schemas/names.js';
import { defaultCacheDir, resolveStagesPython } from './stages-env.js';
import { cachedWorkflowBundle } from './workflow-bundle.js';

/** Options of {@link runWorker}. */
export interface RunWorkerOptions {
  queue: 'cpu' | 'gpu';
  env: TanrenEnv & { projectDir: string };
  logger: Logger;
  /** Override of the task queue served (tests use unique queues). */
  taskQueue?: string;
  /** GPU pool to join besides the host's own queue: also serves `tanren-gpu-pool-<pool>`. @default TANREN_GPU_POOL */
  pool?: string;
  /** Also serve the control queue (workflows); CPU workers do by default. */
  serveWorkflows?: boolean;
  controlTaskQueue?: string;
  /** Resolves when the worker should stop (besides SIGTERM/SIGINT). */
  stopWhen?: Promise<void>;
  /** Called once the worker polls. */
  onRunning?: () => void;
}

/** Path of the compiled workflows module the worker bundles. */
export const WORKFLOWS_PATH = fileURLToPath(new URL('../workflows/index.js', import.meta.url));
/** The checkout this code was compiled in (its lockfile pins the packages the bundle contains). */
const PROJECT_DIR = fileURLToPath(new URL('../../', import.meta.url));

let bundle: Promise<WorkflowBundle> | undefined;
/**
 * The workflow code's bundle, once per process: from the per-user cache when the same code was bundled
 * before (TANREN_CACHE, else ~/.cache/tanren), else built and stored there.
 */
export function workflowBundle(): Promise<WorkflowBundle> {
  bundle ??= cachedWorkflowBundle({ workflowsPath: WORKFLOWS_PATH, projectDir: PROJECT_DIR, cacheDir: defaultCacheDir() });
  return bundle;
}

/** Kills stage process groups a previous worker of this queue left running (it died without cleaning up). */
export async function reapOrphanStages(workRoot: string, queue: 'cpu' | 'gpu', logger: Logger): Promise<number> {
  let reaped = 0;
  for (const { name, file, rec } of await readRunningRecords(workRoot)) {
    if (!name.startsWith(`${queue}-`)) continue;
    if (rec && typeof rec.pgid === 'number') {
      // Another worker sharing the work directory is alive: its stages are not orphans.
      if (rec.worker && rec.worker.pid !== process.pid && stillRunning(rec.worker)) continue;
      // The leader's pid now belongs to an unrelated process: the stage's group is gone (Linux never reuses
      // the id of a group that still has members), so there is nothing of it to kill.
      if (!(rec.stageProcess && !stillRunning(rec.stageProcess) && pidInUse(rec.pgid))) {
        try {
          process.kill(-rec.pgid, 'SIGKILL');
          reaped++;
          logger.warn({ runId: rec.runId, stage: rec.stage, pgid: rec.pgid }, 'killed a stage left running by a worker that died');
        } catch {
          // already gone
        }
      }
    }
    // Reaped, gone, or unreadable: the record has served.
    await rm(file, { force: true });
  }
  return reaped;
}

/** Runs a worker until it is told to stop. */
export async function runWorker(opts: RunWorkerOptions): Promise<void> {
  const { env, logger, queue } = opts;
  const workRoot = path.resolve(env.TANREN_WORK_DIR ?? path.join(env.projectDir, '.tanren', 'work'));
  const s3 = objectStoreConfig(env);
  const storage = createObjectStore(s3);
  await storage.ensureBucket();

  let release: (() => void) | undefined;
  let device: 'cpu' | 'cuda' = 'cpu';
  const taskQueue = opts.taskQueue ?? (queue === 'gpu' ? gpuQueueName(env) : env.TANREN_CPU_QUEUE);
  if (queue === 'gpu') {
    const gpu = probeGpu();
    if (gpu.found) {
      // One lock per physical GPU, whatever the queue name or user: two workers never share a device.
      release = acquireGpuLocks(gpuLockDir(), env.TANREN_GPU_DEVICES);
      device = 'cuda';
      logger.info({ devices: gpu.devices, cudaVisibleDevices: env.TANREN_GPU_DEVICES }, 'GPU found');
    } else {
      logger.warn({ reason: gpu.reason }, 'no GPU found: GPU-queue stages will run on the CPU (fine for the tiny CPU profile, far too slow for real training)');
    }
  }
  await reapOrphanStages(workRoot, queue, logger);
  const swept = await sweepOrphanAttemptDirs(workRoot);
  for (const dir of swept.removed) logger.warn({ dir }, 'removed the attempt directory of a worker that died');
  for (const { dir, error } of swept.failed) logger.warn({ dir, error }, 'could not remove the attempt directory of a worker that died');
  // One slot per GPU, shared by the host's queue and the pool's: never more stages than GPUs.
  const slots =
    queue === 'gpu'
      ? new GpuSlots(listSetting(env.TANREN_GPU_DEVICES) ?? ['0'], device === 'cuda' ? { dir: gpuLockDir(), host: gpuHostName(env) } : undefined)
      : undefined;
  const pool = queue === 'gpu' ? (opts.pool ?? env.TANREN_GPU_POOL) : undefined;
  const queues = [taskQueue, ...(pool ? [gpuPoolQueue(pool)] : [])];
  const inputCache = env.TANREN_INPUT_CACHE_GIB > 0 ? new InputCache(path.join(workRoot, INPUT_CACHE_DIR), env.TANREN_INPUT_CACHE_GIB * 2 ** 30) : undefined;

  const activities = createActivities({
    storage,
    s3,
    config: {
      workRoot,
      projectDir: env.projectDir,
      python: resolveStagesPython({ projectDir: env.projectDir, envPython: env.TANREN_PYTHON }, logger),
      device,
      queue,
      ...(queue === 'gpu' ? { cudaVisibleDevices: env.TANREN_GPU_DEVICES, gpuFreeGiB: () => gpuFreeMemoryGiB(env.TANREN_GPU_DEVICES), gpuSlots: slots } : {}),
      inputCache,
      killGraceMs: env.TANREN_KILL_GRACE_MS,
      stageEnvNames: listSetting(env.TANREN_STAGE_ENV),
      judgeBaseUrls: listSetting(env.TANREN_JUDGE_BASE_URLS),
      secrets: [s3.accessKey, s3.secretKey],
      logUploadIntervalMs: env.TANREN_LOG_UPLOAD_INTERVAL_MS,
      prefork: env.TANREN_PREFORK === '1',
      keepWorkDirs: env.TANREN_KEEP_WORK_DIRS === '1',
    },
  });

  const connection = await connectWorker(env);
  const workers: Worker[] = [];
  try {
    for (const q of queues) {
      workers.push(
        await Worker.create({
          connection,
          namespace: env.TEMPORAL_NAMESPACE,
          taskQueue: q,
          activities,
          // One stage per GPU: a GPU worker takes no more tasks than it has slots (the slots then decide who runs).
          maxConcurrentActivityTaskExecutions: slots ? slots.size : env.TANREN_CPU_CONCURRENCY,
          // Live progress travels in heartbeats (no history events): send them this often at most.
          maxHeartbeatThrottleInterval: Math.max(env.TANREN_PROGRESS_INTERVAL_MS, 100),
          defaultHeartbeatThrottleInterval: Math.max(env.TANREN_PROGRESS_INTERVAL_MS, 100),
          shutdownGraceTime: `${Math.ceil(env.TANREN_KILL_GRACE_MS / 1000) + 5}s`,
          identity: `tanren-${queue}@${queue === 'gpu' ? gpuHostName(env) : os.hostname()}:${process.pid}`,
        }),
      );
    }
    if (opts.serveWorkflows ?? queue === 'cpu') {
      workers.push(
        await Worker.create({
          connection,
          namespace: env.TEMPORAL_NAMESPACE,
          taskQueue: opts.controlTaskQueue ?? env.TANREN_CONTROL_QUEUE,
          workflowBundle: await workflowBundle(),
          // `local: true` stages run here, as local activities of the workflow; this worker polls no activity tasks.
          activities,
          enableNonLocalActivities: false,
          maxConcurrentLocalActivityExecutions: env.TANREN_CPU_CONCURRENCY,
          identity: `tanren-control@${os.hostname()}:${process.pid}`,
        }),
      );
    }
    const running = Promise.all(workers.map((w) => w.run()));
    logger.info(
      { queue, taskQueues: queues, workflows: opts.serveWorkflows ?? queue === 'cpu', device, ...(slots ? { gpuSlots: slots.devices } : {}) },
      'worker running',
    );
    opts.onRunning?.();
    if (opts.stopWhen) {
      void opts.stopWhen.then(() => workers.forEach((w) => w.getState() === 'RUNNING' && w.shutdown()));
    }
    await running;
    // Cache records are written behind stage results: a worker that stops finishes writing them (a lost one
    // only costs a later run a cache hit).
    const unwritten = await flushCacheRecords();
    if (unwritten) logger.warn({ unwritten }, 'cache records not written before the worker stopped: later runs of those stages miss the cache');
    logger.info({ queue }, 'worker stopped');
  } finally {
    release?.();
    await connection.close();
  }
}
