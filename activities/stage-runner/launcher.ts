/**
 * The stage launcher: a small Node process, forked once by a worker, that
 * starts stage programs for it and relays their output and exit over IPC.
 *
 * Why a separate process: starting a child forks the parent, and fork copies
 * the parent's page tables. A worker process is large (V8 heaps, the Temporal
 * core, the workflow bundle), so each start blocked its event loop for 10–15 ms
 * on a two-core host; from this small process a start costs a few ms, and the
 * worker's event loop never waits on it. The program runs in its own process
 * group, as before: the worker signals that group directly by its pid.
 *
 * Messages (see {@link LauncherRequest} and {@link LauncherMessage}): `start`
 * from the worker; `started` (pid and identity, read before the program can
 * be reaped), `line`, `exit` and `closed` (both output streams ended) back.
 */
import os from 'node:os';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { setAutogroupNice } from '../autogroup.js';
import { identify, type ProcessIdentity } from '../process-identity.js';

/** What the worker asks of the launcher. */
export interface LauncherRequest {
  type: 'start';
  id: number;
  file: string;
  args: string[];
  cwd: string;
  env: Record<string, string>;
}

/** What the launcher tells the worker. */
export type LauncherMessage =
  | { type: 'ready' }
  | { type: 'started'; id: number; pid?: number; identity?: ProcessIdentity; error?: string; retryable?: boolean }
  | { type: 'line'; id: number; stream: 'stdout' | 'stderr'; line: string }
  | { type: 'exit'; id: number; exitCode?: number; signal?: string; error?: string }
  | { type: 'closed'; id: number };

function send(message: LauncherMessage): void {
  process.send?.(message);
}

/** This process's nice: the worker's, inherited. */
const OWN_NICE = Math.min(os.getPriority(), 19);

function start(req: LauncherRequest): void {
  // Plain spawn, not execa: it costs half as much per start (2 ms less on a small host), and nothing of execa's is used here.
  let child;
  try {
    child = spawn(req.file, req.args, {
      cwd: req.cwd,
      env: req.env,
      detached: true, // own process group, so cancellation reaches grandchildren too
      stdio: ['ignore', 'pipe', 'pipe'],
    });
  } catch (err) {
    // An argument spawn refuses outright (a NUL byte in the environment).
    send({ type: 'started', id: req.id, error: (err as Error).message });
    return;
  }
  const pid = child.pid;
  // The program's session has an autogroup of its own (at nice 0): it gets the worker's nice, so that a stage of a
  // worker started under `nice -n 10` runs at 10 too. Spawn returns once that session exists.
  if (pid !== undefined && OWN_NICE > 0) setAutogroupNice(OWN_NICE, pid);
  if (pid === undefined) {
    // Not started (no such file, no such directory): the reason comes as an error event, and there is no exit.
    send({ type: 'started', id: req.id });
    child.once('error', (err) => {
      send({ type: 'exit', id: req.id, error: err.message });
      send({ type: 'closed', id: req.id });
    });
    return;
  }
  // Later errors (a signal that could not be sent) are not the program's end: its exit event says that.
  child.on('error', () => undefined);
  // Read now: once this process reaps the program, its identity is gone.
  send({ type: 'started', id: req.id, pid, identity: identify(pid) });
  let open = 0;
  for (const [name, stream] of [
    ['stdout', child.stdout],
    ['stderr', child.stderr],
  ] as const) {
    if (!stream) continue;
    open++;
    const lines = createInterface({ input: stream });
    lines.on('line', (line) => send({ type: 'line', id: req.id, stream: name, line }));
    lines.once('close', () => {
      if (--open === 0) send({ type: 'closed', id: req.id });
    });
  }
  if (open === 0) send({ type: 'closed', id: req.id });
  child.once('exit', (code, signal) => {
    send({ type: 'exit', id: req.id, ...(code !== null ? { exitCode: code } : {}), ...(signal ? { signal } : {}) });
  });
}

/** Runs the launcher when this file is the forked process's entry point. */
export function runLauncher(): void {
  process.on('message', (req: LauncherRequest) => {
    if (req?.type === 'start') start(req);
  });
  // The worker is gone (exited or killed): the stage programs live on in their own groups, as they
  // would have without a launcher, and a restarted worker reaps them from their running records.
  process.on('disconnect', () => process.exit(0));
  send({ type: 'ready' });
}

if (process.send && process.argv[2] === '--tanren-stage-launcher') runLauncher();
