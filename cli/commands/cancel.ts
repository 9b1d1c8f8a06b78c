/** `tanren cancel <run>`: cancels a run; running stages get SIGTERM and save a checkpoint. */
import type { Command } from 'commander';
import { action, client, env } from '../common.js';

/** Registers `cancel`. */
export function configureCancelCommand(program: Command): void {
  program
    .command('cancel')
    .description('cancel a run (running stages are stopped cleanly)')
    .argument('<run>', 'workflow id of the run')
    .action(
      action(async (id: string) => {
        const c = await client(env());
        await c.workflow.getHandle(id).cancel();
        process.stdout.write(`cancellation requested for ${id}\n`);
      }),
    );
}
