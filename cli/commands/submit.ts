/** `tanren submit <spec>`: validates, resolves parameters and starts a run. */
import { WorkflowExecutionAlreadyStartedError } from '@temporalio/client';
import type { Command } from 'commander';
import { z } from 'zod';
import { PIPELINE_WORKFLOW_TYPE, SEARCH_ATTRIBUTES } from '../../schemas/names.js';
import type { PipelineSpec } from '../../schemas/pipeline.js';
import { action, CliError, client, env, parseOptions } from '../common.js';
import { ExitCodes } from '../output.js';
import { uiUrl } from '../run-status.js';
import { loadSpecFile, parseOverrides, renderRunInput } from '../spec-file.js';
import { watchRun } from '../watch-run.js';

const Options = z.object({
  set: z.array(z.string()).default([]),
  runName: z
    .string()
    .regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, 'letters, digits, ".", "-" and "_"')
    .optional(),
  watch: z.boolean().default(false),
  noCache: z.boolean().default(false),
  json: z.boolean().default(false),
});

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
    .option('--run-name <name>', 'name of the run (the workflow id is <pipeline>-<name>)')
    .option('--watch', 'follow the run until it ends')
    .option('--no-cache', 'ignore cached outputs of earlier runs')
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
        const c = await client(e);
        const workflowId = runId(spec, opts.runName);
        let handle;
        try {
          handle = await c.workflow.start(PIPELINE_WORKFLOW_TYPE, {
            taskQueue: e.TANREN_CONTROL_QUEUE,
            workflowId,
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
            throw new CliError(
              `a run with id "${workflowId}" is already running; watch it with \`tanren watch ${workflowId}\` or choose another --run-name`,
              ExitCodes.failed,
            );
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
