/** `tanren worker --queue cpu|gpu`: runs a worker until SIGTERM/SIGINT. */
import type { Command } from 'commander';
import { z } from 'zod';
import { createLogger, installRuntimeLogger } from '../../worker/logger.js';
import { runWorker } from '../../worker/run-worker.js';
import { GpuLockedError } from '../../worker/gpu.js';
import { action, CliError, env, parseOptions } from '../common.js';
import { ExitCodes } from '../output.js';

const Options = z.object({ queue: z.enum(['cpu', 'gpu']), taskQueue: z.string().optional() });

/** Registers `worker`. */
export function configureWorkerCommand(program: Command): void {
  program
    .command('worker')
    .description('run a worker: cpu (pipeline workflows and CPU stages) or gpu (this host\'s GPU queue, one stage at a time)')
    .requiredOption('--queue <cpu|gpu>', 'which stages to serve')
    .option('--task-queue <name>', 'serve this task queue instead of the configured one')
    .action(
      action(async (raw: unknown) => {
        const opts = parseOptions(Options, raw);
        const e = env();
        const logger = createLogger(e.TANREN_LOG_LEVEL, { component: `worker-${opts.queue}` });
        installRuntimeLogger(logger);
        try {
          await runWorker({ queue: opts.queue, env: e, logger, taskQueue: opts.taskQueue });
        } catch (err) {
          if (err instanceof GpuLockedError) throw new CliError(err.message, ExitCodes.unavailable);
          throw err;
        }
      }),
    );
}
