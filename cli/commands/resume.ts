/** `tanren resume <run>`: undoes `tanren pause`. */
import type { Command } from 'commander';
import { resumeSignal } from '../../workflows/pipeline.js';
import { action, client, env } from '../common.js';

/** Registers `resume`. */
export function configureResumeCommand(program: Command): void {
  program
    .command('resume')
    .description('let a paused run start stages again')
    .argument('<run>', 'workflow id of the run')
    .action(
      action(async (id: string) => {
        const c = await client(env());
        await c.workflow.getHandle(id).signal(resumeSignal);
        process.stdout.write(`resumed ${id}\n`);
      }),
    );
}
