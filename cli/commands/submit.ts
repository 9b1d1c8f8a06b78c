/** `tanren submit <spec>`: validates, resolves parameters and starts a run. */
import { WorkflowExecutionAlreadyStartedError, WorkflowNotFoundError, type Client } from '@temporalio/client';
import type { Command } from 'commander';
import { z } from 'zod';
import { MAX_RUN_ID_CHARS, PIPELINE_WORKFLOW_TYPE, SEARCH_ATTRIBUTES } from '../../schemas/names.js';
import type { PipelineSpec } from '../../schemas/pipeline.js';
import { action, CliError, client, env, parseOptions } from '../common.js';
import { ExitCodes } from '../output.js';
import { clearRunPrefix, RunIdInUseError, staleObjects } from '../reuse-run.js';
import { uiUrl } from '../run-status.js';
import { loadSpecFile, parseOverrides, renderRunInput } from '../spec-file.js';
import { cliStore } from '../storage.js';
import { watchRun } from '../watch-run.js';

const Options = z.object({
  set: z.array(z.string()).default([]),
  runName: z
    .string()
    .regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, 'letters, digits, ".", "-" and "_"')
    .optional(),
  watch: z.boolean().default(false),
  noCache: z.boolean().default(false),
  reuse: z.boolean().default(false),
  json: z.boolean().default(false),
});

/** Temporal's status of the newest execution with this id and when it closed, or undefined when Temporal does not know it. */
async function earlierExecution(c: Client, workflowId: string): Promise<{ status: string; closed?: Date } | undefined> {
  try {
    const d = await c.workflow.getHandle(workflowId).describe();
    return { status: d.status.name, closed: d.closeTime };
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) return undefined;
    throw err;
  }
}

const alreadyRunning = (workflowId: string) =>
  new CliError(`a run with id "${workflowId}" is already running; watch it with \`tanren watch ${workflowId}\` or choose another --run-name`, ExitCodes.failed);

/** `<pipeline>-<run name>` or `<pipeline>-<UTC timestamp>`. */
export function runId(spec: PipelineSpec, runName?: string, now = new Date()): string {
  const stamp = now.toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15);
  return `${spec.name}-${runName ?? stamp}`;
}

/** Registers `submit`. */
export function configureSubmitCommand(program: Command): void {
  program
    .command('submit')
    .description('validate a pipeline spec and start a run')
    .argument('<spec>', 'pipeline spec file')
    .option('--set <name=value>', 'override a parameter (repeatable)', (v: string, prev: string[] = []) => [...prev, v])
    .option('--run-name <name>', 'name of the run (the workflow id is <pipeline>-<name>, at most 200 characters in all)')
    .option('--watch', 'follow the run until it ends')
    .option('--no-cache', 'ignore cached outputs of earlier runs')
    .option('--reuse', "start again under the id of a closed run: first removes that run's manifests, checkpoints and logs (outputs stay)")
    .option('--json', 'print {workflowId, runId, url} as JSON')
    .action(
      action(async (file: string, raw: { cache?: boolean }) => {
        const opts = parseOptions(Options, { ...raw, noCache: raw.cache === false });
        const e = env();
        const spec = loadSpecFile(file);
        const input = renderRunInput(spec, {
          file,
          overrides: parseOverrides(opts.set, file, spec),
          env: e,
          noCache: opts.noCache,
          runName: opts.runName,
        });
        const workflowId = runId(spec, opts.runName);
        // Checked before anything is started: every stage of a run under a longer id would fail.
        if (workflowId.length > MAX_RUN_ID_CHARS) {
          throw new CliError(
            `--run-name: the run id "${spec.name}-<run name>" would have ${workflowId.length} characters; a run id has at most ${MAX_RUN_ID_CHARS} ` +
              '(it names directories and object keys): choose a shorter --run-name',
            ExitCodes.usage,
          );
        }
        const c = await client(e);
        // The run id names the run's objects: a second execution must not find the first one's manifests and checkpoints.
        const earlier = await earlierExecution(c, workflowId);
        if (earlier?.status === 'RUNNING') throw alreadyRunning(workflowId);
        if (opts.reuse) {
          const removed = await clearRunPrefix(cliStore(e), workflowId);
          if (!opts.json && (earlier || removed))
            process.stderr.write(`reusing ${workflowId}: removed ${removed} objects of the earlier run (its outputs stay)\n`);
        } else if (earlier) {
          throw new RunIdInUseError(workflowId, earlier.status, earlier.closed ? `closed ${earlier.closed.toISOString()}` : '');
        } else {
          let stale: string[] = [];
          try {
            stale = await staleObjects(cliStore(e), workflowId);
          } catch (err) {
            // Without object storage the check cannot be made; Temporal's own record was the main one.
            process.stderr.write(`warning: could not check object storage for an earlier run ${workflowId}: ${(err as Error).message}\n`);
          }
          if (stale.length) throw new RunIdInUseError(workflowId, 'unknown to Temporal', `${stale.length} objects in the bucket`);
        }
        let handle;
        try {
          handle = await c.workflow.start(PIPELINE_WORKFLOW_TYPE, {
            taskQueue: e.TANREN_CONTROL_QUEUE,
            workflowId,
            // Closes the race with another submit between the check above and this start.
            workflowIdReusePolicy: opts.reuse ? 'ALLOW_DUPLICATE' : 'REJECT_DUPLICATE',
            args: [input],
            searchAttributes: {
              [SEARCH_ATTRIBUTES.pipeline]: [spec.name],
              [SEARCH_ATTRIBUTES.status]: ['running'],
            },
            memo: { specDigest: input.options?.specDigest, tanrenVersion: input.options?.tanrenVersion, specFile: file },
            staticSummary: `${spec.name}${spec.profile ? ` (${spec.profile})` : ''}: ${spec.stages.length} stages`,
            staticDetails: spec.description,
          });
        } catch (err) {
          if (err instanceof WorkflowExecutionAlreadyStartedError) {
            const now = await earlierExecution(c, workflowId);
            if (now && now.status !== 'RUNNING') throw new RunIdInUseError(workflowId, now.status, '');
            throw alreadyRunning(workflowId);
          }
          throw err;
        }
        const url = uiUrl(e.TANREN_UI_URL, e.TEMPORAL_NAMESPACE, workflowId, handle.firstExecutionRunId);
        if (opts.json) {
          process.stdout.write(`${JSON.stringify({ workflowId, runId: handle.firstExecutionRunId, url })}\n`);
        } else {
          process.stdout.write(`submitted ${workflowId}\n  UI: ${url}\n`);
        }
        if (opts.watch) return watchRun(c, e, workflowId);
        return ExitCodes.ok;
      }),
    );
}
