/**
 * The stage protocol's events and exit codes (docs/stage-protocol.md), defined
 * once: the worker validates every event line against these schemas, the
 * committed JSON Schema (schemas/stage-event.schema.json) is generated from
 * them, and a Python test checks the stages' `EventWriter` against that file.
 */
import { z } from 'zod';
import { FailureTypes } from './names.js';

const step = z.number().int().nonnegative().describe('how far the stage is, in its own units (e.g. optimiser steps)');
/** A metric value; `null` stands for a value that is not a finite number (NaN). */
const metricValue = z.number().nullable();
const relativePath = z
  .string()
  .min(1)
  .max(1024)
  .refine((p) => !p.startsWith('/') && !p.split('/').includes('..'), 'must be a relative path inside the directory, without ".."');

/** `progress`: how far the stage is. Once sent, the stage must keep sending it within its `stallTimeout`. */
export const ProgressEventSchema = z.looseObject({
  event: z.literal('progress'),
  step,
  total: z.number().int().nonnegative().optional().describe('the step the stage will end at, when known'),
  message: z.string().max(10_000).optional(),
});

/** `metric`: named numbers at a step, e.g. `{"loss": 2.31, "lr": 0.0003}`. */
export const MetricEventSchema = z.looseObject({
  event: z.literal('metric'),
  values: z.record(z.string(), metricValue).describe('metric name → value (null: not a finite number)'),
  step: step.optional(),
});

/** `checkpoint`: a checkpoint directory under $TANREN_CHECKPOINTS is complete and will not change. */
export const CheckpointEventSchema = z.looseObject({
  event: z.literal('checkpoint'),
  path: relativePath.describe('the checkpoint directory, relative to $TANREN_CHECKPOINTS'),
  step: step.optional(),
});

/** `artifact`: a notable output file. */
export const ArtifactEventSchema = z.looseObject({
  event: z.literal('artifact'),
  path: relativePath.describe('the file, relative to $TANREN_OUTPUT'),
  description: z.string().max(10_000).optional(),
});

/** `result`: summary figures of the finished stage. */
export const ResultEventSchema = z.looseObject({
  event: z.literal('result'),
  values: z.record(z.string(), z.unknown()).describe('name → any JSON value'),
});

/** `error`: why the stage is about to fail; sent last. */
export const ErrorEventSchema = z.looseObject({
  event: z.literal('error'),
  type: z.string().min(1).max(200).describe('a failure type, e.g. InvalidStageInput'),
  message: z.string(),
});

/** One line of the events file. Unknown fields are kept; unknown event kinds are ignored by the worker. */
export const StageEventSchema = z.discriminatedUnion('event', [
  ProgressEventSchema,
  MetricEventSchema,
  CheckpointEventSchema,
  ArtifactEventSchema,
  ResultEventSchema,
  ErrorEventSchema,
]);

/** An event of the stage protocol. */
export type StageEvent = z.infer<typeof StageEventSchema>;

/** The event kinds the protocol defines. */
export const STAGE_EVENT_KINDS = ['progress', 'metric', 'checkpoint', 'artifact', 'result', 'error'] as const;

/** Exit codes with a meaning in the protocol; any other non-zero code (or a signal) is `StageCrashed`. */
export const StageExitCodeSchema = z.union([
  z.literal(0).describe('success'),
  z.literal(2).describe(`${FailureTypes.InvalidStageInput}: bad data or params (not retried)`),
  z.literal(3).describe(`${FailureTypes.StageConfigError}: the environment or configuration cannot work (not retried)`),
  z.literal(4).describe(`${FailureTypes.OutOfMemory}: retried with half the micro-batch`),
]);

/** Outcome of checking one event line. */
export type EventLineCheck = { ok: true; event: StageEvent } | { ok: false; reason: string; ignorable: boolean };

/**
 * Parses and validates one line of the events file. `ignorable` marks a
 * well-formed event of a kind this worker does not know (a newer protocol).
 */
export function checkEventLine(line: string): EventLineCheck {
  let parsed: unknown;
  try {
    parsed = JSON.parse(line);
  } catch {
    return { ok: false, reason: 'not JSON', ignorable: false };
  }
  if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed) || typeof (parsed as { event?: unknown }).event !== 'string') {
    return { ok: false, reason: 'no "event" field', ignorable: false };
  }
  const kind = (parsed as { event: string }).event;
  if (!(STAGE_EVENT_KINDS as readonly string[]).includes(kind)) {
    return { ok: false, reason: `unknown event kind "${kind.slice(0, 40)}"`, ignorable: true };
  }
  const r = StageEventSchema.safeParse(parsed);
  if (r.success) return { ok: true, event: r.data };
  const issue = r.error.issues[0];
  const where = issue?.path.length ? issue.path.join('.') : '(event)';
  return { ok: false, reason: `invalid "${kind}" event: ${where}: ${issue?.message ?? 'invalid'}`, ignorable: false };
}
