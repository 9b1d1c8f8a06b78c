/**
 * `tanren compare <run> <run>…`: what differs between runs: params, final
 * metrics per stage, eval scores, as a table on the terminal (or `--json`), and
 * an HTML page with the loss curves overlaid and the MT-Bench × llm-jp-eval
 * scatter holding every run's point, written locally.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Command } from 'commander';
import { z } from 'zod';
import { buildComparePage, formatValue, type ComparedRun, type Comparison } from '../../stages/report/compare.js';
import { loadReportInputs, readReferenceScores } from '../../stages/report/load-inputs.js';
import { ReportInputError } from '../../stages/report/params.js';
import { action, CliError, client, env, parseOptions } from '../common.js';
import { colour, ExitCodes, table } from '../output.js';
import { downloadReportInputs, runInput } from '../run-outputs.js';
import { cliStore, manifestFinder, runStages } from '../storage.js';

const Options = z.object({
  out: z.string().optional(),
  referenceScores: z.string().default('data/reference-scores.csv'),
  json: z.boolean().default(false),
});

/** Registers `compare`. */
export function configureCompareCommand(program: Command): void {
  program
    .command('compare')
    .description('compare runs: params that differ, final metrics per stage, eval scores; an HTML page with loss curves overlaid and the scatter')
    .argument('<runs...>', 'workflow ids of two or more runs')
    .option('-o, --out <file>', 'where to write the HTML page (default ./tanren-compare.html)')
    .option('--reference-scores <csv>', 'reference points for the scatter (model,mt_bench,llm_jp_eval)', 'data/reference-scores.csv')
    .option('--json', 'print the comparison as JSON')
    .action(
      action(async (runIds: string[], raw: unknown) => {
        const opts = parseOptions(Options, raw);
        if (runIds.length < 2) throw new CliError('compare needs at least two runs: tanren compare <run> <run>…', ExitCodes.usage);
        if (new Set(runIds).size !== runIds.length) throw new CliError(`a run is named twice: ${runIds.join(' ')}`, ExitCodes.usage);
        const e = env();
        const c = await client(e);
        const store = cliStore(e);
        const work = await mkdtemp(path.join(os.tmpdir(), 'tanren-compare-'));
        try {
          const runs: ComparedRun[] = [];
          for (const run of runIds) {
            const known = await runStages(e, store, run, c);
            const inputs = path.join(work, run);
            await mkdir(inputs, { recursive: true });
            const { results } = await downloadReportInputs(store, manifestFinder(e, store, run, c), known.stages, inputs);
            // Loaded as a report would: the same metric histories and eval scores.
            const loaded = await loadReportInputs(
              { reference_scores: opts.referenceScores },
              { inputsDir: inputs, cwd: e.projectDir, paramsSource: '--reference-scores', runId: run, now: new Date() },
            ).catch((err: unknown) => {
              if (err instanceof ReportInputError) throw new CliError(`run ${run}: ${err.message}`, ExitCodes.failed);
              throw err;
            });
            const input = (await runInput(e, c, run)) as { spec?: ComparedRun['spec'] } | undefined;
            runs.push({ run, spec: input?.spec, metrics: loaded.metrics, results, llmJpEval: loaded.llmJpEval, mtBench: loaded.mtBench });
          }
          const references = await readReferenceScores(opts.referenceScores, { cwd: e.projectDir, paramsSource: '--reference-scores' }).catch(
            (err: unknown) => {
              if (err instanceof ReportInputError) throw new CliError(err.message, ExitCodes.usage);
              throw err;
            },
          );
          const page = await buildComparePage(runs, references, { generatedAt: new Date().toISOString(), referenceSource: opts.referenceScores });
          const html = path.resolve(opts.out ?? 'tanren-compare.html');
          await mkdir(path.dirname(html), { recursive: true });
          await writeFile(html, page.html);
          if (opts.json) process.stdout.write(`${JSON.stringify({ ...page.comparison, html })}\n`);
          else process.stdout.write(`${renderComparison(page.comparison)}\n\nHTML: ${html}\n`);
        } finally {
          await rm(work, { recursive: true, force: true });
        }
      }),
    );
}

/** The comparison as terminal tables: params that differ, final metrics, evals. */
export function renderComparison(c: Comparison): string {
  const header = ['', ...c.runs];
  const row = (name: string, values: ReadonlyArray<unknown>) => [name, ...values.map(formatValue)];
  const parts = [colour.bold(`params that differ (${c.params.length} of ${c.paramsCompared})`)];
  parts.push(
    c.params.length
      ? table(
          header,
          c.params.map((r) => row(r.name, r.values)),
        )
      : colour.dim('  none'),
  );
  parts.push('', colour.bold('final metrics per stage'));
  parts.push(
    c.finals.length
      ? table(
          header,
          c.finals.map((r) => row(r.name, r.values)),
        )
      : colour.dim('  no stage logged metrics'),
  );
  parts.push('', colour.bold('evaluation'));
  parts.push(table(header, [row('llm-jp-eval average', c.evals.llmJpEval), row('MT-Bench', c.evals.mtBench)]));
  return parts.join('\n');
}
