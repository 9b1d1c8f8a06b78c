/**
 * The `with:` object of a `uses: report` stage, validated with zod so a
 * mistake fails the stage with InvalidStageInput naming the field.
 */
import { z } from 'zod';
import { TIMELINE_STATES } from './types.js';

const isoTime = z.string().refine((s) => Number.isFinite(Date.parse(s)), { message: 'must be an ISO 8601 time, e.g. 2025-01-31T12:00:00Z' });

/**
 * One entry of the `timeline` param, as the workflow passes it:
 * `{stage, start, end, attempts, state, cachedFrom?}`. Older timelines (no
 * `state`, `attempts` absent or at least 1) are accepted as they are.
 */
export const TimelineEntrySchema = z
  .strictObject({
    stage: z.string().min(1).describe('stage id'),
    start: isoTime.describe('when the stage started (ISO 8601)'),
    end: isoTime.describe('when the stage ended (ISO 8601); a skipped stage may end when it starts'),
    attempts: z.number().int().min(0).optional().describe('attempts the stage ran; 0 for one that never ran an attempt (a cache hit, a skipped stage)'),
    state: z
      .enum(TIMELINE_STATES)
      .optional()
      .describe(`how the stage ended: ${TIMELINE_STATES.join(', ')}`),
    cachedFrom: z.string().min(1).optional().describe('for a cached stage: the run whose outputs it reused'),
  })
  // A skipped stage never ran, so its times mark when it was skipped, not a duration to check.
  .refine((e) => e.state === 'skipped' || Date.parse(e.end) >= Date.parse(e.start), { message: 'end is before start', path: ['end'] });

/** One swept stage's trials, as the workflow passes them in the `sweeps` param. */
export const SweepEntrySchema = z.strictObject({
  stage: z.string().min(1).describe('id of the swept stage'),
  scheduler: z.string().min(1),
  metric: z.string().min(1),
  goal: z.enum(['min', 'max']),
  best: z.string().optional().describe('the chosen trial'),
  reason: z.string().optional().describe('why it was chosen'),
  trials: z
    .array(
      z.strictObject({
        trial: z.string().min(1),
        params: z.record(z.string(), z.union([z.string(), z.number(), z.boolean()])),
        rung: z.number().int().min(0),
        step: z.number().optional(),
        metric: z.number().optional(),
        state: z.string().min(1),
      }),
    )
    .max(256),
});

/** Params of the `report` stage kind. */
export const ReportParamsSchema = z.strictObject({
  reference_scores: z
    .string()
    .min(1)
    .default('data/reference-scores.csv')
    .describe('CSV of reference models (columns model,mt_bench,llm_jp_eval[,note]), relative to the current directory'),
  timeline: z
    .array(TimelineEntrySchema)
    .optional()
    .describe('stage timeline given by the engine: [{stage, start, end, attempts, state, cachedFrom?}]; the section is omitted without it'),
  timeline_omitted: z
    .number()
    .int()
    .min(1)
    .optional()
    .describe("rows the engine left out of the timeline to keep the report's task within Temporal's payload limit (the longest-running stages are kept)"),
  sweeps: z
    .array(SweepEntrySchema)
    .optional()
    .describe('swept stages given by the engine: [{stage, scheduler, metric, goal, best, reason, trials: [{trial, params, rung, step, metric, state}]}]'),
  title: z.string().min(1).optional().describe('page title; default "tanren report: <pipeline>"'),
  model_name: z.string().min(1).optional().describe("label of this run's point in the scatter; default the run id"),
  mt_bench: z.string().min(1).optional().describe('id of the needed stage holding MT-Bench outputs; default: found by its files'),
  llm_jp_eval: z.string().min(1).optional().describe('id of the needed stage holding llm-jp-eval outputs; default: found by its files'),
});

/** One entry of the `sweeps` param. */
export type SweepEntry = z.infer<typeof SweepEntrySchema>;

/** Validated params of the `report` stage kind. */
export type ReportParams = z.infer<typeof ReportParamsSchema>;

/** Thrown for bad params or bad input files: the stage exits 2 (InvalidStageInput). */
export class ReportInputError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ReportInputError';
  }
}

/**
 * Validates the params object read from `source` (the TANREN_PARAMS file).
 * @throws ReportInputError naming the first bad field.
 */
export function parseReportParams(raw: unknown, source: string): ReportParams {
  const parsed = ReportParamsSchema.safeParse(raw ?? {});
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0];
  if (issue.code === 'unrecognized_keys') {
    const allowed = Object.keys(ReportParamsSchema.shape).join(', ');
    throw new ReportInputError(`${source}: unknown field(s) ${issue.keys.join(', ')}; allowed: ${allowed}`);
  }
  const field = issue.path
    .map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`))
    .join('')
    .replace(/^\./, '');
  throw new ReportInputError(field ? `${source}: field '${field}': ${issue.message}` : `${source}: ${issue.message}`);
}
