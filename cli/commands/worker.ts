/** `tanren worker --queue cpu|gpu`: runs a worker until SIGTERM/SIGINT. */
import type { Command } from 'commander';
import { z } from 'zod';
import { createLogger, installRuntimeLogger } from '../../worker/logger.js';
import { runWorker } from '../../worker/run-worker.js';
import { GpuLockedError } from '../../worker/gpu.js';
import { action, CliError, env, parseOptions } from '../common.js';
import { ExitCodes } from '../output.js';

const Options = z.object({
  queue: z.enum(['cpu', 'gpu']),
  taskQueue: z.string().optional(),
  pool: z
    .string()
    .regex(/^[a-z0-9][a-z0-9-]{0,62}$/, 'pool names are lower-case letters, digits and "-"')
    .optional(),
});

/** Registers `worker`. */
export function configureWorkerCommand(program: Command): void {
  program
    .command('worker')
    .description("run a worker: cpu (pipeline workflows and CPU stages) or gpu (this host's GPU queue and its pool's, one stage per GPU)")
    .requiredOption('--queue <cpu|gpu>', 'which stages to serve')
    .option('--task-queue <name>', 'serve this task queue instead of the configured one')
    .option('--pool <name>', 'gpu: also serve the GPU pool tanren-gpu-pool-<name> (default TANREN_GPU_POOL)')
    .action(
      action(async (raw: unknown) => {
        const opts = parseOptions(Options, raw);
        const e = env();
        const logger = createLogger(e.TANREN_LOG_LEVEL, { component: `worker-${opts.queue}` });
        installRuntimeLogger(logger);
        try {
          await runWorker({ queue: opts.queue, env: e, logger, taskQueue: opts.taskQueue, pool: opts.pool });
        } catch (err) {
          if (err instanceof GpuLockedError) throw new CliError(err.message, ExitCodes.unavailable);
          throw err;
        }
      }),
    );
}
