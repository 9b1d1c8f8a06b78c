/**
 * Reads what a report needs from the stage protocol's directories: the needed
 * stages' outputs under TANREN_INPUTS and the reference-scores CSV. All file
 * I/O of the report stage lives here; `buildReport` only sees the result.
 */
import { createReadStream } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { CsvSyntaxError, parseCsv } from './csv.js';
import { ReportInputError, type ReportParams } from './params.js';
import type {
  LlmJpEvalDataset,
  LlmJpEvalSample,
  LlmJpEvalScores,
  MetricPoint,
  MetricSeries,
  MtBenchScores,
  MtBenchTurn,
  ReferencePoint,
  ReportInputs,
} from './types.js';

/** Where and when the report is made; everything the loader takes from the environment. */
export interface LoadContext {
  /** TANREN_INPUTS; undefined when the stage has no needs. */
  readonly inputsDir?: string;
  /** Directory relative paths in params are resolved against (the worker's project dir). */
  readonly cwd: string;
  /** Name of the params file, for error messages. */
  readonly paramsSource: string;
  readonly runId?: string;
  readonly pipeline?: string;
  /** Time stamped on the page. */
  readonly now: Date;
}

/** Stages whose metric history is shown first, in this order; others follow by name. */
const TRAINING_ORDER = ['pretrain', 'sft', 'dpo'];
/** How deep under a stage's outputs `metrics.jsonl` is looked for. */
const MAX_DEPTH = 6;

/**
 * Reads params-named files and the needed stages' outputs into `ReportInputs`.
 * @throws ReportInputError for a missing or malformed reference CSV, a params
 *   field naming a stage that is not needed, or a malformed `scores.json`.
 */
export async function loadReportInputs(params: ReportParams, ctx: LoadContext): Promise<ReportInputs> {
  const notes: string[] = [];
  const references = await readReferenceScores(params.reference_scores, ctx, notes);
  const stages = await listStages(ctx.inputsDir);
  if (ctx.inputsDir === undefined) notes.push('TANREN_INPUTS is not set: this report stage has no needed stages to read.');

  // scores.json of every needed stage; one that is not JSON only matters if it is picked below.
  const scores = new Map<string, unknown>();
  for (const s of stages) {
    const file = path.join(ctx.inputsDir!, s, 'scores.json');
    if (await isFile(file)) scores.set(s, await readJson(file));
  }
  const scoresOf = (stage: string): unknown => {
    const v = scores.get(stage);
    if (v instanceof BadJson) throw new ReportInputError(v.message);
    return v;
  };
  const badNamed = (s: string, id: string) => s === id && scores.get(s) instanceof BadJson;

  const llmStage = await pickStage(
    'llm_jp_eval',
    params.llm_jp_eval,
    stages,
    ctx,
    notes,
    async (s) => isLlmJpEvalScores(scores.get(s)) || badNamed(s, 'llm-jp-eval'),
    'llm-jp-eval',
  );
  const llmJpEval = llmStage === undefined ? null : parseLlmJpEval(llmStage, scoresOf(llmStage), path.join(ctx.inputsDir!, llmStage, 'scores.json'));

  const mtStage = await pickStage(
    'mt_bench',
    params.mt_bench,
    stages.filter((s) => s !== llmStage),
    ctx,
    notes,
    async (s) => isMtBenchScores(scores.get(s)) || badNamed(s, 'mt-bench') || (!scores.has(s) && (await isFile(path.join(ctx.inputsDir!, s, 'answers.jsonl')))),
    'mt-bench',
  );
  const mtBench: MtBenchScores =
    mtStage === undefined ? { status: 'absent' } : await parseMtBench(mtStage, scoresOf(mtStage), path.join(ctx.inputsDir!, mtStage));
  const mtBenchTurns = mtStage === undefined ? [] : await readMtBenchTurns(path.join(ctx.inputsDir!, mtStage), notes);
  const llmJpEvalSamples = llmStage === undefined ? [] : await readLlmJpEvalSamples(path.join(ctx.inputsDir!, llmStage), scoresOf(llmStage), notes);

  const metrics: MetricSeries[] = [];
  for (const s of sortTraining(stages)) metrics.push(...(await readMetricHistory(ctx.inputsDir!, s, notes)));

  return {
    title: params.title ?? `tanren report${ctx.pipeline ? `: ${ctx.pipeline}` : ''}`,
    modelName: params.model_name ?? ctx.runId ?? 'this run',
    runId: ctx.runId,
    pipeline: ctx.pipeline,
    generatedAt: ctx.now.toISOString(),
    references,
    referenceSource: params.reference_scores,
    mtBench,
    llmJpEval,
    mtBenchTurns,
    llmJpEvalSamples,
    metrics,
    timeline: params.timeline ?? null,
    ...(params.timeline_omitted ? { timelineOmitted: params.timeline_omitted } : {}),
    ...(params.sweeps?.length ? { sweeps: params.sweeps } : {}),
    notes,
  };
}

/**
 * Reads the reference CSV: header with `model`, `mt_bench`, `llm_jp_eval` and
 * optionally `note`, `source` (where the figures were published) and `date`
 * (any order, extra columns ignored); empty score cells are null.
 * @throws ReportInputError naming the file (and line and column for a bad cell).
 */
export async function readReferenceScores(given: string, ctx: Pick<LoadContext, 'cwd' | 'paramsSource'>, notes: string[] = []): Promise<ReferencePoint[]> {
  const file = path.resolve(ctx.cwd, given);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'does not exist' : `cannot be read (${(err as Error).message})`;
    throw new ReportInputError(
      `${ctx.paramsSource}: field 'reference_scores': ${given} (${file}) ${why}; expected a CSV with columns model,mt_bench,llm_jp_eval[,note,source,date]`,
    );
  }
  let records;
  try {
    records = parseCsv(text);
  } catch (err) {
    if (err instanceof CsvSyntaxError) throw new ReportInputError(`${given}:${err.line}: not valid CSV (${err.message})`);
    throw err;
  }
  if (records.length === 0) throw new ReportInputError(`${given}: empty file; expected a header line model,mt_bench,llm_jp_eval[,note]`);
  const header = records[0].fields.map((h) => h.trim().toLowerCase());
  const col = (name: string) => header.indexOf(name);
  const missing = ['model', 'mt_bench', 'llm_jp_eval'].filter((c) => col(c) < 0);
  if (missing.length > 0) {
    throw new ReportInputError(
      `${given}:1: header lacks column(s) ${missing.join(', ')} (has: ${header.join(', ')}); expected model,mt_bench,llm_jp_eval[,note]`,
    );
  }
  const out: ReferencePoint[] = [];
  for (const { line, fields } of records.slice(1)) {
    const cell = (name: string) => (col(name) >= 0 ? (fields[col(name)] ?? '').trim() : '');
    const model = cell('model');
    if (!model) throw new ReportInputError(`${given}:${line}: column 'model' is empty`);
    const num = (name: string): number | null => {
      const v = cell(name);
      if (v === '') return null;
      const n = Number(v);
      if (!Number.isFinite(n)) throw new ReportInputError(`${given}:${line}: column '${name}' must be a number or empty, got "${v}"`);
      return n;
    };
    const note = cell('note');
    const source = cell('source');
    const date = cell('date');
    out.push({
      model,
      mtBench: num('mt_bench'),
      llmJpEval: num('llm_jp_eval'),
      ...(note ? { note } : {}),
      ...(source ? { source } : {}),
      ...(date ? { date } : {}),
    });
  }
  if (out.length === 0) notes.push(`${given} lists no reference models.`);
  return out;
}

async function listStages(inputsDir: string | undefined): Promise<string[]> {
  if (inputsDir === undefined) return [];
  let entries;
  try {
    entries = await readdir(inputsDir, { withFileTypes: true });
  } catch (err) {
    throw new ReportInputError(`TANREN_INPUTS: ${inputsDir} cannot be read (${(err as Error).message})`);
  }
  return entries
    .filter((e) => e.isDirectory())
    .map((e) => e.name)
    .sort();
}

/**
 * The stage a params field names (it must be a needed stage), else the one whose
 * id is `preferred`, else the first whose outputs match; undefined when none does.
 */
async function pickStage(
  field: string,
  named: string | undefined,
  stages: readonly string[],
  ctx: LoadContext,
  notes: string[],
  matches: (stage: string) => Promise<boolean>,
  preferred: string,
): Promise<string | undefined> {
  if (named !== undefined) {
    if (!stages.includes(named)) {
      throw new ReportInputError(
        `${ctx.paramsSource}: field '${field}': stage "${named}" is not among this stage's needs (inputs: ${stages.join(', ') || 'none'})`,
      );
    }
    return named;
  }
  const found: string[] = [];
  for (const s of stages) if (await matches(s)) found.push(s);
  if (found.length === 0) return undefined;
  const pick = found.includes(preferred) ? preferred : found[0];
  if (found.length > 1) notes.push(`Several needed stages look like ${preferred} (${found.join(', ')}); used "${pick}". Set param '${field}' to choose.`);
  return pick;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isLlmJpEvalScores(v: unknown): boolean {
  return isRecord(v) && 'average' in v && 'datasets' in v;
}

function isMtBenchScores(v: unknown): boolean {
  return isRecord(v) && ('categories' in v || v.judge === 'not configured' || ('score' in v && !('average' in v)));
}

function finite(v: unknown): v is number {
  return typeof v === 'number' && Number.isFinite(v);
}

/** Validates the llm-jp-eval stage's scores.json (written by stages/tanren_stages/llm_jp_eval.py). */
function parseLlmJpEval(stage: string, raw: unknown, file: string): LlmJpEvalScores {
  if (raw === undefined) throw new ReportInputError(`${file}: missing; the llm-jp-eval stage "${stage}" writes scores.json`);
  if (!isRecord(raw) || !finite(raw.average)) throw new ReportInputError(`${file}: field 'average' must be a number`);
  if (!isRecord(raw.datasets)) throw new ReportInputError(`${file}: field 'datasets' must be an object {name: {samples, metrics, score}}`);
  const datasets: Record<string, LlmJpEvalDataset> = {};
  for (const [name, d] of Object.entries(raw.datasets)) {
    if (!isRecord(d) || !finite(d.score)) throw new ReportInputError(`${file}: field 'datasets.${name}.score' must be a number`);
    const metrics: Record<string, number> = {};
    if (isRecord(d.metrics)) for (const [m, v] of Object.entries(d.metrics)) if (finite(v)) metrics[m] = v;
    datasets[name] = { samples: finite(d.samples) ? d.samples : 0, metrics, score: d.score };
  }
  return { stage, average: raw.average, datasets };
}

/**
 * The MT-Bench outcome. mt_bench.py writes scores.json only when a judge is
 * configured; without one it leaves answers.jsonl and reports `judge: not configured`.
 */
async function parseMtBench(stage: string, raw: unknown, dir: string): Promise<MtBenchScores> {
  const file = path.join(dir, 'scores.json');
  if (raw === undefined || (isRecord(raw) && raw.judge === 'not configured')) {
    const answers = path.join(dir, 'answers.jsonl');
    const answered = (await isFile(answers)) ? (await readFile(answers, 'utf8')).split('\n').filter((l) => l.trim()).length : undefined;
    return { status: 'not-configured', stage, ...(answered !== undefined ? { answered } : {}) };
  }
  if (!isRecord(raw)) throw new ReportInputError(`${file}: must be a JSON object {score, categories, …}`);
  if (raw.score !== null && raw.score !== undefined && !finite(raw.score)) throw new ReportInputError(`${file}: field 'score' must be a number or null`);
  if (raw.categories !== undefined && !isRecord(raw.categories)) throw new ReportInputError(`${file}: field 'categories' must be an object {category: score}`);
  const categories: Record<string, number> = {};
  for (const [c, v] of Object.entries(raw.categories ?? {})) {
    if (!finite(v)) throw new ReportInputError(`${file}: field 'categories.${c}' must be a number`);
    categories[c] = v;
  }
  const opt = (k: string) => (finite(raw[k]) ? raw[k] : undefined);
  const judge = isRecord(raw.judge) ? raw.judge : {};
  const text = (v: unknown) => (typeof v === 'string' && v.trim() ? v : undefined);
  const judgeModel = text(judge.model) ?? text(raw.judge);
  const judgeNote = text(judge.note);
  return {
    status: 'scored',
    stage,
    score: finite(raw.score) ? raw.score : null,
    categories,
    unparsable: opt('unparsable'),
    judgeCalls: opt('judge_calls'),
    judgePromptTokens: opt('judge_prompt_tokens'),
    judgeCompletionTokens: opt('judge_completion_tokens'),
    judgeCost: finite(raw.judge_cost) ? raw.judge_cost : null,
    ...(judgeModel ? { judgeModel } : {}),
    ...(judgeNote ? { judgeNote } : {}),
  };
}

/** The lines of a JSONL file that are JSON objects; the count of other lines goes to `bad`. Missing file: []. */
async function readJsonlObjects(file: string): Promise<{ rows: Record<string, unknown>[]; bad: number }> {
  const rows: Record<string, unknown>[] = [];
  let bad = 0;
  if (!(await isFile(file))) return { rows, bad };
  const rl = createInterface({ input: createReadStream(file, 'utf8'), crlfDelay: Infinity });
  for await (const line of rl) {
    if (!line.trim()) continue;
    try {
      const obj: unknown = JSON.parse(line);
      if (isRecord(obj)) rows.push(obj);
      else bad++;
    } catch {
      bad++;
    }
  }
  return { rows, bad };
}

const str = (v: unknown): string | null => (typeof v === 'string' ? v : v === null || v === undefined ? null : JSON.stringify(v));
const strList = (v: unknown): (string | null)[] => (Array.isArray(v) ? v.map(str) : []);

/**
 * Every answered MT-Bench turn: mt_bench.py's answers.jsonl (`turns` = the answers,
 * `question` and `reference` = the question's and the reference answer's turns)
 * joined with judgments.jsonl (`rating`, `judgment`) by question id and turn.
 */
async function readMtBenchTurns(dir: string, notes: string[]): Promise<MtBenchTurn[]> {
  const answers = await readJsonlObjects(path.join(dir, 'answers.jsonl'));
  const judgments = await readJsonlObjects(path.join(dir, 'judgments.jsonl'));
  const bad = answers.bad + judgments.bad;
  if (bad > 0) notes.push(`${path.basename(dir)}: skipped ${bad} line(s) of answers.jsonl / judgments.jsonl that are not JSON objects.`);
  const judged = new Map<string, Record<string, unknown>>();
  for (const j of judgments.rows) judged.set(`${String(j.question_id)}#${String(j.turn)}`, j);
  const out: MtBenchTurn[] = [];
  let noQuestion = false;
  for (const a of answers.rows) {
    const qid = String(a.question_id);
    const questions = strList(a.question);
    const references = strList(a.reference);
    if (!Array.isArray(a.question)) noQuestion = true;
    strList(a.turns).forEach((answer, i) => {
      const j = judged.get(`${qid}#${i + 1}`);
      out.push({
        questionId: qid,
        category: typeof a.category === 'string' ? a.category : '',
        turn: i + 1,
        question: questions[i] ?? null,
        reference: references[i] ?? null,
        answer: answer ?? '',
        ...(j ? { score: finite(j.rating) ? j.rating : null, judgment: str(j.judgment) ?? '' } : {}),
      });
    });
  }
  if (noQuestion && out.length > 0)
    notes.push(`${path.basename(dir)}/answers.jsonl does not record the questions (written before they were): the question column is empty.`);
  return out;
}

/**
 * Every llm-jp-eval sample: llm_jp_eval.py's outputs/<dataset>.jsonl (input,
 * expected, prediction, scores per sample), with the dataset's designated metric
 * from scores.json (`datasets`, `excluded` or `not_scored` entries' `metric`).
 */
async function readLlmJpEvalSamples(dir: string, scores: unknown, notes: string[]): Promise<LlmJpEvalSample[]> {
  const designated = new Map<string, string>();
  if (isRecord(scores)) {
    for (const group of ['datasets', 'excluded', 'not_scored', 'uncategorised']) {
      const g = scores[group];
      if (isRecord(g)) for (const [name, d] of Object.entries(g)) if (isRecord(d) && typeof d.metric === 'string') designated.set(name, d.metric);
    }
  }
  const outDir = path.join(dir, 'outputs');
  let files: string[];
  try {
    files = (await readdir(outDir)).filter((f) => f.endsWith('.jsonl')).sort();
  } catch {
    return [];
  }
  const out: LlmJpEvalSample[] = [];
  for (const f of files) {
    const dataset = f.replace(/\.jsonl$/, '');
    const { rows, bad } = await readJsonlObjects(path.join(outDir, f));
    if (bad > 0) notes.push(`${path.basename(dir)}/outputs/${f}: skipped ${bad} line(s) that are not JSON objects.`);
    const metric = designated.get(dataset);
    rows.forEach((r, i) => {
      const sampleScores = isRecord(r.scores) ? r.scores : {};
      const m = metric ?? Object.keys(sampleScores)[0];
      const v = m === undefined ? undefined : sampleScores[m];
      out.push({
        dataset,
        index: finite(r.index) ? r.index : i,
        input: str(r.input) ?? '',
        reference: str(r.expected) ?? '',
        output: str(r.prediction) ?? str(r.raw) ?? '',
        ...(m ? { metric: m } : {}),
        score: finite(v) ? v : null,
      });
    });
  }
  return out;
}

function sortTraining(stages: readonly string[]): string[] {
  const rank = (s: string) => (TRAINING_ORDER.includes(s) ? TRAINING_ORDER.indexOf(s) : TRAINING_ORDER.length);
  return [...stages].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
}

/**
 * A stage's metric history: every `metrics.jsonl` under its outputs (lines
 * `{"step": n, "loss": x, …}` or `{"step": n, "values": {…}}`); failing that,
 * metric events from an `events.jsonl` there.
 */
async function readMetricHistory(inputsDir: string, stage: string, notes: string[]): Promise<MetricSeries[]> {
  const root = path.join(inputsDir, stage);
  const found = await findFiles(root, new Set(['metrics.jsonl', 'events.jsonl']));
  const metricsFiles = found.filter((f) => path.basename(f) === 'metrics.jsonl');
  const files = metricsFiles.length > 0 ? metricsFiles : found.filter((f) => path.basename(f) === 'events.jsonl');
  const out: MetricSeries[] = [];
  for (const f of files) {
    const source = path.relative(root, f).split(path.sep).join('/');
    const fromEvents = path.basename(f) === 'events.jsonl';
    const { points, bad } = await readMetricLines(f, fromEvents);
    if (bad > 0) notes.push(`${stage}/${source}: skipped ${bad} line(s) that are not JSON objects.`);
    if (points.length === 0) continue;
    if (fromEvents) notes.push(`${stage}: loss curve read from the metric events in ${source} (no metrics.jsonl in its outputs).`);
    out.push({ stage: files.length > 1 ? `${stage} (${source})` : stage, source, points });
  }
  return out;
}

async function readMetricLines(file: string, fromEvents: boolean): Promise<{ points: MetricPoint[]; bad: number }> {
  const points: MetricPoint[] = [];
  let bad = 0;
  const rl = createInterface({ input: createReadStream(file, 'utf8'), crlfDelay: Infinity });
  for await (const line of rl) {
    if (!line.trim()) continue;
    let obj: unknown;
    try {
      obj = JSON.parse(line);
    } catch {
      bad++;
      continue;
    }
    if (!isRecord(obj)) {
      bad++;
      continue;
    }
    if (fromEvents && obj.event !== 'metric') continue;
    const src = isRecord(obj.values) ? obj.values : fromEvents ? {} : obj;
    const values: Record<string, number> = {};
    for (const [k, v] of Object.entries(src)) if (k !== 'step' && k !== 'event' && finite(v)) values[k] = v;
    if (Object.keys(values).length === 0) continue;
    const step = finite(obj.step) ? obj.step : points.length > 0 ? points[points.length - 1].step + 1 : 1;
    points.push({ step, values });
  }
  return { points, bad };
}

async function findFiles(root: string, names: ReadonlySet<string>, depth = 0): Promise<string[]> {
  let entries;
  try {
    entries = await readdir(root, { withFileTypes: true });
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const e of entries.sort((a, b) => a.name.localeCompare(b.name))) {
    const p = path.join(root, e.name);
    if (e.isFile() && names.has(e.name)) out.push(p);
    else if (e.isDirectory() && depth < MAX_DEPTH) out.push(...(await findFiles(p, names, depth + 1)));
  }
  return out;
}

async function isFile(p: string): Promise<boolean> {
  try {
    return (await stat(p)).isFile();
  } catch {
    return false;
  }
}

/** A file that is not JSON, kept as a value so only the stage that is used fails the report. */
class BadJson {
  constructor(readonly message: string) {}
}

async function readJson(file: string): Promise<unknown> {
  const text = await readFile(file, 'utf8');
  try {
    return JSON.parse(text);
  } catch (err) {
    return new BadJson(`${file}: not valid JSON (${(err as Error).message})`);
  }
}
