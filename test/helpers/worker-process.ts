/** A worker in a child process, so a test can SIGKILL it and start it again. */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, readFileSync } from 'node:fs';
import path from 'node:path';
import { ROOT, waitFor } from './env.js';

/** A worker child process and its log. */
export interface WorkerProcess {
  child: ChildProcess;
  log: string;
  /** Resolves when the process has exited. */
  exited: Promise<void>;
}

/** Starts `tanren worker --queue <queue>` with `env` added; resolves once it logs `worker running`. */
export async function startWorkerProcess(queue: 'cpu' | 'gpu', env: Record<string, string>, logDir: string, name: string = queue): Promise<WorkerProcess> {
  const log = path.join(logDir, `worker-${name}-${Date.now()}.log`);
  const out = createWriteStream(log);
  const child = spawn(process.execPath, [path.join(ROOT, 'dist', 'cli', 'main.js'), 'worker', '--queue', queue], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout.pipe(out);
  child.stderr.pipe(out);
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  await waitFor(
    `${name} worker to start (log ${log})`,
    () => {
      if (child.exitCode !== null) throw new Error(`worker exited with ${child.exitCode}: ${readFileSync(log, 'utf8').slice(-2000)}`);
      return readFileSync(log, 'utf8').includes('worker running');
    },
    60_000,
    200,
  );
  return { child, log, exited };
}

/** Stops a worker process: SIGTERM (graceful) or SIGKILL (a crash). */
export async function stopWorkerProcess(w: WorkerProcess | undefined, signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM'): Promise<void> {
  if (!w || w.child.exitCode !== null || w.child.signalCode !== null) return;
  w.child.kill(signal);
  await w.exited;
}
