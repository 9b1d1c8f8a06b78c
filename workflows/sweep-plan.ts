/**
 * The pure part of a hyperparameter sweep: which trials there are (drawn with
 * a seeded PRNG, so the same seed always draws the same trials), where each
 * rung ends, which trials a rung promotes, and which trial is best. Workflow
 * code: deterministic, no Math.random, no Node built-ins.
 *
 * The `asha` scheduler is successive halving run rung by rung (the
 * synchronous form): rung k (1-based) ends at `steps·eta^(k-1)`; every trial
 * still alive runs to that step, then the best `floor(n/eta)` (at least one)
 * are promoted and resume from their rung checkpoint, the rest stop early.
 * Rung by rung rather than asynchronously because the decisions then depend
 * on the metrics only, never on which trial happened to finish first, so a
 * run that lost a worker mid-rung picks the same best trial as one that did not.
 */
import type { SweepSpec } from '../schemas/pipeline.js';

/** A value of a swept parameter. */
export type SweepValue = string | number | boolean;

/** One trial of a sweep. */
export interface PlannedTrial {
  /** 0-based index. */
  index: number;
  /** Storage identity, used as the trial's stage id: `<stage>.trial-NN`. */
  id: string;
  params: Record<string, SweepValue>;
}

/** The whole plan of one sweep. */
export interface SweepPlan {
  scheduler: SweepSpec['scheduler'];
  metric: string;
  goal: 'min' | 'max';
  eta: number;
  trials: PlannedTrial[];
  /** Step at which each rung ends; `[undefined]` for a grid/random sweep without `budget.steps` (the trial's own length). */
  rungs: Array<number | undefined>;
  parallel: number;
}

/** Default of `eta`. */
export const DEFAULT_ETA = 2;
/** Default of `rungs` (asha). */
export const DEFAULT_RUNGS = 3;

/** mulberry32: a small, fast 32-bit PRNG; good enough to draw trials, and the same on every replay. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Four significant digits: a drawn lr reads 0.003162, not 0.0031622776601683794. */
const round = (x: number) => Number(x.toPrecision(4));

/** Draws one value of a parameter's space. */
function draw(space: SweepSpec['space'][string], rand: () => number): SweepValue {
  if (Array.isArray(space)) return space[Math.min(space.length - 1, Math.floor(rand() * space.length))];
  if ('uniform' in space) {
    const [lo, hi] = space.uniform;
    return round(lo + (hi - lo) * rand());
  }
  if ('log_uniform' in space) {
    const [lo, hi] = space.log_uniform;
    return round(Math.exp(Math.log(lo) + (Math.log(hi) - Math.log(lo)) * rand()));
  }
  const [lo, hi] = space.int_uniform;
  return Math.min(hi, lo + Math.floor(rand() * (hi - lo + 1)));
}

/** Number of combinations of a grid over `space` (lists only; ranges count as one). */
export function gridSize(space: SweepSpec['space']): number {
  return Object.values(space).reduce<number>((n, v) => n * (Array.isArray(v) ? v.length : 1), 1);
}

/** `<stage>.trial-NN`, zero-padded to the width of the largest index, so ids sort in trial order. */
export function trialId(stage: string, index: number, count: number): string {
  const width = Math.max(2, String(count - 1).length);
  return `${stage}.trial-${String(index).padStart(width, '0')}`;
}

/** The trials and rungs of a sweep. The spec is validated already (schemas/validate.ts). */
export function planSweep(stageId: string, sweep: SweepSpec): SweepPlan {
  const names = Object.keys(sweep.space);
  const params: Array<Record<string, SweepValue>> = [];
  if (sweep.scheduler === 'grid') {
    // Cartesian product in the order the spec lists the parameters, the last one varying fastest.
    const total = gridSize(sweep.space);
    for (let i = 0; i < total; i++) {
      const p: Record<string, SweepValue> = {};
      let rest = i;
      for (let k = names.length - 1; k >= 0; k--) {
        const space = sweep.space[names[k]];
        const values = Array.isArray(space) ? space : [];
        p[names[k]] = values[rest % values.length]!;
        rest = Math.floor(rest / values.length);
      }
      params.push(Object.fromEntries(names.map((n) => [n, p[n]])));
    }
  } else {
    const rand = seededRandom(sweep.seed ?? 0);
    for (let i = 0; i < (sweep.budget.trials ?? 1); i++) params.push(Object.fromEntries(names.map((n) => [n, draw(sweep.space[n], rand)])));
  }
  const eta = sweep.eta ?? DEFAULT_ETA;
  const steps = sweep.budget.steps;
  const rungs = sweep.scheduler === 'asha' ? Array.from({ length: sweep.rungs ?? DEFAULT_RUNGS }, (_, k) => steps! * eta ** k) : [steps];
  return {
    scheduler: sweep.scheduler,
    metric: sweep.metric.name,
    goal: sweep.metric.goal ?? 'min',
    eta,
    trials: params.map((p, index) => ({ index, id: trialId(stageId, index, params.length), params: p })),
    rungs,
    parallel: sweep.parallel ?? 1,
  };
}

/**
 * The `with:` of one trial at one rung: the stage's own, the trial's values,
 * `max_steps` = the trial's full length (so a learning-rate schedule is the
 * same whatever rung it stops at) and, before the last rung, `stop_at_step`:
 * the trainer checkpoints there and exits 0.
 */
export function trialParams(plan: SweepPlan, base: Record<string, unknown>, trial: PlannedTrial, rung: number): Record<string, unknown> {
  const total = plan.rungs.at(-1);
  const p: Record<string, unknown> = { ...base, ...trial.params };
  if (total !== undefined) {
    p.max_steps = total;
    delete p.max_tokens;
  }
  if (rung < plan.rungs.length - 1) p.stop_at_step = plan.rungs[rung];
  return p;
}

/** A trial's metric after a rung; undefined when it failed or reported none. */
export interface RungScore {
  index: number;
  metric?: number;
}

/** Orders scores best first: by metric in the goal's direction, trials without a finite metric last, ties by trial index. */
export function rankScores(scores: readonly RungScore[], goal: 'min' | 'max'): RungScore[] {
  const sign = goal === 'min' ? 1 : -1;
  const ok = (m: number | undefined): m is number => typeof m === 'number' && Number.isFinite(m);
  return [...scores].sort((a, b) => {
    if (ok(a.metric) !== ok(b.metric)) return ok(a.metric) ? -1 : 1;
    if (ok(a.metric) && ok(b.metric) && a.metric !== b.metric) return sign * (a.metric - b.metric);
    return a.index - b.index;
  });
}

/** How many of `n` trials a rung promotes: the top 1/eta, at least one. */
export function promotedCount(n: number, eta: number): number {
  return Math.max(1, Math.floor(n / eta));
}

/** The trials a rung promotes (best first); only trials with a finite metric can be promoted. */
export function promote(scores: readonly RungScore[], eta: number, goal: 'min' | 'max'): number[] {
  return rankScores(scores, goal)
    .filter((s) => typeof s.metric === 'number' && Number.isFinite(s.metric))
    .slice(0, promotedCount(scores.length, eta))
    .map((s) => s.index);
}

/** The best trial of the last rung and why, or undefined when none has a finite metric. */
export function pickBest(plan: SweepPlan, scores: readonly RungScore[]): { index: number; metric: number; reason: string } | undefined {
  const ranked = rankScores(scores, plan.goal).filter((s) => typeof s.metric === 'number' && Number.isFinite(s.metric));
  const best = ranked[0];
  if (!best) return undefined;
  const id = (i: number) => plan.trials[i].id.replace(/^.*\./, '');
  const word = plan.goal === 'min' ? 'lowest' : 'highest';
  const last = plan.rungs.at(-1);
  const runner = ranked[1];
  const reason =
    `${word} ${plan.metric} (${fmt(best.metric!)}) of the ${scores.length} trial${scores.length === 1 ? '' : 's'} that ran ` +
    `${plan.rungs.length > 1 ? `rung ${plan.rungs.length} ` : ''}${last !== undefined ? `to step ${last}` : 'to the end'} ` +
    `(${plan.scheduler}${plan.scheduler === 'asha' ? `, eta ${plan.eta}` : ''}, ${plan.trials.length} trials)` +
    (runner ? `; runner-up ${id(runner.index)} at ${fmt(runner.metric!)}` : '') +
    (runner && runner.metric === best.metric ? ', tie broken by trial index' : '');
  return { index: best.index, metric: best.metric!, reason };
}

/**
 * The counts an asha sweep ends with when no trial fails: trials stopped early
 * at each rung but the last, and trials that ran the last rung (one of them best).
 */
export function expectedOutcome(trials: number, eta: number, rungs: number): { stoppedAtRung: number[]; finished: number } {
  const stoppedAtRung: number[] = [];
  let alive = trials;
  for (let r = 0; r < rungs - 1; r++) {
    const kept = promotedCount(alive, eta);
    stoppedAtRung.push(alive - kept);
    alive = kept;
  }
  return { stoppedAtRung, finished: alive };
}

function fmt(x: number): string {
  return Number.isInteger(x) ? String(x) : String(Number(x.toPrecision(5)));
}
