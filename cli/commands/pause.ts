/** `tanren pause <run>`: no new stage starts until `tanren resume`. */
import type { Command } from 'commander';
import { pauseSignal } from '../../workflows/pipeline.js';
import { action, client, env } from '../common.js';

/** Registers `pause`. */
export function configurePauseCommand(program: Command): void {
  program
    .command('pause')
    .description('start no new stage of a run until it is resumed (running stages go on)')
    .argument('<run>', 'workflow id of the run')
    .action(
      action(async (id: string) => {
        const c = await client(env());
        await c.workflow.getHandle(id).signal(pauseSignal);
        process.stdout.write(`paused ${id}\n`);
      }),
    );
}
