/** Real CPU and GPU workers in the test process, on task queues of their own. */
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pino, type Logger } from 'pino';
import { runWorker } from '../../worker/run-worker.js';
import { servicesEnv, unique } from './env.js';

/** Task queues of one test's workers. */
export interface TestQueues {
  control: string;
  cpu: string;
  gpu: string;
}

/** Running workers and how to stop them. */
export interface TestWorkers {
  queues: TestQueues;
  workRoot: string;
  env: ReturnType<typeof servicesEnv>;
  stop(): Promise<void>;
}

/**
 * Starts a CPU worker (serving workflows too) and a GPU worker; resolves once
 * both poll. Test settings (progress every 200 ms, 5 s kill grace) unless
 * `envOverrides` says otherwise. Also used by bench/overhead.
 */
export async function startTestWorkers(
  opts: { prefix?: string; python?: string; envOverrides?: Record<string, unknown>; gpu?: boolean; logger?: Logger; workRoot?: string } = {},
): Promise<TestWorkers> {
  const prefix = unique(opts.prefix ?? 'it');
  const queues = { control: `${prefix}-control`, cpu: `${prefix}-cpu`, gpu: `${prefix}-gpu` };
  // A private work root by default: runWorker reaps stage processes recorded under it.
  const workRoot = opts.workRoot ?? mkdtempSync(path.join(os.tmpdir(), 'tanren-work-'));
  const env = {
    ...servicesEnv(),
    TANREN_WORK_DIR: workRoot,
    TANREN_PROGRESS_INTERVAL_MS: 200,
    TANREN_KILL_GRACE_MS: 5000,
    ...(opts.python ? { TANREN_PYTHON: opts.python } : {}),
    ...opts.envOverrides,
  } as ReturnType<typeof servicesEnv>;
  const logger = opts.logger ?? pino({ level: process.env.TANREN_TEST_LOG_LEVEL ?? 'warn' });
  let stop!: () => void;
  const stopWhen = new Promise<void>((r) => (stop = r));
  const ready: Array<Promise<void>> = [];
  const done: Array<Promise<void>> = [];
  for (const queue of opts.gpu === false ? (['cpu'] as const) : (['cpu', 'gpu'] as const)) {
    let onRunning!: () => void;
    ready.push(new Promise<void>((r) => (onRunning = r)));
    done.push(
      runWorker({
        queue,
        env,
        logger,
        taskQueue: queue === 'cpu' ? queues.cpu : queues.gpu,
        controlTaskQueue: queues.control,
        serveWorkflows: queue === 'cpu',
        stopWhen,
        onRunning,
      }),
    );
  }
  await Promise.race([Promise.all(ready), Promise.all(done).then(() => Promise.reject(new Error('a worker stopped during start-up')))]);
  return {
    queues,
    workRoot,
    env,
    stop: async () => {
      stop();
      await Promise.allSettled(done);
    },
  };
}
