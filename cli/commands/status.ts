/** `tanren status <run>`: one row per stage. */
import type { Command } from 'commander';
import { z } from 'zod';
import { action, client, env, parseOptions } from '../common.js';
import { fetchRun, renderStatus, uiUrl } from '../run-status.js';
import { exitCodeFor } from '../watch-run.js';

const Options = z.object({ json: z.boolean().default(false) });

/** Registers `status`. */
export function configureStatusCommand(program: Command): void {
  program
    .command('status')
    .description('show the stages of a run')
    .argument('<run>', 'workflow id of the run')
    .option('--json', 'print the status as JSON')
    .action(
      action(async (id: string, raw: unknown) => {
        const opts = parseOptions(Options, raw);
        const e = env();
        const view = await fetchRun(await client(e), id);
        if (opts.json) {
          process.stdout.write(`${JSON.stringify({ ...view, url: uiUrl(e.TANREN_UI_URL, e.TEMPORAL_NAMESPACE, id, view.runId) }, null, 2)}\n`);
        } else {
          process.stdout.write(`${renderStatus(view)}\n  UI: ${uiUrl(e.TANREN_UI_URL, e.TEMPORAL_NAMESPACE, id, view.runId)}\n`);
        }
        return view.temporalStatus === 'RUNNING' ? 0 : exitCodeFor(view.temporalStatus);
      }),
    );
}
