/**
 * The worker's side of the processes that start stage programs for it:
 *
 * - the stage launcher (./launcher.ts), a small Node process forked on the
 *   first stage (and again if it dies), for any program;
 * - the zygote (stages/tanren_stages/zygote.py), a Python that has imported
 *   torch and transformers once and forks each built-in Python kind from there,
 *   one per Python and import-time environment, started on the first such stage.
 *
 * Both speak the same messages (`started`, `line`, `exit`, `closed`); this
 * module turns them into one {@link LaunchListener} per program.
 */
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { ProcessIdentity } from '../process-identity.js';
import type { LauncherMessage, LauncherRequest } from './launcher.js';

const LAUNCHER_PATH = fileURLToPath(new URL('./launcher.js', import.meta.url));

/** How a launched program ended. */
export interface LaunchedExit {
  exitCode?: number;
  signal?: string;
  /** Why it did not run (it could not be started, or the launcher died under it). */
  error?: string;
}

/** Receives a launched program's output and end. */
export interface LaunchListener {
  line(stream: 'stdout' | 'stderr', line: string): void;
  exit(e: LaunchedExit): void;
  /** Both output streams ended (or, after the launcher died, never will). */
  closed(): void;
}

/** A started program. */
export interface Launched {
  pid?: number;
  identity?: ProcessIdentity;
}

/** What starting a program gave: it runs, or why not (retryable when the starter, not the program, was at fault). */
export type LaunchResult = Launched & { error?: string; retryable?: boolean };

/** A process that starts programs: the Node launcher or a zygote. */
interface Starter {
  readonly name: string;
  readonly child: ChildProcess;
  /** Resolves on the starter's `ready` message; rejects if it exits first. */
  readonly ready: Promise<void>;
  send(request: Record<string, unknown>): void;
  /** Keeps the worker's event loop alive (while a program starts or runs) or not. */
  hold(on: boolean): void;
  /** Called on its `ready` message. */
  onReady(): void;
}

interface Pending {
  starter: Starter;
  listener: LaunchListener;
  pid?: number;
  started?: (s: LaunchResult) => void;
  exited: boolean;
  closed: boolean;
}

const pending = new Map<number, Pending>();
let nextId = 1;

// A worker that exits with stages still running takes them along (a SIGKILLed one cannot: its restart reaps them).
process.on('exit', () => {
  for (const p of pending.values()) {
    if (!p.pid || p.exited) continue;
    try {
      process.kill(-p.pid, 'SIGTERM');
    } catch {
      // already gone
    }
  }
});

const held = (starter: Starter) => [...pending.values()].some((p) => p.starter === starter);

/** Routes one message of `starter` to its program's listener. */
function onMessage(starter: Starter, m: LauncherMessage): void {
  if (m.type === 'ready') return starter.onReady();
  const p = pending.get(m.id);
  if (!p) return;
  if (m.type === 'started') {
    p.pid = m.pid;
    // Both starters read the identity before they can reap the program.
    p.started?.(m);
    p.started = undefined;
  } else if (m.type === 'line') {
    p.listener.line(m.stream, m.line);
  } else if (m.type === 'exit') {
    p.exited = true;
    p.listener.exit(m);
  } else if (m.type === 'closed') {
    p.closed = true;
    p.listener.closed();
  }
  // Exit and the end of output come in either order; both end the program's entry.
  if (p.exited && p.closed) {
    pending.delete(m.id);
    if (!held(starter)) starter.hold(false);
  }
}

/** Ends every program of a starter that went away: their output is lost. */
function onStarterExit(starter: Starter, code: number | null, signal: NodeJS.Signals | null): void {
  const why = `the ${starter.name} exited (${signal ?? `exit code ${code}`})`;
  for (const [id, p] of pending) {
    if (p.starter !== starter) continue;
    pending.delete(id);
    p.started?.({ error: why, retryable: true });
    if (!p.exited) p.listener.exit({ error: why });
    if (!p.closed) p.listener.closed();
  }
}

/** A starter around `child`: ready on its first message, held through the process and its pipes or channel. */
function makeStarter(name: string, child: ChildProcess, send: Starter['send']): Starter {
  let onReady!: () => void;
  const ready = new Promise<void>((resolve, reject) => {
    onReady = resolve;
    child.once('error', reject);
    child.once('exit', (code, signal) => reject(new Error(`the ${name} exited during start-up (${signal ?? `exit code ${code}`})`)));
  });
  ready.catch(() => undefined);
  const handles = [child, child.channel, child.stdin, child.stdout] as Array<{ ref?: () => void; unref?: () => void } | null | undefined>;
  const starter: Starter = {
    name,
    child,
    ready,
    send,
    onReady,
    // The process too: its exit (a starter that died) must reach us while a program runs.
    hold: (on) => handles.forEach((h) => (on ? h?.ref?.() : h?.unref?.())),
  };
  child.on('exit', (code, signal) => onStarterExit(starter, code, signal));
  // Nothing of it keeps the worker alive until a program starts.
  starter.hold(false);
  return starter;
}

let launcher: Starter | undefined;

function alive(s: Starter | undefined): s is Starter {
  return !!s && s.child.exitCode === null && s.child.signalCode === null;
}

function launcherProcess(): Starter {
  if (alive(launcher) && launcher.child.connected) return launcher;
  const child = fork(LAUNCHER_PATH, ['--tanren-stage-launcher'], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    // Only what Node itself needs; a stage's environment travels with each start.
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin' },
    execArgv: [],
    serialization: 'advanced',
  });
  const starter = makeStarter('stage launcher', child, (request) => child.send(request));
  child.on('message', (m: LauncherMessage) => onMessage(starter, m));
  child.on('exit', () => {
    if (launcher === starter) launcher = undefined;
  });
  launcher = starter;
  return starter;
}

/** Where the stage programs keep the list of variables a Python reads while it imports torch and transformers. */
const IMPORT_TIME_ENV_FILE = fileURLToPath(new URL('../../../stages/tanren_stages/import_time_env.json', import.meta.url));
let importTimeEnvList: { include: RegExp; exclude: Set<string> } | undefined;

/** The part of `env` a zygote is started with, and keyed by (stages/tanren_stages/import_time_env.json). */
export function importTimeEnv(env: Record<string, string>): Record<string, string> {
  if (!importTimeEnvList) {
    const list = JSON.parse(readFileSync(IMPORT_TIME_ENV_FILE, 'utf8')) as { include: string[]; exclude: string[] };
    const glob = (p: string) => p.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*');
    importTimeEnvList = { include: new RegExp(`^(?:${list.include.map(glob).join('|')})$`), exclude: new Set(list.exclude) };
  }
  const { include, exclude } = importTimeEnvList;
  return Object.fromEntries(Object.entries(env).filter(([k]) => include.test(k) && !exclude.has(k)));
}
/** Most zygotes a worker keeps (each holds torch in memory); stages of a further environment start with `python -m`. */
const MAX_ZYGOTES = 2;
const zygotes = new Map<string, Starter>();
/** Environments reported as served by `python -m` and not served by a zygote since: said once, not per stage. */
const unserved = new Set<string>();

function zygoteFor(python: string, env: Record<string, string>): { key: string; starter?: Starter } {
  const importEnv = importTimeEnv(env);
  const key = JSON.stringify([python, Object.entries(importEnv).sort()]);
  const known = zygotes.get(key);
  if (alive(known)) return { key, starter: known };
  if (known) zygotes.delete(key);
  if (zygotes.size >= MAX_ZYGOTES) return { key };
  const child = spawn(python, ['-m', 'tanren_stages.zygote'], {
    env: { ...importEnv, PYTHONUNBUFFERED: '1' },
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const starter = makeStarter('stage zygote', child, (request) => child.stdin.write(`${JSON.stringify(request)}\n`));
  createInterface({ input: child.stdout }).on('line', (line) => {
    let m: LauncherMessage;
    try {
      m = JSON.parse(line) as LauncherMessage;
    } catch {
      return;
    }
    onMessage(starter, m);
  });
  child.stdin.on('error', () => undefined);
  child.on('exit', () => {
    if (zygotes.get(key) === starter) zygotes.delete(key);
  });
  zygotes.set(key, starter);
  return { key, starter };
}

async function startOn(starter: Starter, request: Record<string, unknown>, listener: LaunchListener): Promise<LaunchResult> {
  // The starter keeps the worker's event loop alive only while a program starts or runs.
  starter.hold(true);
  try {
    await starter.ready;
  } catch (err) {
    if (!held(starter)) starter.hold(false);
    throw err;
  }
  const id = nextId++;
  return new Promise((resolve) => {
    pending.set(id, { starter, listener, started: resolve, exited: false, closed: false });
    starter.send({ type: 'start', id, ...request });
  });
}

/**
 * Starts `file args…` in its own process group through the launcher; resolves
 * once it runs (with its pid and identity) or could not be started.
 */
export function launch(req: Omit<LauncherRequest, 'type' | 'id'>, listener: LaunchListener): Promise<LaunchResult> {
  return startOn(launcherProcess(), req, listener);
}

/**
 * Starts `python -m <module> args…` forked from this worker's zygote for
 * `python` and the import-time part of `env`; falls back to {@link launch}
 * when no zygote can serve it (too many environments, or it failed to start).
 */
export async function launchPythonModule(
  req: { python: string; module: string; args: string[]; cwd: string; env: Record<string, string> },
  listener: LaunchListener,
  onFallback?: (why: string) => void,
): Promise<LaunchResult> {
  const { key, starter } = zygoteFor(req.python, req.env);
  if (starter) {
    // Served now (a slot freed): should it be left without a zygote again, that is said again.
    unserved.delete(key);
    try {
      return await startOn(starter, { module: req.module, args: req.args, cwd: req.cwd, env: req.env }, listener);
    } catch (err) {
      onFallback?.((err as Error).message);
    }
  } else if (!unserved.has(key)) {
    unserved.add(key);
    onFallback?.(`more than ${MAX_ZYGOTES} import-time environments; stages of this one start with python -m`);
  }
  return launch({ file: req.python, args: ['-m', req.module, ...req.args], cwd: req.cwd, env: req.env }, listener);
}

/**
 * Stops this process's launcher and zygotes once their programs have ended (a
 * zygote exits when its stdin closes, the launcher when its channel does);
 * resolves when they are gone. Programs still running keep their starter.
 */
export async function closeStarters(): Promise<void> {
  const starters = [launcher, ...zygotes.values()].filter(alive).filter((s) => !held(s));
  await Promise.all(
    starters.map(
      (s) =>
        new Promise<void>((resolve) => {
          s.child.once('exit', () => resolve());
          // Held until it is gone, or the wait would not keep the process alive.
          s.hold(true);
          if (s.child.stdin) s.child.stdin.end();
          else s.child.disconnect();
        }),
    ),
  );
}
