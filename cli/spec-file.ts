/**
 * Reading pipeline specs from YAML/JSON files and turning them into the
 * workflow input, with errors that name the file, stage and field.
 */
import { readFileSync } from 'node:fs';
import { parseDocument } from 'yaml';
import type { PipelineRunInput, PipelineSpec } from '../schemas/pipeline.js';
import { formatProblems, resolveSpec, validatePipelineSpec, type SpecProblem } from '../schemas/validate.js';
import { DEFAULT_CPU_TASK_QUEUE } from '../schemas/names.js';
import { defaultGpuQueue, type TanrenEnv } from '../worker/config.js';
import { TANREN_VERSION } from './version.js';
import { digestJson } from '../activities/cache.js';

/** A spec file that cannot be used; `message` lists every problem. */
export class SpecFileError extends Error {
  override name = 'SpecFileError';
  constructor(
    message: string,
    readonly problems: SpecProblem[] = [],
  ) {
    super(message);
  }
}

/** Reads and validates a spec file. */
export function loadSpecFile(file: string): PipelineSpec {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new SpecFileError(`${file}: cannot read: ${(err as Error).message}`);
  }
  const doc = parseDocument(text, { prettyErrors: true });
  if (doc.errors.length) {
    throw new SpecFileError(doc.errors.map((e) => `${file}: ${e.message.split('\n')[0]}`).join('\n'));
  }
  const checked = validatePipelineSpec(doc.toJS());
  if (!checked.ok) throw new SpecFileError(formatProblems(checked.problems, file), checked.problems);
  return checked.spec;
}

/** Parses `--set name=value` pairs; numbers and booleans keep their type. */
export function parseOverrides(pairs: readonly string[], file: string, spec: PipelineSpec): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = {};
  for (const pair of pairs) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new SpecFileError(`--set ${pair}: expected NAME=VALUE`);
    const name = pair.slice(0, eq);
    const raw = pair.slice(eq + 1);
    if (!(name in spec.params)) {
      throw new SpecFileError(`--set ${name}: ${file} has no parameter "${name}" (params: ${Object.keys(spec.params).join(', ') || 'none'})`);
    }
    const current = spec.params[name];
    if (typeof current === 'number') {
      const n = Number(raw);
      if (Number.isNaN(n)) throw new SpecFileError(`--set ${name}=${raw}: params.${name} in ${file} is a number`);
      out[name] = n;
    } else if (typeof current === 'boolean') {
      if (raw !== 'true' && raw !== 'false') throw new SpecFileError(`--set ${name}=${raw}: params.${name} in ${file} is true or false`);
      out[name] = raw === 'true';
    } else {
      out[name] = raw;
    }
  }
  return out;
}

/** Builds the exact workflow input for a spec: params resolved, queues filled in. */
export function renderRunInput(
  spec: PipelineSpec,
  opts: { file: string; overrides?: Record<string, string | number | boolean>; env: TanrenEnv; noCache?: boolean; runName?: string },
): PipelineRunInput {
  const resolved = resolveSpec(spec, opts.overrides ?? {});
  resolved.queues = {
    cpu: resolved.queues?.cpu ?? opts.env.TANREN_CPU_QUEUE ?? DEFAULT_CPU_TASK_QUEUE,
    gpu: resolved.queues?.gpu ?? defaultGpuQueue(opts.env),
  };
  return {
    spec: resolved,
    options: {
      specFile: opts.file,
      specDigest: digestJson(resolved),
      tanrenVersion: TANREN_VERSION,
      ...(opts.noCache ? { noCache: true } : {}),
      ...(opts.runName ? { runName: opts.runName } : {}),
    },
  };
}
