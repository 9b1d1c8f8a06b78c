/**
 * The run state a long run hands to its next execution when it continues as
 * new, packed small: Temporal caps a payload at 2 MB, and a 5,000-stage run
 * must fit with room to spare. Fields that equal what the spec and the run
 * id already say are left out and filled in again on unpacking. Pure code.
 */
import { jsonBytes } from '../schemas/payload-size.js';
import type { CarriedStage, StageStatus } from './pipeline.js';

/** What unpacking needs besides the packed stage. */
export interface CarryContext {
  runId: string;
  /** The cache note every stage of a `--no-cache` run gets. */
  defaultCache?: string;
}

const manifestKeyOf = (runId: string, stage: string) => `runs/${runId}/${stage}/manifest.json`;

/** Packs one stage's status for the next execution. */
export function packStage(s: StageStatus, ctx: CarryContext): CarriedStage {
  const { id, kind: _kind, queue: _queue, needs: _needs, metrics, attempts, result, manifestKey, cache, ...rest } = s;
  const packed: Partial<CarriedStage> = { ...rest };
  if (Object.keys(metrics).length) packed.metrics = metrics;
  if (result && Object.keys(result).length) packed.result = result;
  if (manifestKey && manifestKey !== manifestKeyOf(ctx.runId, id)) packed.manifestKey = manifestKey;
  else if (manifestKey) packed.manifestKey = '';
  if (cache !== undefined && cache !== ctx.defaultCache) packed.cache = cache;
  // One attempt that spans the stage and did not fail says nothing the stage's own times do not.
  const plain = attempts.length === 1 && !attempts[0].failure && attempts[0].startedAt === s.startedAt;
  if (attempts.length && !plain) packed.attempts = attempts;
  else if (plain) packed.attempts = undefined;
  for (const k of Object.keys(packed) as Array<keyof CarriedStage>) if (packed[k] === undefined) delete packed[k];
  return packed as CarriedStage;
}

/** Unpacks a stage packed by {@link packStage} (or carried in full by an earlier version). */
export function unpackStage(packed: CarriedStage, base: Pick<StageStatus, 'id' | 'kind' | 'queue' | 'needs'>, ctx: CarryContext): StageStatus {
  const s: StageStatus = { ...packed, ...base, metrics: packed.metrics ?? {}, attempts: packed.attempts ?? [] };
  if (packed.manifestKey === '') s.manifestKey = manifestKeyOf(ctx.runId, base.id);
  if (packed.cache === undefined && ctx.defaultCache !== undefined && s.state !== 'pending') s.cache = ctx.defaultCache;
  if (!packed.attempts && s.attempt >= 1 && s.startedAt && (s.state === 'succeeded' || s.state === 'failed')) {
    s.attempts = [{ attempt: s.attempt, startedAt: s.startedAt, ...(s.endedAt ? { endedAt: s.endedAt } : {}) }];
  }
  return s;
}

/** Most bytes (JSON) of a task's inputs before the keys of this run's manifests are left out of them. */
export const TASK_INPUTS_BUDGET_BYTES = 1024 * 1024;

/**
 * A task's inputs within {@link TASK_INPUTS_BUDGET_BYTES}: past it, an input whose manifest is this run's of that
 * stage (`runs/<run>/<stage>/manifest.json`, every stage that ran or hit the cache in this run) names its stage
 * only, and the activity fills the key in (activities/stage-runner/inputs.ts `inputRefs`). Each input names a
 * stage id and a key with the run id in it: the largest fan-in a spec allows (4,999 needs with ids of 51
 * characters, a 640 KiB spec) under the longest run id a stage runs with (200 characters) made a task of 2.03 MB,
 * 97 % of the 2 MiB a payload may have; ~0.3 MB of inputs without the keys. The input is never changed.
 */
export function fitInputs<T extends { stage: string; manifestKey?: string }>(inputs: readonly T[], runId: string, budget = TASK_INPUTS_BUDGET_BYTES): T[] {
  if (jsonBytes(inputs) <= budget) return [...inputs];
  return inputs.map((input) => {
    if (input.manifestKey !== manifestKeyOf(runId, input.stage)) return input;
    const { manifestKey: _key, ...rest } = input;
    return rest as T;
  });
}

/**
 * Most bytes (JSON, UTF-8) of one payload the workflow writes with stage results in it: the input it continues
 * as new with, its result and its `status` reply. Temporal refuses payloads over 2 MiB (`limit.blobSize.error`);
 * the rest is margin.
 */
export const PAYLOAD_BUDGET_BYTES = 1536 * 1024;

/** What {@link fitResults} needs of a stage. */
export interface WithResult {
  result?: Record<string, unknown>;
  resultOmitted?: true;
}

/** The texts a stage piles up as it fails and retries; cut when a payload is over its budget without any results. */
interface WithTexts {
  reason?: string;
  message?: string;
  cache?: string;
  attempts?: Array<{ failure?: string }>;
  /** A swept stage's trials: each with its reason and its trial-rungs (up to 1,024 trials in a run). */
  sweep?: { reason?: string; trials: Array<{ reason?: string; runs: unknown[] }> };
}

const cut = (text: string | undefined, max: number) => (text !== undefined && text.length > max ? `${text.slice(0, max)}…` : text);

/** A stage with its texts cut to `max` characters and at most `attempts` attempts (0: none listed; `attempt` still counts them). */
function cutTexts<T>(stage: T, max: number, attempts: number): T {
  const s = stage as T & WithTexts;
  const out = { ...s };
  if (s.reason !== undefined) out.reason = cut(s.reason, max);
  if (s.message !== undefined) out.message = cut(s.message, max);
  if (s.cache !== undefined) out.cache = cut(s.cache, max);
  if (s.attempts !== undefined)
    out.attempts = attempts ? s.attempts.slice(-attempts).map((a) => (a.failure ? { ...a, failure: cut(a.failure, max) } : a)) : undefined;
  if (out.attempts === undefined) delete out.attempts;
  if (s.sweep) out.sweep = cutSweep(s.sweep, (t) => cut(t, max)!, attempts);
  return out;
}

/** A sweep's texts cut by `cutText`, and each trial's trial-rungs to the last `runs` (0: none listed, `[]`). */
function cutSweep<S extends NonNullable<WithTexts['sweep']>>(sweep: S, cutText: (text: string) => string, runs: number): S {
  return {
    ...sweep,
    ...(sweep.reason !== undefined ? { reason: cutText(sweep.reason) } : {}),
    trials: sweep.trials.map((t) => ({ ...t, ...(t.reason !== undefined ? { reason: cutText(t.reason) } : {}), runs: runs ? t.runs.slice(-runs) : [] })),
  };
}

/** A stage with only its failure's type left of its texts (`StageCrashed` of `StageCrashed: stage "x" exited…`). */
function typesOnly<T>(stage: T): T {
  const out = { ...cutTexts(stage, 40, 0) } as T & WithTexts;
  if (out.reason !== undefined) out.reason = cut(out.reason.split(':')[0], 40);
  delete out.message;
  // Empty, not absent: an absent note would unpack as the run's default (`cache: off for this run`).
  if (out.cache !== undefined) out.cache = '';
  if (out.sweep) out.sweep = cutSweep(out.sweep, (t) => cut(t.split(':')[0], 40)!, 0);
  return out;
}

/**
 * Fits stages into a payload (`wrap(stages)`, as JSON) of at most `budget` bytes, each step only if the one
 * before was not enough: results are left out, largest first (marked `resultOmitted`: the stage's manifest has
 * it, and `tanren artifacts <run> <stage> --json` shows it); then the texts of failures, reasons, messages and
 * cache notes are cut to 200 characters and the attempts listed to the last 3; then to 80 characters and none
 * listed; then to 40; then only the failure's type is kept (5,000 failed stages, and 1,024 failed trials with
 * the most parameters a spec may give them, beside a spec of the largest size then still fit in Temporal's 2 MiB,
 * though not in the budget). A sweep's reasons are cut with the rest, and its trials' trial-rungs listed as the
 * attempts are.
 * Within the budget the stages come back as they were; the input is never changed.
 */
export function fitResults<T extends WithResult>(
  stages: readonly T[],
  wrap: (stages: readonly T[]) => unknown,
  budget = PAYLOAD_BUDGET_BYTES,
): { stages: T[]; omitted: number; textsCut: boolean } {
  let total = jsonBytes(wrap(stages));
  if (total <= budget) return { stages: [...stages], omitted: 0, textsCut: false };
  // Largest first (ties: the earlier stage), so that the fewest results are left out.
  const order = stages.map((s, i) => ({ size: s.result ? jsonBytes(s.result) : 0, i })).filter((x) => x.size > 0);
  order.sort((a, b) => b.size - a.size || a.i - b.i);
  let out = [...stages];
  let omitted = 0;
  for (const { size, i } of order) {
    if (total <= budget) break;
    const { result: _result, ...rest } = out[i];
    out[i] = { ...rest, resultOmitted: true } as T;
    // `"result":…,` goes and `"resultOmitted":true,` comes.
    total += 21 - (size + 10);
    omitted++;
  }
  if (total <= budget) return { stages: out, omitted, textsCut: false };
  // Many failing stages: their texts are what is left to cut.
  for (const [max, attempts] of [
    [200, 3],
    [80, 0],
    [40, 0],
  ] as const) {
    out = out.map((st) => cutTexts(st, max, attempts));
    if (jsonBytes(wrap(out)) <= budget) return { stages: out, omitted, textsCut: true };
  }
  return { stages: out.map(typesOnly), omitted, textsCut: true };
}
