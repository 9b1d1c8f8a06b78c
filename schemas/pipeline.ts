/**
 * The pipeline spec: the single source of truth for what a YAML/JSON pipeline
 * may contain. Types are inferred from the schemas; the JSON Schema in
 * schemas/pipeline.schema.json is exported from them (`npm run schema:export`).
 * Pure code: the workflow validates its input with it too.
 */
import { z } from 'zod';
import { parseDuration } from './durations.js';

const STAGE_ID = /^[a-z0-9][a-z0-9_-]{0,62}$/;

/** A duration string such as `30s`, `10m`, `1h30m`. */
export const DurationSchema = z
  .string()
  .refine((v) => parseDuration(v) !== undefined, {
    message: 'not a duration: use a number with a unit, e.g. 500ms, 30s, 10m, 2h, 1d or 1h30m',
  })
  .describe('A duration: a number with a unit (ms, s, m, h, d), e.g. 30s, 10m, 1h30m');

const MIN_STAGE_DURATION_MS = 1000;
const MAX_STAGE_DURATION_MS = 30 * 86_400_000;

/** A stage timeout: a duration from 1 s to 30 d (shorter cannot start a process; longer outlives any sensible run). */
export const StageDurationSchema = DurationSchema.refine(
  (v) => {
    const ms = parseDuration(v);
    return ms === undefined || (ms >= MIN_STAGE_DURATION_MS && ms <= MAX_STAGE_DURATION_MS);
  },
  { message: 'out of range: a stage timeout is between 1s and 30d' },
);

const MAX_RETRY_INTERVAL_MS = 30 * 86_400_000;
const MAX_ATTEMPTS = 2 ** 31 - 1;

/**
 * A retry interval: a duration from 1 ms to 30 d. Shorter rounds to 0, which
 * Temporal refuses ("cannot be 0"); far longer (`999…9d`, up to Infinity) is no
 * time span a retry policy can carry: either way the stage would crash when
 * scheduled instead of the spec being refused.
 */
export const RetryIntervalSchema = DurationSchema.refine(
  (v) => {
    const ms = parseDuration(v);
    return ms === undefined || (ms >= 1 && ms <= MAX_RETRY_INTERVAL_MS);
  },
  { message: 'out of range: a retry interval is between 1ms and 30d' },
);

/** Retry policy of a stage's activity; unset fields fall back to `defaults.retry`. */
export const RetryPolicySchema = z
  .object({
    maximumAttempts: z
      .number()
      .int()
      .min(0)
      // Temporal keeps it as a 32-bit integer: 2^31 arrives negative and the server refuses to schedule the stage.
      .refine((n) => n <= MAX_ATTEMPTS, { message: `at most ${MAX_ATTEMPTS} (Temporal counts attempts in 32 bits); 0 is unlimited` })
      .optional()
      .describe('Attempts in all, 0 for unlimited. @default 3'),
    initialInterval: RetryIntervalSchema.optional().describe('Wait before the first retry. @default 1s'),
    backoffCoefficient: z.number().min(1).optional().describe('Each wait is the previous one times this. @default 2'),
    maximumInterval: RetryIntervalSchema.optional().describe('Longest wait between retries. @default 100 times initialInterval'),
  })
  .strict()
  .refine((r) => !r.initialInterval || !r.maximumInterval || (parseDuration(r.maximumInterval) ?? 0) >= (parseDuration(r.initialInterval) ?? 0), {
    message: 'maximumInterval must not be shorter than initialInterval',
    path: ['maximumInterval'],
  })
  .describe('How a failed stage is retried (Temporal retry policy)');

/** What to keep of a training stage's checkpoints. */
export const CheckpointPolicySchema = z
  .object({
    keep: z.number().int().min(1).optional().describe('Keep the newest N checkpoints in object storage. @default 2'),
    resume: z.boolean().optional().describe('Resume a retried attempt from the newest complete checkpoint. @default true'),
  })
  .strict()
  .describe('Checkpoint policy of a training stage');

/** Most trials one sweep may run: each trial-rung costs a few history events (docs/sweeps.md). */
export const MAX_SWEEP_TRIALS = 256;
/** Most rungs of an `asha` sweep. */
export const MAX_SWEEP_RUNGS = 8;
/**
 * Most trials the sweeps of one pipeline may run in all. Sweeps may run side by side, and a run continues as new
 * only between stages, so their trial-rungs' history events (at most ~12 per trial) add up in one execution; and
 * each trial's row (~340 bytes) travels in the run's state, status and result payloads (2 MB each at most).
 */
export const MAX_PIPELINE_SWEEP_TRIALS = 1024;
/**
 * Most bytes of trial parameters the sweeps of one pipeline may carry in all: each sweep's trials times its largest
 * trial's parameters as JSON. Every trial's parameters travel in the run's state, status and result (2 MB each at
 * most), so a long swept value multiplies by the trials (64 values of 9 KB drawn by 256 trials: 2.3 MB).
 */
export const MAX_PIPELINE_SWEEP_PARAMS_BYTES = 256 * 1024;

const SweepValueSchema = z.union([z.string(), z.number(), z.boolean()]);
const RangeSchema = z
  .tuple([z.number(), z.number()])
  .refine(([lo, hi]) => Number.isFinite(lo) && Number.isFinite(hi) && lo <= hi, { message: 'a range is [low, high] with low <= high' });

/** One swept parameter: a list of values, or a range sampled by `random`/`asha`. */
export const SweepSpaceSchema = z
  .union([
    z.array(SweepValueSchema).min(1).max(64).describe('The values to try (grid: every one; random/asha: one drawn per trial)'),
    z.object({ uniform: RangeSchema }).strict().describe('Uniform over [low, high]'),
    z
      .object({ log_uniform: RangeSchema.refine(([lo]) => lo > 0, { message: 'log_uniform needs low > 0' }) })
      .strict()
      .describe('Log-uniform over [low, high], e.g. learning rates'),
    z
      .object({ int_uniform: RangeSchema.refine(([lo, hi]) => Number.isInteger(lo) && Number.isInteger(hi), { message: 'int_uniform bounds are integers' }) })
      .strict()
      .describe('A uniform integer in [low, high]'),
  ])
  .describe('Values of one swept parameter');

/**
 * A hyperparameter sweep over a stage's `with:` parameters. Each trial runs the
 * stage with its own parameters and storage (`<stage>.trial-NN`); downstream
 * stages get the best trial's outputs.
 */
export const SweepSchema = z
  .object({
    scheduler: z
      .enum(['grid', 'random', 'asha'])
      .describe('grid: every combination of the listed values; random: `budget.trials` draws; asha: random draws, successive halving at rungs'),
    space: z.record(z.string(), SweepSpaceSchema).describe("Swept parameters: names of `with:` (or the kind's) parameters"),
    metric: z
      .object({
        name: z.string().min(1).describe('A metric the stage reports (e.g. loss, val_loss), or a number in its result'),
        goal: z.enum(['min', 'max']).optional().describe('@default min'),
      })
      .strict()
      .describe('What the sweep optimises'),
    budget: z
      .object({
        trials: z
          .number()
          .int()
          .min(1)
          .max(MAX_SWEEP_TRIALS)
          .optional()
          .describe(`Trials (random, asha; at most ${MAX_SWEEP_TRIALS}). grid: every combination`),
        steps: z
          .number()
          .int()
          .min(1)
          .max(10_000_000)
          .optional()
          .describe('asha: steps of the first rung (rung k ends at steps·eta^(k-1)); grid/random: steps of every trial. Sets `max_steps`'),
      })
      .strict()
      .default({})
      .describe('How much to spend'),
    eta: z.number().int().min(2).max(16).optional().describe('asha: each rung keeps the best 1/eta of the trials and runs them eta times longer. @default 2'),
    rungs: z.number().int().min(1).max(MAX_SWEEP_RUNGS).optional().describe('asha: number of rungs; the last ends at the full budget. @default 3'),
    seed: z
      .number()
      .int()
      .min(0)
      .max(2 ** 31 - 1)
      .optional()
      .describe('Seed of the trial draws: the same seed draws the same trials. @default 0'),
    parallel: z
      .number()
      .int()
      .min(1)
      .max(64)
      .optional()
      .describe('Trials of a rung issued at once; 1 time-slices one GPU, more lets a pool of GPU hosts split them. @default 1'),
  })
  .strict()
  .describe("Hyperparameter search over this stage's parameters");

/** One stage of a pipeline: a built-in kind (`uses`) or a command (`run`). */
export const StageSchema = z
  .object({
    id: z
      .string()
      .regex(STAGE_ID, 'stage ids are lower-case letters, digits, "-" and "_", starting with a letter or digit')
      .describe('Unique id of the stage; also the activity id in Temporal'),
    uses: z.string().optional().describe('A built-in stage kind, e.g. pretrain'),
    run: z.array(z.string()).min(1).optional().describe('A command following the stage protocol, as an argument array (no shell)'),
    version: z.string().optional().describe('Version of a `run` command, part of its cache key'),
    needs: z.array(z.string()).default([]).describe("Stages that must succeed first; their outputs become this stage's inputs"),
    queue: z.string().optional().describe("cpu or gpu; defaults to the kind's queue, or cpu for `run` stages"),
    with: z.record(z.string(), z.unknown()).default({}).describe('Parameters passed to the stage in its params file'),
    retry: RetryPolicySchema.optional(),
    timeout: StageDurationSchema.optional().describe('Longest one attempt may run (start-to-close)'),
    heartbeatTimeout: StageDurationSchema.optional().describe('Longest silence before an attempt counts as lost'),
    stallTimeout: StageDurationSchema.optional().describe(
      "Longest time a stage that has reported progress may go without reporting more before it is killed and retried as StageStalled. @default the kind's (30m for training kinds), none for `run` stages",
    ),
    checkpoint: CheckpointPolicySchema.optional(),
    cache: z.boolean().optional().describe('Reuse outputs of an identical earlier run. @default true'),
    local: z
      .boolean()
      .optional()
      .describe(
        "Run as a Temporal local activity in the worker that runs the workflow (a CPU worker): no task queue dispatch and no workflow task of its own, for short CPU stages (seconds). It sends no live progress, a retry does not see the last attempt's heartbeat, and an attempt that printed nothing leaves no log object; a cpu-queue stage without `sweep` only. @default false",
      ),
    inputs: z.array(z.string()).optional().describe('Needed stages whose outputs are downloaded. @default all of `needs`'),
    outputs: z.array(z.string()).optional().describe('Paths the stage must produce under its output directory'),
    memoryEstimateGiB: z.number().positive().optional().describe('GPU memory the stage needs, checked before it starts'),
    sweep: SweepSchema.optional(),
    gpus: z
      .number()
      .int()
      .min(1)
      .max(64)
      .optional()
      .describe(
        'GPUs a gpu-queue stage needs on one host; it waits for all of them and runs alone on them (built-in training kinds then launch with torchrun). @default 1',
      ),
    host: z
      .string()
      .regex(/^[a-z0-9][a-z0-9-]{0,62}$/, 'host names are lower-case letters, digits and "-"')
      .optional()
      .describe("Pin a gpu-queue stage to one GPU host: it goes to that host's queue tanren-gpu-<host> instead of queues.gpu (a pool)"),
  })
  .strict()
  .describe('One stage of the pipeline');

/** Defaults applied to every stage that does not set the field itself. */
export const DefaultsSchema = z
  .object({
    retry: RetryPolicySchema.optional(),
    timeout: StageDurationSchema.optional().describe('@default 2h'),
    heartbeatTimeout: StageDurationSchema.optional().describe('@default 2m'),
    stallTimeout: StageDurationSchema.optional().describe("@default the kind's"),
    cache: z.boolean().optional(),
  })
  .strict()
  .describe('Defaults for every stage');

/** Longest task queue name: Temporal refuses over 1,000 bytes, and a stage it cannot schedule fails the workflow task forever. */
const MAX_QUEUE_CHARS = 300;
const QueueNameSchema = z
  .string()
  .min(1)
  .refine((v) => v.length <= MAX_QUEUE_CHARS, { message: `at most ${MAX_QUEUE_CHARS} characters (Temporal refuses longer task queue names)` });

/** Task queue names of the run; unset ones are filled in by `tanren render`/`submit`. */
export const QueuesSchema = z
  .object({
    cpu: QueueNameSchema.optional().describe('Task queue of CPU stages. @default tanren-cpu'),
    gpu: QueueNameSchema.optional().describe(
      "Task queue of GPU stages: one host's (tanren-gpu-<host>) or a pool's (tanren-gpu-pool-<name>, served by every GPU host that joins it). @default the submitter's TANREN_GPU_POOL pool, else tanren-gpu-<host of the submitter>",
    ),
  })
  .strict()
  .describe('Task queues');

/** A whole pipeline spec, as written in pipelines/*.yaml. */
export const PipelineSpecSchema = z
  .object({
    $schema: z.string().optional().describe('Path or URL of this JSON Schema, for editors'),
    name: z
      .string()
      .regex(/^[a-z0-9][a-z0-9._-]{0,62}$/, 'pipeline names are lower-case letters, digits, ".", "-" and "_"')
      .describe('Name of the pipeline; part of every run id'),
    description: z.string().optional(),
    profile: z.string().optional().describe('Hardware profile the pipeline is sized for, e.g. tiny-cpu or rtx3090'),
    params: z
      .record(z.string(), z.union([z.string(), z.number(), z.boolean()]))
      .default({})
      .describe('Values substituted into `with` and `run` as ${{ params.NAME }}; `--set NAME=VALUE` overrides them'),
    queues: QueuesSchema.optional(),
    defaults: DefaultsSchema.optional(),
    stages: z.array(StageSchema).min(1, 'a pipeline needs at least one stage').describe('The stages, in any order'),
  })
  .strict()
  .describe('A tanren pipeline');

/** A pipeline spec after parsing (defaults applied). */
export type PipelineSpec = z.infer<typeof PipelineSpecSchema>;
/** One stage after parsing. */
export type StageSpec = z.infer<typeof StageSchema>;
/** A stage's `sweep:` as written. */
export type SweepSpec = z.infer<typeof SweepSchema>;
/** Retry policy as written in a spec. */
export type RetryPolicySpec = z.infer<typeof RetryPolicySchema>;

/** Options of one run, next to the spec in the workflow input. */
export const RunOptionsSchema = z
  .object({
    noCache: z.boolean().optional().describe('Ignore cached outputs of earlier runs'),
    runName: z.string().optional(),
    specFile: z.string().optional().describe('Where the spec came from, for messages'),
    specDigest: z.string().optional().describe('sha256 of the rendered spec'),
    tanrenVersion: z.string().optional(),
  })
  .strict();

/** The workflow input: exactly what `tanren render` prints and `tctl`/`temporal` users pass. */
export const PipelineRunInputSchema = z
  .object({
    spec: z.unknown().describe('The pipeline spec (validated by the workflow)'),
    options: RunOptionsSchema.default({}),
    carried: z.unknown().optional().describe('Run state handed over when a long run continues as new; written by the workflow itself, never by users'),
  })
  .strict()
  .describe('Input of pipelineWorkflow');

/** Workflow input after validation of the envelope (the spec itself is validated separately). */
export type PipelineRunInput = { spec: unknown; options?: z.infer<typeof RunOptionsSchema>; carried?: unknown };
/** Run options. */
export type RunOptions = z.infer<typeof RunOptionsSchema>;
