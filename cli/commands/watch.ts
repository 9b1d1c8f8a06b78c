/** `tanren watch <run>`: live progress until the run ends; Ctrl-C stops watching only. */
import type { Command } from 'commander';
import { action, client, env } from '../common.js';
import { watchRun } from '../watch-run.js';

/** Registers `watch`. */
export function configureWatchCommand(program: Command): void {
  program
    .command('watch')
    .description('follow a run until it ends (Ctrl-C stops watching, not the run)')
    .argument('<run>', 'workflow id of the run')
    .action(
      action(async (id: string) => {
        const e = env();
        return watchRun(await client(e), e, id);
      }),
    );
}
