/**
 * The `uses: report` stage program (docs/stage-protocol.md): reads the params
 * and the needed stages' outputs, writes report.html and one .svg per chart to
 * TANREN_OUTPUT, and announces them with artifact and result events.
 *
 * Exit 2 (InvalidStageInput) for bad params or input files, 3 (StageConfigError)
 * when the protocol's environment is missing, 1 for anything unexpected.
 */
import { appendFileSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { buildReport, CHART_FILES } from './build-report.js';
import { loadReportInputs } from './load-inputs.js';
import { parseReportParams, ReportInputError } from './params.js';

/** Name of the page in the stage's outputs. */
export const REPORT_FILE = 'report.html';

class ReportConfigError extends Error {}

/** Appends one protocol event per line (each append is its own write); to stderr when TANREN_EVENTS is unset. */
function emit(event: string, fields: Record<string, unknown>): void {
  const line = JSON.stringify({ event, ...fields });
  const file = process.env.TANREN_EVENTS;
  if (file) appendFileSync(file, line + '\n');
  else process.stderr.write(`[event] ${line}\n`);
}

async function readParams(file: string | undefined): Promise<unknown> {
  if (!file) return {};
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new ReportConfigError(`TANREN_PARAMS: ${file} cannot be read (${(err as Error).message})`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new ReportInputError(`${file}: not valid JSON (${(err as Error).message})`);
  }
}

async function run(): Promise<void> {
  const env = process.env;
  const outDir = env.TANREN_OUTPUT;
  if (!outDir) throw new ReportConfigError('TANREN_OUTPUT is not set: run this program as a tanren stage (see docs/stage-protocol.md)');
  const paramsSource = env.TANREN_PARAMS ?? 'params';
  const params = parseReportParams(await readParams(env.TANREN_PARAMS), paramsSource);
  const inputs = await loadReportInputs(params, {
    inputsDir: env.TANREN_INPUTS || undefined,
    cwd: process.cwd(),
    paramsSource,
    runId: env.TANREN_RUN_ID,
    pipeline: env.TANREN_PIPELINE,
    now: new Date(),
  });
  const report = await buildReport(inputs);

  await mkdir(outDir, { recursive: true });
  await writeFile(path.join(outDir, REPORT_FILE), report.html);
  for (const [file, svg] of Object.entries(report.svgs)) await writeFile(path.join(outDir, file), svg);

  const descriptions: Record<string, string> = {
    [CHART_FILES.scatter]: 'MT-Bench × llm-jp-eval scatter',
    [CHART_FILES.loss]: 'training loss curves',
    [CHART_FILES.timeline]: 'stage timeline',
  };
  emit('artifact', { path: REPORT_FILE, description: 'HTML report (self-contained)' });
  for (const file of Object.keys(report.svgs)) emit('artifact', { path: file, description: descriptions[file] ?? 'chart' });
  const s = report.summary;
  emit('result', {
    values: {
      report: REPORT_FILE,
      points: s.points,
      charts: Object.keys(report.svgs),
      run_point: s.runPoint,
      mt_bench: s.mtBench,
      ...(s.mtBenchMissing ? { mt_bench_missing: s.mtBenchMissing } : {}),
      llm_jp_eval: s.llmJpEval,
      loss_stages: s.lossStages,
      timeline: s.timeline,
    },
  });
}

/** Runs the stage and maps errors to the protocol's exit codes, with a one-line reason on stderr. */
async function main(): Promise<number> {
  try {
    await run();
    return 0;
  } catch (err) {
    const [type, code] =
      err instanceof ReportInputError ? ['InvalidStageInput', 2] : err instanceof ReportConfigError ? ['StageConfigError', 3] : ['StageCrashed', 1];
    const message = (err instanceof Error ? err.message : String(err)).replace(/\s*\n\s*/g, ' ');
    try {
      emit('error', { type, message });
    } catch {
      // the events file is unusable; stderr and the exit code still tell
    }
    process.stderr.write(`${type}: ${message}\n`);
    if (code === 1 && err instanceof Error && err.stack) process.stderr.write(err.stack + '\n');
    return code;
  }
}

process.exitCode = await main();
