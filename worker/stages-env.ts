/**
 * Where a worker finds the Python of the built-in stage kinds: TANREN_PYTHON
 * when it is set, otherwise the venv `infra/install-stages` made for this
 * checkout's lock. A worker restarted by any documented command
 * (`infra/dev workers-up`, the systemd units, compose) thus needs no extra
 * environment.
 */
import { createHash } from 'node:crypto';
import { accessSync, constants, existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** The stages' Python, or why there is none. */
export interface StagesPython {
  /** Interpreter to run `python -m tanren_stages.<stage>` with; undefined when none was found. */
  python?: string;
  /** Where `python` came from or, without one, what is missing and how to fix it (for the worker's start-up log). */
  source: string;
}

/** Options of {@link findStagesPython}. */
export interface FindStagesPythonOptions {
  /** The checkout whose `stages/uv.lock` and `stages/pyproject.toml` key the venv. */
  projectDir: string;
  /** TANREN_PYTHON: used when it names an executable. */
  envPython?: string;
  /** The per-user tanren cache. @default TANREN_CACHE, else ~/.cache/tanren */
  cacheDir?: string;
}

/** The per-user tanren cache, as `infra/install-stages` chooses it: TANREN_CACHE (when not empty) or ~/.cache/tanren. */
export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.TANREN_CACHE || path.join(os.homedir(), '.cache', 'tanren');
}

/**
 * Key of the stages venv of a checkout: the first 12 hex digits of
 * sha256(stages/uv.lock then stages/pyproject.toml), exactly as
 * `infra/install-stages` computes it (`cat uv.lock pyproject.toml | sha256sum | cut -c1-12`).
 * Throws when either file cannot be read.
 */
export function stagesLockKey(projectDir: string): string {
  const hash = createHash('sha256');
  for (const name of ['uv.lock', 'pyproject.toml']) hash.update(readFileSync(path.join(projectDir, 'stages', name)));
  return hash.digest('hex').slice(0, 12);
}

/** Directory of the stages venv of a checkout: `<cache>/venvs/stages-<key>`. */
export function stagesVenvDir(projectDir: string, cacheDir: string = defaultCacheDir()): string {
  return path.join(cacheDir, 'venvs', `stages-${stagesLockKey(projectDir)}`);
}

/** True when `file` is a regular file (symlinks followed) this process may execute. */
function isExecutableFile(file: string): boolean {
  try {
    if (!statSync(file).isFile()) return false;
    accessSync(file, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** Resolves TANREN_PYTHON: a path (relative ones against the current directory) or a bare command looked up on PATH. */
function resolveExecutable(command: string): string | undefined {
  if (command.includes('/')) {
    const file = path.resolve(command);
    return isExecutableFile(file) ? file : undefined;
  }
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (dir && isExecutableFile(path.join(dir, command))) return command;
  }
  return undefined;
}

/** Other stages venvs in the cache (a changed lock leaves the old one behind): a hint for the fix. */
function otherVenvs(venvsDir: string, except: string): string[] {
  try {
    return readdirSync(venvsDir).filter((n) => n.startsWith('stages-') && !n.endsWith('.lock') && n !== except);
  } catch {
    return [];
  }
}

/**
 * Finds the stages' Python: TANREN_PYTHON when set and executable; otherwise
 * `<cache>/venvs/stages-<key>/bin/python`, the venv `infra/install-stages`
 * creates for this checkout's lock (see {@link stagesLockKey}), provided its
 * sync completed (`.tanren-complete` exists). Otherwise `python` is undefined
 * and `source` says how to fix it. Never throws.
 */
export function findStagesPython(opts: FindStagesPythonOptions): StagesPython {
  const notes: string[] = [];
  if (opts.envPython) {
    const python = resolveExecutable(opts.envPython);
    if (python) return { python, source: `TANREN_PYTHON (${python})` };
    notes.push(`TANREN_PYTHON=${opts.envPython} is not an executable file, so it was ignored`);
  }
  const cacheDir = path.resolve(opts.cacheDir ?? defaultCacheDir());
  const fix =
    'run `make stages` (infra/install-stages) in the checkout as the user the worker runs as, with the same TANREN_CACHE, or set TANREN_PYTHON; then restart the worker';
  let key: string;
  try {
    key = stagesLockKey(opts.projectDir);
  } catch {
    notes.push(
      `${path.join(opts.projectDir, 'stages')} has no readable uv.lock and pyproject.toml, so the stages venv cannot be looked up ` +
        '(the worker must run in a tanren checkout, or TANREN_PROJECT_DIR must name one)',
    );
    return { source: `no stages environment: ${notes.join('; ')}; set TANREN_PYTHON to the Python of the stages environment and restart the worker` };
  }
  const venv = path.join(cacheDir, 'venvs', `stages-${key}`);
  const python = path.join(venv, 'bin', 'python');
  const complete = existsSync(path.join(venv, '.tanren-complete'));
  if (complete && isExecutableFile(python)) {
    // Not realpath'd: the venv's own bin/python is what makes its site-packages visible.
    return { python, source: `${notes.length ? `${notes.join('; ')}; using ` : ''}the stages venv of this checkout's lock (key ${key}): ${venv}` };
  }
  if (!existsSync(venv)) {
    const others = otherVenvs(path.join(cacheDir, 'venvs'), `stages-${key}`);
    notes.push(`${venv} does not exist` + (others.length ? ` (the cache holds ${others.join(', ')}: made for another stages/uv.lock or pyproject.toml)` : ''));
  } else if (!complete) {
    notes.push(`${venv} exists but its sync did not finish (no .tanren-complete)`);
  } else {
    notes.push(`${python} is not executable`);
  }
  return { source: `no stages environment: ${notes.join('; ')}; ${fix}` };
}

/** The two logger methods {@link resolveStagesPython} uses (a pino Logger fits). */
interface StartupLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

/**
 * {@link findStagesPython} at worker start, logging the outcome once: `stages
 * environment` (info) with python and source, or `no stages environment`
 * (warn: built-in Python stage kinds will fail until the worker restarts with
 * one). Returns the python.
 */
export function resolveStagesPython(opts: FindStagesPythonOptions, logger: StartupLogger): string | undefined {
  const found = findStagesPython(opts);
  if (found.python) logger.info({ python: found.python, source: found.source }, 'stages environment');
  else logger.warn({ source: found.source }, 'no stages environment: built-in Python stage kinds will fail');
  return found.python;
}
