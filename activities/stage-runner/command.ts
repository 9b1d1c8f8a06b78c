/**
 * Command building: the parameters, argv and environment a stage program is
 * started with (docs/stage-protocol.md). Pure: no files, no processes; the
 * caller passes what it read from the worker.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { FailureTypes } from '../../schemas/names.js';
import type { StageSpec } from '../../schemas/pipeline.js';
import { STAGE_KINDS, isStageKind } from '../../schemas/stage-kinds.js';
import { stageFailure } from '../errors.js';
import { DEFAULT_JUDGE_URLS, judgeUrlAllowed } from '../stage-env.js';
import type { AttemptDir } from './attempt-dir.js';
import type { BatchSettings } from './types.js';

/** The compiled project's root (dist/), where Node stage programs live. */
export const DIST_DIR = fileURLToPath(new URL('../../', import.meta.url));

/** Upper-cases a stage id for `TANREN_INPUT_<ID>`. */
export function inputEnvName(stageId: string): string {
  return `TANREN_INPUT_${stageId.toUpperCase().replace(/[^A-Z0-9]/g, '_')}`;
}

/** Values of the worker's credential variables, to keep them out of history. */
export function secretValues(env: NodeJS.ProcessEnv): string[] {
  return Object.entries(env)
    .filter(([k, v]) => v && (/^TANREN_S3_(ACCESS|SECRET)_KEY$/.test(k) || /^TANREN_JUDGE_.*KEY/.test(k) || /SECRET|PASSWORD|TOKEN/.test(k)))
    .map(([, v]) => v!);
}

/** The variable a stage's `with.judge.api_key_env` names, the only judge key it is given. */
export function judgeKeyNames(params: Record<string, unknown>): string[] {
  const name = (params.judge as { api_key_env?: unknown } | undefined)?.api_key_env;
  return typeof name === 'string' && name ? [name] : [];
}

/** The batch settings in a stage's parameters, when it has a micro-batch size. */
export function batchSettingsOf(params: Record<string, unknown>): BatchSettings | undefined {
  const micro = Number(params.micro_batch_size);
  if (!Number.isInteger(micro) || micro < 1) return undefined;
  const accum = Number(params.gradient_accumulation_steps ?? 1);
  return { micro_batch_size: micro, gradient_accumulation_steps: Number.isInteger(accum) && accum >= 1 ? accum : 1 };
}

/** A stage's parameters for one attempt. */
export interface StageParams {
  /** `with:` of the spec, with the settings an earlier attempt left for this one. */
  params: Record<string, unknown>;
  /** The batch settings this attempt runs with, when the stage has them. */
  settings: BatchSettings | undefined;
  /** True when an earlier OutOfMemory left a smaller micro-batch than the spec's. */
  shrunk: boolean;
}

/**
 * The parameters of an attempt: the stage's `with:`, where the stage has batch
 * settings overridden by those the previous attempt's heartbeat left
 * (`nextSettings`, smaller after an OutOfMemory).
 */
export function stageParams(stage: Pick<StageSpec, 'with'>, nextSettings?: BatchSettings): StageParams {
  const params: Record<string, unknown> = { ...(stage.with ?? {}) };
  const own = batchSettingsOf(params);
  let shrunk = false;
  if (nextSettings && own) {
    shrunk = nextSettings.micro_batch_size !== own.micro_batch_size;
    Object.assign(params, nextSettings);
  }
  return { params, settings: batchSettingsOf(params), shrunk };
}

/** Throws `StageConfigError` when `with.judge.base_url` is not a URL this worker may call. */
export function checkJudgeUrl(stageId: string, params: Record<string, unknown>, allowed: readonly string[] = DEFAULT_JUDGE_URLS): void {
  const judgeUrl = (params.judge as { base_url?: unknown } | undefined)?.base_url;
  if (typeof judgeUrl === 'string' && judgeUrl && !judgeUrlAllowed(judgeUrl, allowed)) {
    throw stageFailure(
      FailureTypes.StageConfigError,
      `stage "${stageId}": with.judge.base_url ${JSON.stringify(judgeUrl)} is not one this worker may call; ` +
        `allowed: ${allowed.join(', ')} (set TANREN_JUDGE_BASE_URLS on the worker)`,
    );
  }
}

/** Throws `StageConfigError` when the visible GPUs have less free memory than the stage's `memoryEstimateGiB`. */
export function checkGpuMemory(stageId: string, needGiB: number | undefined, freeGiB: number | undefined, cudaVisibleDevices: string | undefined): void {
  if (needGiB === undefined || freeGiB === undefined || freeGiB >= needGiB) return;
  throw stageFailure(
    FailureTypes.StageConfigError,
    `stage "${stageId}" needs about ${needGiB} GiB of GPU memory (memoryEstimateGiB) but only ${freeGiB.toFixed(1)} GiB is free` +
      `${cudaVisibleDevices !== undefined ? ` on CUDA_VISIBLE_DEVICES=${cudaVisibleDevices}` : ''}: ` +
      'lower micro_batch_size (and raise gradient_accumulation_steps to keep the batch), enable gradient_checkpointing, ' +
      'or fine-tune with LoRA/QLoRA instead of all weights',
    { needGiB, freeGiB },
  );
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

/** What the worker contributes to a stage's command. */
export interface CommandContext {
  /** Python of the stages environment; without it built-in Python kinds cannot run. */
  python?: string;
  /** The project root: its `stages/` directory goes first on PYTHONPATH. */
  projectDir: string;
  /** The worker's own PYTHONPATH, kept after `stages/`. */
  pythonPath?: string;
  /** Node for built-in Node kinds. @default process.execPath */
  node?: string;
  /** The attempt, named in a WorkerMisconfigured failure's details. */
  attempt: number;
}

/** A stage program's argv and the variables its kind adds to the environment. */
export interface StageCommand {
  argv: string[];
  extraEnv: Record<string, string>;
}

/**
 * The command of a stage: its `run:` argv as written, or the program of its
 * built-in kind (`uses:`): Node kinds run from dist/, Python kinds from the
 * stages environment with this clone's `stages/` first on PYTHONPATH.
 * A Python kind on a worker without a stages environment is a retryable
 * `WorkerMisconfigured`; an unknown kind is `InvalidPipelineSpec`.
 */
export function stageCommand(stage: Pick<StageSpec, 'id' | 'run' | 'uses' | 'gpus'>, ctx: CommandContext): StageCommand {
  const extraEnv: Record<string, string> = {};
  if (stage.run) return { argv: stage.run, extraEnv };
  if (stage.uses && isStageKind(stage.uses) && STAGE_KINDS[stage.uses].runtime === 'node') {
    return { argv: [ctx.node ?? process.execPath, path.join(DIST_DIR, STAGE_KINDS[stage.uses].module)], extraEnv };
  }
  if (stage.uses && isStageKind(stage.uses)) {
    if (!ctx.python) {
      // Retryable: the worker is at fault, not the run; a fixed (or another) worker takes the next attempt.
      throw stageFailure(
        FailureTypes.WorkerMisconfigured,
        `stage "${stage.id}" uses the built-in kind "${stage.uses}", but this worker has no stages environment: ` +
          'run `make stages` (or set TANREN_PYTHON to the Python of the stages environment) and restart the worker',
        { attempt: ctx.attempt },
      );
    }
    // The stages venv is shared by every clone; the code comes from this one.
    const stagesDir = path.join(ctx.projectDir, 'stages');
    extraEnv.PYTHONPATH = ctx.pythonPath ? `${stagesDir}${path.delimiter}${ctx.pythonPath}` : stagesDir;
    return { argv: launcherArgv(ctx.python, STAGE_KINDS[stage.uses].module, stage.gpus ?? 1), extraEnv };
  }
  throw stageFailure(FailureTypes.InvalidPipelineSpec, `stage "${stage.id}": unknown kind "${stage.uses}"`);
}

/** What names an attempt in the stage protocol's variables. */
export interface ProtocolContext {
  runId: string;
  pipeline: string;
  stageId: string;
  attempt: number;
  device: 'cpu' | 'cuda';
  cudaVisibleDevices?: string;
}

/**
 * The stage protocol's variables (TANREN_*), the kind's extra ones, and one
 * `TANREN_INPUT_<ID>` per needed stage; CUDA_VISIBLE_DEVICES when the worker
 * (or the stage's GPU slots) sets it. The worker's allowlisted variables are
 * added when the process starts (stage-env.ts `stageEnvironment`).
 */
export function stageProtocolEnv(
  ctx: ProtocolContext,
  dir: Pick<AttemptDir, 'paramsFile' | 'inputs' | 'output' | 'checkpoints' | 'eventsFile'>,
  extraEnv: Record<string, string>,
  inputEnv: Record<string, string>,
): Record<string, string> {
  const env: Record<string, string> = {
    TANREN_RUN_ID: ctx.runId,
    TANREN_PIPELINE: ctx.pipeline,
    TANREN_STAGE_ID: ctx.stageId,
    TANREN_ATTEMPT: String(ctx.attempt),
    TANREN_PARAMS: dir.paramsFile,
    TANREN_INPUTS: dir.inputs,
    TANREN_OUTPUT: dir.output,
    TANREN_CHECKPOINTS: dir.checkpoints,
    TANREN_EVENTS: dir.eventsFile,
    TANREN_DEVICE: ctx.device,
    PYTHONUNBUFFERED: '1',
    ...extraEnv,
    ...inputEnv,
  };
  if (ctx.cudaVisibleDevices !== undefined) env.CUDA_VISIBLE_DEVICES = ctx.cudaVisibleDevices;
  return env;
}
