/**
 * Fixed names shared by the CLI, the workflow and the workers: task queues,
 * workflow type, signals and queries, search attributes and failure types.
 * Pure constants only, so workflow code may import this file.
 */

/** Task queue of pipeline workflows (served by every CPU worker). */
export const CONTROL_TASK_QUEUE = 'tanren-control';

/** Task queue of CPU stages. @default 'tanren-cpu' */
export const DEFAULT_CPU_TASK_QUEUE = 'tanren-cpu';

/** Prefix of the per-host GPU task queue: `tanren-gpu-<host>`. */
export const GPU_TASK_QUEUE_PREFIX = 'tanren-gpu-';

/** Prefix of a GPU pool's task queue, served by every GPU host in the pool: `tanren-gpu-pool-<name>`. */
export const GPU_POOL_QUEUE_PREFIX = 'tanren-gpu-pool-';

/** The task queue of GPU pool `name`. */
export function gpuPoolQueue(name: string): string {
  return `${GPU_POOL_QUEUE_PREFIX}${name}`;
}

/** The task queue of one GPU host (a stage pinned with `host:` goes there). */
export function gpuHostQueue(host: string): string {
  return `${GPU_TASK_QUEUE_PREFIX}${host}`;
}

/** Most characters of a run id (the workflow id): it names directories and object keys. */
export const MAX_RUN_ID_CHARS = 200;

/** What a run id may look like: letters, digits, ".", "_" and "-", starting with a letter or digit. */
export const RUN_ID_PATTERN = new RegExp(`^[A-Za-z0-9][A-Za-z0-9._-]{0,${MAX_RUN_ID_CHARS - 1}}$`);

/** Workflow type name a `temporal`/`tctl` user passes as `--type`. */
export const PIPELINE_WORKFLOW_TYPE = 'pipelineWorkflow';

/** Search attribute names registered by `infra/dev up` (all Keyword). */
export const SEARCH_ATTRIBUTES = {
  pipeline: 'TanrenPipeline',
  stage: 'TanrenStage',
  status: 'TanrenStatus',
} as const;

/** Failure types that cross the Temporal boundary as `ApplicationFailure.type`. */
export const FailureTypes = {
  InvalidPipelineSpec: 'InvalidPipelineSpec',
  InvalidStageInput: 'InvalidStageInput',
  InvalidStageOutput: 'InvalidStageOutput',
  StageConfigError: 'StageConfigError',
  StageCrashed: 'StageCrashed',
  StorageUnavailable: 'StorageUnavailable',
  WorkerLost: 'WorkerLost',
  OutOfMemory: 'OutOfMemory',
  /** The stage reported progress, then none for its `stallTimeout`: killed and retried from its last checkpoint. */
  StageStalled: 'StageStalled',
  /** This worker cannot run the stage (e.g. no stages environment): retried, so a fixed or another worker can. */
  WorkerMisconfigured: 'WorkerMisconfigured',
} as const;

/** One of {@link FailureTypes}. */
export type FailureType = (typeof FailureTypes)[keyof typeof FailureTypes];

/** Failure types that must never be retried: retrying cannot change the outcome. */
export const NON_RETRYABLE_FAILURE_TYPES: readonly FailureType[] = [
  FailureTypes.InvalidPipelineSpec,
  FailureTypes.InvalidStageInput,
  FailureTypes.InvalidStageOutput,
  FailureTypes.StageConfigError,
];

/** Exit codes of the stage protocol (docs/stage-protocol.md) and the failure each maps to. */
export const EXIT_CODE_FAILURES: Readonly<Record<number, FailureType>> = {
  2: FailureTypes.InvalidStageInput,
  3: FailureTypes.StageConfigError,
  4: FailureTypes.OutOfMemory,
};
