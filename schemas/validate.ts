/**
 * Validation of a pipeline spec beyond its shape: the stage graph (duplicate
 * ids, unknown needs, cycles), kinds, queues and parameter references. Every
 * problem names the stage id and the field path. Pure code.
 */
import type { z } from 'zod';
import { parseDuration } from './durations.js';
import {
  MAX_PIPELINE_SWEEP_PARAMS_BYTES,
  MAX_PIPELINE_SWEEP_TRIALS,
  MAX_SWEEP_TRIALS,
  PipelineSpecSchema,
  type PipelineSpec,
  type SweepSpec,
} from './pipeline.js';
import { isStageKind, STAGE_KIND_NAMES, STAGE_KINDS } from './stage-kinds.js';
import { jsonBytes, jsonBytesUpTo } from './payload-size.js';

/** One thing wrong with a spec. */
export interface SpecProblem {
  /** Field path, e.g. `stages[2].needs[0]`. */
  path: string;
  /** Id of the stage the problem is in, when there is one. */
  stage?: string;
  message: string;
}

/** Result of {@link validatePipelineSpec}. */
export type SpecValidation = { ok: true; spec: PipelineSpec } | { ok: false; problems: SpecProblem[] };

const PARAM_REF = /\$\{\{\s*params\.([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}/g;

/** Longest name (stage id, need, kind, parameter) quoted in a message; a valid stage id is never cut. */
const MAX_NAME_CHARS = 64;
/** Longest path and message of one problem. */
const MAX_PATH_CHARS = 300;
const MAX_MESSAGE_CHARS = 1000;
/** Longest formatted line, in UTF-8 bytes: 51 lines (50 problems and the count of the rest) stay under the 64 KB a failure message may have. */
const MAX_LINE_BYTES = 1250;

/** Cuts `text` to at most `max` characters, ending in "…"; never splits a surrogate pair. */
function clip(text: string, max: number): string {
  if (text.length <= max) return text;
  let end = max - 1;
  const c = text.charCodeAt(end - 1);
  if (c >= 0xd800 && c <= 0xdbff) end--;
  return `${text.slice(0, end)}…`;
}

/** Cuts `text` to at most `max` bytes of UTF-8, ending in "…" (3 bytes); never splits a surrogate pair. */
function clipBytes(text: string, max: number): string {
  if (text.length * 3 <= max) return text;
  let bytes = 0;
  let cut = -1;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    const pair = c >= 0xd800 && c <= 0xdbff && i + 1 < text.length && (text.charCodeAt(i + 1) & 0xfc00) === 0xdc00;
    bytes += c < 0x80 ? 1 : c < 0x800 ? 2 : pair ? 4 : 3;
    if (cut < 0 && bytes > max - 3) cut = i;
    if (bytes > max) return `${text.slice(0, cut)}…`;
    if (pair) i++;
  }
  return text;
}

/** A user-supplied name as it appears in a message. */
const q = (name: string) => clip(name, MAX_NAME_CHARS);

/** Turns a zod path into `stages[2].with.lr`. */
export function formatPath(path: ReadonlyArray<PropertyKey>): string {
  let out = '';
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`;
    else out += out ? `.${String(part)}` : String(part);
  }
  return out || '(top level)';
}

function stageIdAt(raw: unknown, index: unknown): string | undefined {
  if (typeof index !== 'number' || !raw || typeof raw !== 'object') return undefined;
  const stages = (raw as { stages?: unknown }).stages;
  if (!Array.isArray(stages)) return undefined;
  const id = (stages[index] as { id?: unknown } | undefined)?.id;
  return typeof id === 'string' ? id : undefined;
}

function zodProblems(raw: unknown, error: z.ZodError): SpecProblem[] {
  return error.issues.map((issue) => {
    let message = issue.message;
    if (issue.code === 'unrecognized_keys') message = `unknown field(s): ${listSome(issue.keys)}`;
    const stage = issue.path[0] === 'stages' ? stageIdAt(raw, issue.path[1]) : undefined;
    return { path: formatPath(issue.path), ...(stage ? { stage } : {}), message };
  });
}

/** Finds one cycle in the needs graph and returns it as a closed list of ids (a → b → a), or undefined. Iterative: any depth. */
export function findCycle(stages: ReadonlyArray<{ id: string; needs: readonly string[] }>): string[] | undefined {
  const needs = new Map(stages.map((s) => [s.id, s.needs]));
  const state = new Map<string, 'visiting' | 'done'>();
  for (const root of stages) {
    if (state.has(root.id)) continue;
    // Depth-first with an explicit stack of (node, index of the next need to look at).
    const path: string[] = [root.id];
    const next: number[] = [0];
    state.set(root.id, 'visiting');
    while (path.length) {
      const id = path.at(-1)!;
      const list = needs.get(id) ?? [];
      const i = next.at(-1)!;
      if (i >= list.length) {
        state.set(id, 'done');
        path.pop();
        next.pop();
        continue;
      }
      next[next.length - 1] = i + 1;
      const need = list[i];
      if (!needs.has(need)) continue;
      if (state.get(need) === 'visiting') return [...path.slice(path.indexOf(need)), need];
      if (!state.has(need)) {
        state.set(need, 'visiting');
        path.push(need);
        next.push(0);
      }
    }
  }
  return undefined;
}

/** Deepest nesting of arrays and objects in `value` (a scalar is 0), computed without recursion. */
export function nestingDepth(value: unknown, stopAt = Infinity): number {
  let deepest = 0;
  const todo: Array<[unknown, number]> = [[value, 0]];
  while (todo.length) {
    const [v, d] = todo.pop()!;
    if (!v || typeof v !== 'object') continue;
    if (d + 1 > deepest) deepest = d + 1;
    if (deepest > stopAt) return deepest;
    for (const x of Array.isArray(v) ? v : Object.values(v)) todo.push([x, d + 1]);
  }
  return deepest;
}

/** Every `${{ params.NAME }}` in `value`, in document order. Iterative: a spec that failed the shape check may nest `run` any depth. */
function collectParamRefs(value: unknown, path: string, out: Array<{ name: string; path: string }>): void {
  const todo: Array<[unknown, string]> = [[value, path]];
  while (todo.length) {
    const [v, at] = todo.pop()!;
    if (typeof v === 'string') {
      if (v.includes('${{')) for (const m of v.matchAll(PARAM_REF)) out.push({ name: m[1], path: at });
    } else if (Array.isArray(v)) {
      for (let i = v.length - 1; i >= 0; i--) todo.push([v[i], `${at}[${i}]`]);
    } else if (v && typeof v === 'object') {
      const entries = Object.entries(v);
      for (let i = entries.length - 1; i >= 0; i--) todo.push([entries[i][1], `${at}.${entries[i][0]}`]);
    }
  }
}

/** The part of a spec the graph checks read; built leniently from raw input when the shape check failed. */
interface GraphView {
  params: Record<string, unknown>;
  stages: Array<{
    id: string;
    needs: string[];
    uses?: string;
    run?: unknown[];
    queue?: string;
    with?: unknown;
    inputs?: string[];
    gpus?: unknown;
    host?: unknown;
    local?: unknown;
    sweep?: unknown;
  }>;
}

function lenientView(raw: unknown): GraphView | undefined {
  if (!raw || typeof raw !== 'object') return undefined;
  const r = raw as { params?: unknown; stages?: unknown };
  if (!Array.isArray(r.stages)) return undefined;
  const strings = (v: unknown) => (Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : []);
  const stages: GraphView['stages'] = r.stages.map((s: unknown, i: number) => {
    const st = (s && typeof s === 'object' ? s : {}) as Record<string, unknown>;
    return {
      id: typeof st.id === 'string' ? st.id : `#${i}`,
      needs: strings(st.needs),
      ...(typeof st.uses === 'string' ? { uses: st.uses } : {}),
      ...(Array.isArray(st.run) ? { run: st.run } : {}),
      ...(typeof st.queue === 'string' ? { queue: st.queue } : {}),
      with: st.with,
      ...(Array.isArray(st.inputs) ? { inputs: strings(st.inputs) } : {}),
      ...(st.gpus !== undefined ? { gpus: st.gpus } : {}),
      ...(st.host !== undefined ? { host: st.host } : {}),
      ...(st.local !== undefined ? { local: st.local } : {}),
      ...(st.sweep !== undefined ? { sweep: st.sweep } : {}),
    };
  });
  const params = r.params && typeof r.params === 'object' ? (r.params as Record<string, unknown>) : {};
  return { params, stages };
}

function graphProblems(spec: GraphView): SpecProblem[] {
  const problems: SpecProblem[] = [];
  const seen = new Map<string, number>();
  spec.stages.forEach((stage, i) => {
    const at = (field: string) => `stages[${i}]${field ? `.${field}` : ''}`;
    const add = (field: string, message: string) => problems.push({ path: at(field), stage: stage.id, message });
    const first = seen.get(stage.id);
    if (first !== undefined) add('id', `duplicate stage id "${q(stage.id)}" (first used by stages[${first}])`);
    else seen.set(stage.id, i);

    if (stage.uses === undefined && stage.run === undefined) add('', 'a stage needs either `uses` (a built-in kind) or `run` (a command)');
    if (stage.uses !== undefined && stage.run !== undefined) add('', 'a stage has either `uses` or `run`, not both');
    if (stage.uses !== undefined && !isStageKind(stage.uses)) {
      add('uses', `unknown stage kind "${q(stage.uses)}" (known: ${STAGE_KIND_NAMES.join(', ')})`);
    }
    if (stage.queue !== undefined && stage.queue !== 'cpu' && stage.queue !== 'gpu') {
      add('queue', `unknown queue "${q(stage.queue)}" (known: cpu, gpu)`);
    }
    if ((stage.gpus !== undefined || stage.host !== undefined) && stageQueue(stage) !== 'gpu') {
      add(stage.gpus !== undefined ? 'gpus' : 'host', 'only a stage on the gpu queue can ask for GPUs or a GPU host (set `queue: gpu`)');
    }
    if (typeof stage.gpus === 'number' && stage.gpus > 1 && stage.uses !== undefined && stage.uses !== 'pretrain') {
      add(
        'gpus',
        `the built-in kind "${q(stage.uses)}" runs on one GPU; only pretrain is launched with torchrun for gpus > 1 (or use a \`run:\` stage with your own launcher)`,
      );
    }
    if (stage.local === true && stageQueue(stage) !== 'cpu') {
      add('local', 'a local stage runs in the worker that runs the workflow, on a CPU host: only a cpu-queue stage can be local');
    }
    if (stage.local === true && stage.sweep !== undefined) {
      add('local', 'a swept stage runs each trial as an activity of its own and cannot be local; leave `local` out');
    }
    const needSeen = new Set<string>();
    stage.needs.forEach((need, j) => {
      if (need === stage.id) add(`needs[${j}]`, `stage "${q(stage.id)}" cannot need itself`);
      if (needSeen.has(need)) add(`needs[${j}]`, `"${q(need)}" is listed twice`);
      needSeen.add(need);
    });
    // Once per stage, not once per input: a stage may list thousands of each.
    let needList: string | undefined;
    stage.inputs?.forEach((input, j) => {
      if (!needSeen.has(input)) add(`inputs[${j}]`, `input "${q(input)}" is not in needs (${(needList ??= listSome(stage.needs) || 'none')})`);
    });
  });
  const ids = new Set(spec.stages.map((s) => s.id));
  let idList: string | undefined;
  spec.stages.forEach((stage, i) => {
    stage.needs.forEach((need, j) => {
      if (!ids.has(need) && need !== stage.id) {
        problems.push({
          path: `stages[${i}].needs[${j}]`,
          stage: stage.id,
          message: `unknown stage "${q(need)}" (stages: ${(idList ??= listSome([...ids]))})`,
        });
      }
    });
  });
  const cycle = findCycle(spec.stages);
  if (cycle) {
    const i = spec.stages.findIndex((s) => s.id === cycle[0]);
    // A cycle may run through thousands of stages: name the first 20 and close it.
    const shown = cycle.length > 21 ? [...cycle.slice(0, 20).map(q), `… ${cycle.length - 21} more`, q(cycle.at(-1)!)] : cycle.map(q);
    problems.push({ path: `stages[${i}].needs`, stage: cycle[0], message: `cycle in needs: ${shown.join(' → ')}` });
  }
  const refs: Array<{ name: string; path: string }> = [];
  spec.stages.forEach((stage, i) => {
    collectParamRefs(stage.with, `stages[${i}].with`, refs);
    if (stage.run) collectParamRefs(stage.run, `stages[${i}].run`, refs);
  });
  let paramList: string | undefined;
  for (const ref of refs) {
    // Own properties only: `params.constructor` is not a parameter.
    if (!Object.hasOwn(spec.params, ref.name)) {
      const i = Number(/^stages\[(\d+)\]/.exec(ref.path)?.[1]);
      problems.push({
        path: ref.path,
        stage: spec.stages[i]?.id,
        message: `unknown parameter "${q(ref.name)}" (params: ${(paramList ??= listSome(Object.keys(spec.params)) || 'none')})`,
      });
    }
  }
  return problems;
}

/** The most stages one pipeline may have (docs/architecture.md: what bounds a run's history). */
export const MAX_STAGES = 5000;

/**
 * Largest spec, as JSON (UTF-8). A run hands its spec on with its state when it continues as new, in one
 * payload that Temporal refuses over 2 MB; the state of 5,000 stages takes up to ~1.2 MB of it.
 */
export const MAX_SPEC_BYTES = 640 * 1024;

/** Deepest nesting of a stage's `with:` parameters. */
export const MAX_WITH_DEPTH = 32;
/** Largest `with:` of one stage, as JSON. */
export const MAX_WITH_BYTES = 256 * 1024;

/** Path of the problem of a spec over {@link MAX_SPEC_BYTES}. */
export const SPEC_SIZE_PROBLEM_PATH = '(the whole spec)';

/** The whole spec over `maxBytes` as JSON: its run could not hand it on with its state (see {@link MAX_SPEC_BYTES}). */
function specSizeProblems(raw: unknown, maxBytes: number): SpecProblem[] {
  const bytes = jsonBytesUpTo(raw, maxBytes);
  if (bytes <= maxBytes) return [];
  return [
    {
      path: SPEC_SIZE_PROBLEM_PATH,
      message:
        `more than ${maxBytes / 1024} KiB as JSON, the most a pipeline spec may have ` +
        '(a run hands it on with its state in one Temporal payload, 2 MB at most); move large `with:` values into a file a stage reads',
    },
  ];
}

/** Checks that must pass before the rest may walk the spec: nesting depth and size of each stage's `with:`. */
function limitProblems(raw: unknown): SpecProblem[] {
  const stages = raw && typeof raw === 'object' ? (raw as { stages?: unknown }).stages : undefined;
  if (!Array.isArray(stages)) return [];
  const problems: SpecProblem[] = [];
  stages.slice(0, MAX_STAGES + 1).forEach((st: unknown, i) => {
    const stage = st && typeof st === 'object' ? (st as { id?: unknown; with?: unknown }) : {};
    const id = typeof stage.id === 'string' ? stage.id.slice(0, 64) : undefined;
    if (stage.with === undefined) return;
    const depth = nestingDepth(stage.with, MAX_WITH_DEPTH);
    if (depth > MAX_WITH_DEPTH) {
      problems.push({ path: `stages[${i}].with`, ...(id ? { stage: id } : {}), message: `nested more than ${MAX_WITH_DEPTH} levels deep` });
      return;
    }
    const bytes = JSON.stringify(stage.with)?.length ?? 0;
    if (bytes > MAX_WITH_BYTES) {
      problems.push({
        path: `stages[${i}].with`,
        ...(id ? { stage: id } : {}),
        message: `${bytes} bytes as JSON: at most ${MAX_WITH_BYTES}; put large data in a file and pass its path`,
      });
    }
  });
  return problems;
}

/**
 * zod drops a `__proto__` key from a record (it would set the prototype of the
 * parsed object): name it, rather than lose a declared parameter or a stage's
 * parameter silently.
 */
function protoKeyProblems(raw: unknown): SpecProblem[] {
  if (!raw || typeof raw !== 'object') return [];
  const r = raw as { params?: unknown; stages?: unknown };
  const problems: SpecProblem[] = [];
  if (r.params && typeof r.params === 'object' && Object.hasOwn(r.params, '__proto__')) {
    problems.push({ path: 'params.__proto__', message: '"__proto__" cannot be a parameter name' });
  }
  if (Array.isArray(r.stages)) {
    r.stages.forEach((st: unknown, i) => {
      const stage = st && typeof st === 'object' ? (st as { id?: unknown; with?: unknown }) : {};
      if (!stage.with || typeof stage.with !== 'object' || !Object.hasOwn(stage.with, '__proto__')) return;
      const id = typeof stage.id === 'string' && stage.id ? { stage: stage.id } : {};
      problems.push({ path: `stages[${i}].with.__proto__`, ...id, message: '"__proto__" cannot be a key of `with:`' });
    });
  }
  return problems;
}

/** What the workflow waits before the first retry when neither the stage nor `defaults.retry` says. */
const DEFAULT_INITIAL_INTERVAL = '1s';

/**
 * A stage's retry policy is its own fields over `defaults.retry` over the
 * workflow's defaults: that merged policy, not only each one as written, must
 * wait longest at least as long as first (Temporal refuses it otherwise, and
 * the stage would crash when scheduled).
 */
function mergedRetryProblems(spec: PipelineSpec): SpecProblem[] {
  const defaults = spec.defaults?.retry;
  const problems: SpecProblem[] = [];
  spec.stages.forEach((stage, i) => {
    const maximum = stage.retry?.maximumInterval ?? defaults?.maximumInterval;
    if (maximum === undefined) return;
    const initial = stage.retry?.initialInterval ?? defaults?.initialInterval ?? DEFAULT_INITIAL_INTERVAL;
    if ((parseDuration(maximum) ?? 0) >= (parseDuration(initial) ?? 0)) return;
    const from = (field: 'initialInterval' | 'maximumInterval') =>
      stage.retry?.[field] !== undefined ? 'this stage' : defaults?.[field] !== undefined ? 'defaults.retry' : 'the default';
    problems.push({
      path: `stages[${i}].retry`,
      stage: stage.id,
      message: `maximumInterval ${q(maximum)} (from ${from('maximumInterval')}) is shorter than initialInterval ${q(initial)} (from ${from('initialInterval')}); set both`,
    });
  });
  return problems;
}

/**
 * Substituting parameters can multiply a stage's size (40 references to a
 * 100 KB parameter make a 4 MB activity input, over Temporal's payload limit:
 * the workflow task would fail forever). Bounds `with:` and `run` as the stage
 * will receive them, counted without building them.
 */
function resolvedSizeProblems(spec: PipelineSpec): SpecProblem[] {
  const problems: SpecProblem[] = [];
  const grows = new Map<string, number>();
  const growth = (name: string) => {
    let g = grows.get(name);
    if (g === undefined) grows.set(name, (g = JSON.stringify(String(spec.params[name])).length - 2));
    return g;
  };
  spec.stages.forEach((stage, i) => {
    for (const field of ['with', 'run'] as const) {
      const value = stage[field];
      if (value === undefined) continue;
      // Characters of strings and keys, 6 JSON bytes each at worst (`\u0000`), plus what references add.
      let chars = 0;
      let grown = 0;
      const todo: unknown[] = [value];
      while (todo.length) {
        const v = todo.pop();
        if (typeof v === 'string') {
          chars += v.length + 3;
          if (!v.includes('${{')) continue;
          for (const m of v.matchAll(PARAM_REF)) if (Object.hasOwn(spec.params, m[1])) grown += growth(m[1]) - m[0].length;
        } else if (v && typeof v === 'object') {
          if (Array.isArray(v)) {
            for (const x of v) todo.push(x);
            chars += v.length + 2;
          } else {
            for (const [k, x] of Object.entries(v)) {
              chars += k.length + 4;
              todo.push(x);
            }
          }
        } else {
          chars += 25;
        }
      }
      // Only a stage that might be too large pays for writing it out.
      if (chars * 6 + grown <= MAX_WITH_BYTES) continue;
      const bytes = JSON.stringify(value).length + grown;
      if (bytes > MAX_WITH_BYTES) {
        problems.push({
          path: `stages[${i}].${field}`,
          stage: stage.id,
          message: `${bytes} bytes as JSON once parameters are substituted: at most ${MAX_WITH_BYTES}; put large data in a file and pass its path`,
        });
      }
    }
  });
  return problems;
}

/** The most problems a failure message lists; the rest are counted. */
export const MAX_LISTED_PROBLEMS = 50;

/** Up to `n` names, each cut to a readable length, and how many more there are. */
function listSome(names: readonly string[], n = 20): string {
  const shown = names.slice(0, n).map(q).join(', ');
  return names.length > n ? `${shown}, … ${names.length - n} more` : shown;
}

/** Cuts a problem's fields to their limits: ids, paths and messages quote user input, which has no length limit of its own. */
function bounded(problems: SpecProblem[]): SpecProblem[] {
  return problems.map((p) =>
    p.path.length <= MAX_PATH_CHARS && p.message.length <= MAX_MESSAGE_CHARS && (p.stage === undefined || p.stage.length <= MAX_NAME_CHARS)
      ? p
      : { path: clip(p.path, MAX_PATH_CHARS), ...(p.stage !== undefined ? { stage: q(p.stage) } : {}), message: clip(p.message, MAX_MESSAGE_CHARS) },
  );
}

/** Validates a parsed YAML/JSON value as a pipeline spec and returns every problem found. */
export function validatePipelineSpec(
  raw: unknown,
  opts: { maxSpecBytes?: number; maxSweepTrials?: number; maxSweepParamsBytes?: number } = {},
): SpecValidation {
  const count = raw && typeof raw === 'object' && Array.isArray((raw as { stages?: unknown }).stages) ? (raw as { stages: unknown[] }).stages.length : 0;
  const limits = limitProblems(raw);
  if (limits.length) return { ok: false, problems: limits };
  if (count > MAX_STAGES) {
    return {
      ok: false,
      problems: [
        {
          path: 'stages',
          message: `${count} stages: a pipeline may have at most ${MAX_STAGES} (split it into several pipelines, or group short steps into one stage)`,
        },
      ],
    };
  }
  const protoKeys = protoKeyProblems(raw);
  const parsed = PipelineSpecSchema.safeParse(raw);
  if (!parsed.success) {
    // Report the graph's problems too, so one run of `tanren validate` lists everything.
    const problems = [...zodProblems(raw, parsed.error), ...protoKeys];
    const view = lenientView(raw);
    const seen = new Set(problems.map((p) => `${p.path}|${p.message}`));
    for (const p of view ? graphProblems(view) : []) {
      if (!seen.has(`${p.path}|${p.message}`)) problems.push(p);
    }
    return { ok: false, problems: bounded(problems) };
  }
  const problems = [
    ...protoKeys,
    ...mergedRetryProblems(parsed.data),
    ...graphProblems(parsed.data),
    ...sweepProblems(parsed.data, opts.maxSweepTrials ?? MAX_PIPELINE_SWEEP_TRIALS, opts.maxSweepParamsBytes ?? MAX_PIPELINE_SWEEP_PARAMS_BYTES),
    ...resolvedSizeProblems(parsed.data),
    // Only of a spec of the right shape: the walk of any raw input could overflow the stack.
    ...specSizeProblems(raw, opts.maxSpecBytes ?? MAX_SPEC_BYTES),
  ];
  return problems.length ? { ok: false, problems: bounded(problems) } : { ok: true, spec: parsed.data };
}

/** Longest trial an `asha` sweep may plan (steps of its last rung). */
const MAX_SWEEP_STEPS = 10_000_000;
/** Parameters a sweep with `budget.steps` sets itself. */
const SWEEP_OWNED = new Set(['max_steps', 'max_tokens', 'stop_at_step']);

/** Words of the problem of a pipeline whose sweeps would run more than {@link MAX_PIPELINE_SWEEP_TRIALS} trials in all. */
const SWEEP_TRIALS_PROBLEM = "trials in all across the pipeline's sweeps";

/** Whether a problem is the pipeline's sweeps' total of trials (the workflow asks a patch before enforcing it). */
export function isSweepTrialsProblem(p: SpecProblem): boolean {
  return p.message.includes(SWEEP_TRIALS_PROBLEM);
}

/** Words of the problem of a pipeline whose sweeps' trials would carry more than {@link MAX_PIPELINE_SWEEP_PARAMS_BYTES}. */
const SWEEP_PARAMS_PROBLEM = "bytes of trial parameters in all across the pipeline's sweeps";

/** Whether a problem is the pipeline's sweeps' total of trial parameters (the workflow asks a patch before enforcing it). */
export function isSweepParamsProblem(p: SpecProblem): boolean {
  return p.message.includes(SWEEP_PARAMS_PROBLEM);
}

/** Most bytes of a number drawn from a range, as JSON (`-2.2250738585072014e-308`). */
const MAX_NUMBER_JSON_BYTES = 24;

/**
 * Most bytes a trial's parameters of this space take as JSON (`{"lr":0.0003,"prompt":"…"}`): each name with the
 * longest of its listed values, or with the longest number its range can draw.
 */
export function maxTrialParamsBytes(space: SweepSpec['space']): number {
  const entries = Object.entries(space).map(([name, values]) => {
    const value = Array.isArray(values)
      ? Math.max(...values.map((v) => jsonBytes(v)))
      : 'int_uniform' in values
        ? Math.max(...values.int_uniform.map((v) => jsonBytes(v)))
        : MAX_NUMBER_JSON_BYTES;
    return jsonBytes(name) + 1 + value;
  });
  return 2 + entries.reduce((a, b) => a + b, 0) + Math.max(0, entries.length - 1);
}

/**
 * Checks of each stage's `sweep:` beyond its shape: parameter names, budgets and what the stage's kind can do; and
 * the trials of all sweeps together: at most `maxTrials`, carrying at most `maxParamsBytes` of parameters.
 */
function sweepProblems(spec: PipelineSpec, maxTrials: number, maxParamsBytes: number): SpecProblem[] {
  const problems: SpecProblem[] = [];
  let trials = 0;
  let paramsBytes = 0;
  spec.stages.forEach((stage, i) => {
    const sweep = stage.sweep;
    if (!sweep) return;
    const add = (field: string, message: string) => problems.push({ path: `stages[${i}].sweep${field ? `.${field}` : ''}`, stage: stage.id, message });
    const kind = stage.uses && isStageKind(stage.uses) ? STAGE_KINDS[stage.uses] : undefined;
    // Named at the sweep that passes the total, once.
    const countTrials = (n: number, field: string) => {
      if (trials <= maxTrials && trials + n > maxTrials) {
        add(
          field,
          `${trials + n} ${SWEEP_TRIALS_PROBLEM} (${n} here, ${trials} before): a pipeline may run at most ${maxTrials} ` +
            '(sweeps may run side by side in one history, and every trial travels with the run state); split the sweeps into pipelines of their own',
        );
      }
      trials += n;
      // Named at the sweep that passes the total, once; only its trials count, whether or not they pass the limit above.
      const bytes = n * maxTrialParamsBytes(sweep.space);
      if (paramsBytes <= maxParamsBytes && paramsBytes + bytes > maxParamsBytes) {
        add(
          'space',
          `${paramsBytes + bytes} ${SWEEP_PARAMS_PROBLEM} (${n} trials of up to ${bytes / n} bytes here, ${paramsBytes} before): ` +
            `a pipeline's sweeps may carry at most ${maxParamsBytes} (every trial's parameters travel with the run state, its status and its result); ` +
            'sweep shorter values (a long text goes in a file, and its path is swept) or fewer trials',
        );
      }
      paramsBytes += bytes;
    };
    const names = Object.keys(sweep.space);
    if (names.length === 0) add('space', 'name at least one parameter to sweep');
    for (const name of names) {
      if (name === '__proto__') add(`space`, '"__proto__" cannot be a swept parameter');
      else if (sweep.budget.steps !== undefined && SWEEP_OWNED.has(name)) {
        add(`space.${name}`, `"${q(name)}" is set by the sweep from budget.steps; sweep other parameters`);
      } else if (!Object.hasOwn(stage.with, name) && !kind?.sweepable?.includes(name)) {
        const known = [...Object.keys(stage.with), ...(kind?.sweepable ?? [])];
        add(
          `space.${name}`,
          `"${q(name)}" is not a parameter of this stage: set it in \`with:\` or sweep one of ${listSome(known) || 'its `with:` parameters'}`,
        );
      }
    }
    if (sweep.scheduler === 'grid') {
      const ranged = names.filter((n) => !Array.isArray(sweep.space[n]));
      if (ranged.length) add(`space.${ranged[0]}`, 'grid needs a list of values for every parameter (ranges are for random and asha)');
      if (sweep.budget.trials !== undefined) add('budget.trials', 'grid runs every combination of the listed values; leave budget.trials out');
      const size = Object.values(sweep.space).reduce<number>((n, v) => n * (Array.isArray(v) ? v.length : 1), 1);
      if (size > MAX_SWEEP_TRIALS) add('space', `${size} combinations: a sweep may run at most ${MAX_SWEEP_TRIALS} trials`);
      else countTrials(size, 'space');
    } else if (sweep.budget.trials === undefined) {
      add('budget.trials', `${sweep.scheduler} needs budget.trials (1 to ${MAX_SWEEP_TRIALS})`);
    } else {
      countTrials(sweep.budget.trials, 'budget.trials');
    }
    if (sweep.scheduler !== 'asha') {
      if (sweep.eta !== undefined) add('eta', 'eta is for the asha scheduler');
      if (sweep.rungs !== undefined) add('rungs', 'rungs are for the asha scheduler');
      return;
    }
    if (sweep.budget.steps === undefined) add('budget.steps', 'asha needs budget.steps: the steps of the first rung');
    else if (sweep.budget.steps * (sweep.eta ?? 2) ** ((sweep.rungs ?? 3) - 1) > MAX_SWEEP_STEPS) {
      add('budget.steps', `the last rung would end after ${MAX_SWEEP_STEPS} steps: fewer rungs, a smaller eta or fewer steps`);
    }
    if (kind && !kind.stopsAtStep) {
      add(
        'scheduler',
        `asha pauses trials at rungs, which kind "${q(stage.uses!)}" cannot do (only ${STAGE_KIND_NAMES.filter((k) => STAGE_KINDS[k].stopsAtStep).join(', ')} and \`run\` stages that honour stop_at_step); use grid or random`,
      );
    }
  });
  return problems;
}

/** One line per problem: `<source>: stage "x": stages[1].needs[0]: unknown stage "y"`. */
export function formatProblems(problems: readonly SpecProblem[], source = 'pipeline spec'): string {
  const more = problems.length - MAX_LISTED_PROBLEMS;
  // `source` may come from workflow input (`options.specFile`): as unbounded as the rest of it.
  const from = clip(source, MAX_PATH_CHARS);
  return problems
    .slice(0, MAX_LISTED_PROBLEMS)
    .map((p) => `${from}: ${p.stage ? `stage "${q(p.stage)}": ` : ''}${p.path}: ${p.message}`)
    .concat(more > 0 ? [`${from}: … and ${more} more problem${more > 1 ? 's' : ''}`] : [])
    .map((line) => clipBytes(line, MAX_LINE_BYTES))
    .join('\n');
}

/** Queue (`cpu`/`gpu`) a stage runs on. */
export function stageQueue(stage: { uses?: string; queue?: string }): 'cpu' | 'gpu' {
  if (stage.queue === 'gpu' || stage.queue === 'cpu') return stage.queue;
  if (stage.uses && isStageKind(stage.uses)) return STAGE_KINDS[stage.uses].defaultQueue;
  return 'cpu';
}

/** Replaces `${{ params.NAME }}` in every string of `value`; a string that is only a reference takes the parameter's type. */
export function substituteParams<T>(value: T, params: Readonly<Record<string, string | number | boolean>>): T {
  const walk = (v: unknown): unknown => {
    if (typeof v === 'string') {
      const whole = /^\$\{\{\s*params\.([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}$/.exec(v);
      if (whole && Object.hasOwn(params, whole[1])) return params[whole[1]];
      return v.replace(PARAM_REF, (m, name: string) => (Object.hasOwn(params, name) ? String(params[name]) : m));
    }
    if (Array.isArray(v)) return v.map(walk);
    if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, walk(x)]));
    return v;
  };
  return walk(value) as T;
}

/** Applies `--set` overrides and substitutes parameters into every stage. The spec must already be valid. */
export function resolveSpec(spec: PipelineSpec, overrides: Readonly<Record<string, string | number | boolean>> = {}): PipelineSpec {
  const params = { ...spec.params, ...overrides };
  return {
    ...spec,
    params,
    stages: spec.stages.map((s) => ({
      ...s,
      with: substituteParams(s.with, params),
      ...(s.run ? { run: substituteParams(s.run, params) } : {}),
    })),
  };
}
