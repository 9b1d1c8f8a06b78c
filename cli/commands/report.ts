/**
 * `tanren report <run>`: builds the run's HTML report (MT-Bench × llm-jp-eval
 * scatter, loss curves, stage timeline, eval tables) from what the run stored,
 * uploads it next to the run's stages and saves a local copy.
 */
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { execa } from 'execa';
import { z } from 'zod';
import { describeFiles } from '../../activities/files.js';
import { attemptToken, keys, outputKeys } from '../../activities/storage/keys.js';
import { action, CliError, client, env, parseOptions } from '../common.js';
import { ExitCodes } from '../output.js';
import { downloadReportInputs } from '../run-outputs.js';
import { fetchRun } from '../run-status.js';
import { cliStore, manifestFinder, runStages } from '../storage.js';

const Options = z.object({
  output: z.string().optional(),
  referenceScores: z.string().default('data/reference-scores.csv'),
  json: z.boolean().default(false),
});

const REPORT_MAIN = fileURLToPath(new URL('../../stages/report/main.js', import.meta.url));

/** Registers `report`. */
export function configureReportCommand(program: Command): void {
  program
    .command('report')
    .description('build the HTML report of a run (scatter, loss curves, timeline) and store it with the run')
    .argument('<run>', 'workflow id of the run')
    .option('-o, --output <dir>', 'where to save a local copy (default ./tanren-report-<run>)')
    .option('--reference-scores <csv>', 'reference points for the scatter (model,mt_bench,llm_jp_eval)', 'data/reference-scores.csv')
    .option('--json', 'print the result as JSON')
    .action(
      action(async (run: string, raw: unknown) => {
        const opts = parseOptions(Options, raw);
        const e = env();
        const c = await client(e);
        const store = cliStore(e);
        const known = await runStages(e, store, run, c);
        const find = manifestFinder(e, store, run, c);
        const work = await mkdtemp(path.join(os.tmpdir(), 'tanren-report-'));
        try {
          const inputs = path.join(work, 'inputs');
          const { files: used } = await downloadReportInputs(store, find, known.stages, inputs);
          if (!used) throw new CliError(`run ${run} has no evaluation or training outputs to report on yet`, ExitCodes.notFound);
          const view = await fetchRun(c, run).catch(() => undefined);
          const timeline = (view?.status?.stages ?? [])
            .filter((s) => s.startedAt && s.endedAt && Date.parse(s.endedAt) >= Date.parse(s.startedAt))
            .map((s) => ({
              stage: s.id,
              start: s.startedAt!,
              end: s.endedAt!,
              ...(s.attempt ? { attempts: s.attempt } : {}),
              state: s.state,
              ...(s.cachedFrom ? { cachedFrom: s.cachedFrom } : {}),
            }));
          const output = path.join(work, 'output');
          await mkdir(output, { recursive: true });
          await mkdir(inputs, { recursive: true });
          const params = path.join(work, 'params.json');
          await writeFile(
            params,
            JSON.stringify({
              reference_scores: opts.referenceScores,
              title: `tanren report: ${run}`,
              model_name: run,
              ...(timeline.length ? { timeline } : {}),
            }),
          );
          const events = path.join(work, 'events.jsonl');
          await writeFile(events, '');
          const r = await execa(process.execPath, [REPORT_MAIN], {
            cwd: e.projectDir,
            reject: false,
            env: {
              TANREN_RUN_ID: run,
              TANREN_STAGE_ID: 'report',
              TANREN_ATTEMPT: '1',
              TANREN_PARAMS: params,
              TANREN_INPUTS: inputs,
              TANREN_OUTPUT: output,
              TANREN_EVENTS: events,
            },
          });
          if (r.exitCode !== 0) throw new CliError(`the report could not be built: ${String(r.stderr).trim().split('\n').at(-1)}`, ExitCodes.failed);
          // Stored beside the run's stages like a stage's outputs: a prefix of its own, the manifest last, pointing at it.
          const prefix = outputKeys.attempt(run, '_report', 1, attemptToken());
          const files = (await describeFiles(output)).map((f) => ({ ...f, key: prefix + f.path }));
          for (const f of files) await store.putFile(f.key, path.join(output, f.path));
          await store.putText(
            keys.manifest(run, '_report'),
            JSON.stringify({ runId: run, stage: '_report', attempt: 1, createdAt: new Date().toISOString(), prefix, files, result: {} }, null, 2),
          );
          const local = path.resolve(opts.output ?? `tanren-report-${run}`);
          await mkdir(local, { recursive: true });
          for (const name of await readdir(output)) await store.getFile(prefix + name, path.join(local, name));
          const where = { html: `s3://${e.TANREN_BUCKET}/${prefix}report.html`, local: path.join(local, 'report.html'), files: files.length };
          if (opts.json) process.stdout.write(`${JSON.stringify(where)}\n`);
          else process.stdout.write(`report of ${run}\n  stored: ${where.html}\n  local:  ${where.local}\n`);
        } finally {
          await rm(work, { recursive: true, force: true });
        }
      }),
    );
}
