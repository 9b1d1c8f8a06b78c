/**
 * `tanren retry <run> [--from <stage>]`: re-runs a failed, cancelled or
 * terminated run in place. Under the hood a Temporal reset to the workflow
 * task that scheduled the stage: stages before it keep their results, the
 * stage runs again and resumes from this run's checkpoints in object storage.
 */
import { randomUUID } from 'node:crypto';
import type { Command } from 'commander';
import protos from '@temporalio/proto';
import type Long from 'long';
import { z } from 'zod';
import { ExitCodes } from '../output.js';
import { action, CliError, client, env, parseOptions } from '../common.js';
import { findRetryPoint, RetryPointError } from '../retry-point.js';
import { uiUrl } from '../run-status.js';
import { watchRun } from '../watch-run.js';

// A CommonJS module: its namespace is only reachable through the default export.
const { temporal } = protos;

const Options = z.object({ from: z.string().optional(), watch: z.boolean().default(false), reason: z.string().optional() });

/** Registers `retry`. */
export function configureRetryCommand(program: Command): void {
  program
    .command('retry')
    .description('re-run a failed or cancelled run in place, resuming from its checkpoints (a Temporal reset)')
    .argument('<run>', 'workflow id of the run')
    .option('--from <stage>', 'start again at this stage (default: the first stage that failed or was cancelled)')
    .option('--reason <text>', "recorded with the reset in the run's history")
    .option('--watch', 'follow the run until it ends')
    .action(
      action(async (id: string, raw: unknown) => {
        const opts = parseOptions(Options, raw);
        const e = env();
        const c = await client(e);
        const handle = c.workflow.getHandle(id);
        const desc = await handle.describe();
        if (desc.status.name === 'RUNNING') {
          throw new CliError(`run ${id} is still running: cancel it first (tanren cancel ${id}), or reset it in the Temporal UI`, ExitCodes.usage);
        }
        const history = await c.workflow.getHandle(id, desc.runId).fetchHistory();
        let point;
        try {
          point = findRetryPoint(history.events ?? [], opts.from);
        } catch (err) {
          if (err instanceof RetryPointError) throw new CliError(`${id}: ${err.message}`, ExitCodes.usage);
          throw err;
        }
        const res: protos.temporal.api.workflowservice.v1.IResetWorkflowExecutionResponse = await c.workflowService.resetWorkflowExecution({
          namespace: e.TEMPORAL_NAMESPACE,
          workflowExecution: { workflowId: id, runId: desc.runId },
          // protobufjs takes a plain number for an int64 field; its typings only say Long.
          workflowTaskFinishEventId: point.workflowTaskFinishEventId as unknown as Long,
          reason: opts.reason ?? `tanren retry --from ${point.stage}`,
          requestId: randomUUID(),
          // Signals are re-applied as the UI's Reset does; tanren's workflow ignores any that could change what runs.
          resetReapplyType: temporal.api.enums.v1.ResetReapplyType.RESET_REAPPLY_TYPE_SIGNAL,
        });
        process.stdout.write(
          `retrying ${id} from stage "${point.stage}" (new execution ${res.runId})\n  UI: ${uiUrl(e.TANREN_UI_URL, e.TEMPORAL_NAMESPACE, id, res.runId ?? undefined)}\n`,
        );
        return opts.watch ? watchRun(c, e, id) : ExitCodes.ok;
      }),
    );
}
