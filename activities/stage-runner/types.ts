/**
 * The stage runner's settings, dependencies and heartbeat details: the types
 * every step of activities/stage-runner/ shares (re-exported by run-stage.ts).
 */
import type { CheckpointRef } from '../checkpoints/manifest.js';
import type { ObjectStoreConfig } from '../storage/client.js';
import type { ObjectStore } from '../storage/store.js';
import type { InputCache } from '../input-cache.js';
import type { AttemptRecord } from '../types.js';

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
  /** Start built-in Python kinds from the zygote (stages/tanren_stages/zygote.py). @default false */
  prefork?: boolean;
  /**
   * Keep every attempt's work directory, succeeded or failed, for people to look into (`TANREN_KEEP_WORK_DIRS=1`);
   * each gets `.tanren-kept`, so no later worker's sweep removes it. @default false
   */
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

/** Dependencies of the stage activities, injected so tests can use real or fake ones. */
export interface StageRunnerDeps {
  storage: ObjectStore;
  /** Connection settings of the same bucket, for parallel multipart checkpoint uploads. */
  s3?: ObjectStoreConfig;
  config: StageRunnerConfig;
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

/** Sends a heartbeat with the attempt's details after applying `change` to them. */
export type Beat = (change?: Partial<StageHeartbeat>) => void;
