/**
 * The worker's side of the stage launcher (./launcher.ts): one launcher
 * process per worker process, forked on the first stage and again if it dies.
 */
import { fork, type ChildProcess } from 'node:child_process';
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

interface Pending {
  listener: LaunchListener;
  pid?: number;
  started?: (s: Launched & { error?: string }) => void;
  exited: boolean;
  closed: boolean;
}

let launcher: { child: ChildProcess; ready: Promise<void> } | undefined;
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

function launcherProcess(): { child: ChildProcess; ready: Promise<void> } {
  if (launcher && launcher.child.exitCode === null && launcher.child.signalCode === null && launcher.child.connected) return launcher;
  const child = fork(LAUNCHER_PATH, ['--tanren-stage-launcher'], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    // Only what Node itself needs; a stage's environment travels with each start.
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin' },
    execArgv: [],
    serialization: 'advanced',
  });
  const ready = new Promise<void>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code, signal) => reject(new Error(`the stage launcher exited during start-up (${signal ?? `exit code ${code}`})`)));
    child.on('message', (m: LauncherMessage) => {
      if (m.type === 'ready') return resolve();
      const p = pending.get(m.id);
      if (!p) return;
      if (m.type === 'started') {
        p.pid = m.pid;
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
        if (pending.size === 0) child.channel?.unref();
      }
    });
  });
  ready.catch(() => undefined);
  child.on('exit', (code, signal) => {
    if (launcher?.child === child) launcher = undefined;
    // Whatever was still running under it has lost its output: end each one here.
    const why = `the stage launcher exited (${signal ?? `exit code ${code}`})`;
    for (const [id, p] of pending) {
      pending.delete(id);
      p.started?.({ error: why });
      if (!p.exited) p.listener.exit({ error: why });
      if (!p.closed) p.listener.closed();
    }
  });
  // Neither the process nor its channel keeps the worker alive.
  child.unref();
  child.channel?.unref();
  launcher = { child, ready };
  return launcher;
}

/**
 * Starts `file args…` in its own process group through the launcher; resolves
 * once it runs (with its pid and identity) or could not be started.
 */
export async function launch(req: Omit<LauncherRequest, 'type' | 'id'>, listener: LaunchListener): Promise<Launched & { error?: string }> {
  const l = launcherProcess();
  // The channel keeps the worker's event loop alive only while a program starts or runs.
  l.child.channel?.ref();
  try {
    await l.ready;
  } catch (err) {
    if (pending.size === 0) l.child.channel?.unref();
    throw err;
  }
  const id = nextId++;
  return new Promise((resolve) => {
    pending.set(id, { listener, started: resolve, exited: false, closed: false });
    l.child.send({ type: 'start', id, ...req } satisfies LauncherRequest);
  });
}
