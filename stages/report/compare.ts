/**
 * `tanren compare`'s pure part: from what several runs stored (their specs,
 * metric histories, eval scores) to the differences between them: params that
 * differ, final metrics per stage, eval scores, and one HTML page with the
 * runs' loss curves overlaid and their points in the MT-Bench × llm-jp-eval
 * scatter. No I/O; the charts are Vega-Lite rendered to SVG like the report's.
 */
import type { TopLevelSpec } from 'vega-lite';
import { escapeHtml, namespaceSvgIds, REPORT_CSS } from './build-report.js';
import { hasLoss, LOSS_METRICS, MAX_CURVE_POINTS, renderSvg, thin } from './charts.js';
import type { LlmJpEvalScores, MetricSeries, MtBenchScores, ReferencePoint } from './types.js';

/** What is known of one run. */
export interface ComparedRun {
  /** The run's workflow id. */
  readonly run: string;
  /** The run's resolved spec (its workflow input), when Temporal still knows the run. */
  readonly spec?: { name?: string; params?: Record<string, unknown>; stages?: Array<{ id: string; with?: Record<string, unknown> }> };
  /** Metric histories of its training stages. */
  readonly metrics: readonly MetricSeries[];
  /** Numeric figures each stage reported in its `result` (final_loss, …), by stage id. */
  readonly results: Readonly<Record<string, Readonly<Record<string, unknown>>>>;
  readonly llmJpEval: LlmJpEvalScores | null;
  readonly mtBench: MtBenchScores;
}

/** One row of values, one cell per run (undefined where a run has none). */
export interface CompareRow<T> {
  readonly name: string;
  readonly values: ReadonlyArray<T | undefined>;
}

/** The comparison of several runs. */
export interface Comparison {
  readonly runs: readonly string[];
  /** Params (`params.<name>`) and stage parameters (`<stage>.<field>`) whose values are not the same in every run. */
  readonly params: ReadonlyArray<CompareRow<unknown>>;
  /** How many params were compared (same in every run or not). */
  readonly paramsCompared: number;
  /** Final value of each logged metric and each numeric result, per stage: `<stage> <metric>`. */
  readonly finals: ReadonlyArray<CompareRow<number> & { readonly stage: string; readonly metric: string }>;
  /** llm-jp-eval average and MT-Bench overall score, per run (undefined where missing). */
  readonly evals: { readonly llmJpEval: ReadonlyArray<number | undefined>; readonly mtBench: ReadonlyArray<number | undefined> };
}

/** Flattens nested objects to dotted keys: `{a: {b: 1}}` → `{'a.b': 1}`; arrays stay values. */
function flatten(value: unknown, prefix: string, out: Map<string, unknown>): void {
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) flatten(v, prefix ? `${prefix}.${k}` : k, out);
  } else {
    out.set(prefix, value);
  }
}

/** Everything a run was started with, as dotted names: `pipeline`, `params.<name>`, `<stage>.<with field>`. */
export function runParams(run: ComparedRun): Map<string, unknown> {
  const out = new Map<string, unknown>();
  if (!run.spec) return out;
  if (run.spec.name !== undefined) out.set('pipeline', run.spec.name);
  flatten(run.spec.params ?? {}, 'params', out);
  for (const s of run.spec.stages ?? []) flatten(s.with ?? {}, s.id, out);
  return out;
}

const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);

/** Compares runs; `runs` keeps its order in every row. */
export function compareRuns(runs: readonly ComparedRun[]): Comparison {
  const params = runs.map(runParams);
  const names = [...new Set(params.flatMap((p) => [...p.keys()]))];
  const differing = names.map((name) => ({ name, values: params.map((p) => p.get(name)) })).filter((row) => row.values.some((v) => !same(v, row.values[0])));

  const finals = new Map<string, { stage: string; metric: string; values: Array<number | undefined> }>();
  const put = (i: number, stage: string, metric: string, value: unknown) => {
    if (typeof value !== 'number' || !Number.isFinite(value)) return;
    const key = `${stage}\u0000${metric}`;
    const row = finals.get(key) ?? { stage, metric, values: runs.map(() => undefined) };
    row.values[i] = value;
    finals.set(key, row);
  };
  runs.forEach((r, i) => {
    for (const series of r.metrics) {
      // The last logged value of each metric (not every metric is logged every step).
      for (const p of series.points) for (const [m, v] of Object.entries(p.values)) put(i, series.stage, m, v);
    }
    for (const [stage, result] of Object.entries(r.results)) for (const [m, v] of Object.entries(result)) put(i, stage, m, v);
  });
  const stageOrder = [...new Set(runs.flatMap((r) => [...r.metrics.map((m) => m.stage), ...Object.keys(r.results)]))];
  const finalRows = [...finals.values()]
    .sort((a, b) => stageOrder.indexOf(a.stage) - stageOrder.indexOf(b.stage) || a.metric.localeCompare(b.metric))
    .map((r) => ({ ...r, name: `${r.stage} ${r.metric}` }));

  return {
    runs: runs.map((r) => r.run),
    params: differing,
    paramsCompared: names.length,
    finals: finalRows,
    evals: {
      llmJpEval: runs.map((r) => r.llmJpEval?.average),
      mtBench: runs.map((r) => (r.mtBench.status === 'scored' ? (r.mtBench.score ?? undefined) : undefined)),
    },
  };
}

/** A cell of the terminal table or the page: numbers to 4 significant digits, other values as JSON. */
export function formatValue(v: unknown): string {
  if (v === undefined) return '—';
  if (typeof v === 'number') return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(4)));
  if (typeof v === 'string') return v;
  return JSON.stringify(v);
}

/** Colours of the runs, in order (Vega's category10). */
export const RUN_COLOURS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf'];

/**
 * Loss against step, one panel per training stage, one line per run (colour),
 * `eval_loss` dashed.
 */
export function compareLossSpec(runs: readonly ComparedRun[]): TopLevelSpec {
  const rows: { stage: string; run: string; step: number; metric: string; value: number; dot: boolean }[] = [];
  const stages: string[] = [];
  for (const r of runs) {
    for (const s of r.metrics.filter(hasLoss)) {
      if (!stages.includes(s.stage)) stages.push(s.stage);
      for (const metric of LOSS_METRICS) {
        const logged = s.points.filter((p) => metric in p.values);
        // A series logged once (a held-out loss measured only at the end) is a one-point path, which draws nothing: a dot.
        const dot = logged.length === 1;
        for (const p of thin(logged, MAX_CURVE_POINTS)) rows.push({ stage: s.stage, run: r.run, step: p.step, metric, value: p.values[metric], dot });
      }
    }
  }
  const domain = runs.map((r) => r.run);
  const present = LOSS_METRICS.filter((m) => rows.some((r) => r.metric === m));
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: 'Training loss, runs overlaid',
    data: { values: rows },
    facet: { field: 'stage', type: 'nominal', title: null, sort: stages, header: { labelFontSize: 13, labelFontWeight: 'bold' } },
    columns: Math.min(3, Math.max(1, stages.length)),
    spec: {
      width: 320,
      height: 220,
      encoding: {
        x: { field: 'step', type: 'quantitative', title: 'step' },
        y: { field: 'value', type: 'quantitative', title: 'loss', scale: { zero: false } },
        color: {
          field: 'run',
          type: 'nominal',
          title: 'run',
          scale: { domain, range: domain.map((_, i) => RUN_COLOURS[i % RUN_COLOURS.length]) },
          legend: { labelLimit: 400 },
        },
        strokeDash: {
          field: 'metric',
          type: 'nominal',
          title: null,
          scale: { domain: present, range: present.map((m) => (m === 'loss' ? [1, 0] : [5, 3])) },
          // One metric needs no key.
          legend: present.length > 1 ? {} : null,
        },
        detail: { field: 'metric' },
      },
      layer: [{ mark: { type: 'line', strokeWidth: 1.8 } }, { transform: [{ filter: 'datum.dot' }], mark: { type: 'point', filled: true, size: 45 } }],
    },
    resolve: { scale: { x: 'independent', y: 'independent' } },
  };
}

/** MT-Bench × llm-jp-eval: reference models grey, each run with both scores a coloured diamond. */
export function compareScatterSpec(references: readonly ReferencePoint[], runs: readonly ComparedRun[], c: Comparison): TopLevelSpec {
  const refs = references
    .filter((r) => r.mtBench !== null && r.llmJpEval !== null)
    .map((r) => ({ model: r.model, mt_bench: r.mtBench, llm_jp_eval: r.llmJpEval }));
  const points = runs
    .map((r, i) => ({ run: r.run, mt_bench: c.evals.mtBench[i], llm_jp_eval: c.evals.llmJpEval[i] }))
    .filter((p) => p.mt_bench !== undefined && p.llm_jp_eval !== undefined);
  const xs = [...refs.map((r) => r.mt_bench as number), ...points.map((p) => p.mt_bench as number)];
  const ys = [...refs.map((r) => r.llm_jp_eval as number), ...points.map((p) => p.llm_jp_eval as number)];
  const x = {
    field: 'mt_bench',
    type: 'quantitative',
    title: 'MT-Bench (judge score, 1–10)',
    scale: { domain: [Math.min(0, ...xs), Math.max(10, ...xs)], nice: false },
  };
  const y = {
    field: 'llm_jp_eval',
    type: 'quantitative',
    title: 'llm-jp-eval (average, 0–1)',
    scale: { domain: [Math.min(0, ...ys), Math.max(1, ...ys)], nice: false },
  };
  const domain = runs.map((r) => r.run);
  const colour = {
    field: 'run',
    type: 'nominal',
    title: 'run',
    scale: { domain, range: domain.map((_, i) => RUN_COLOURS[i % RUN_COLOURS.length]) },
    legend: { labelLimit: 400 },
  };
  const missing = runs.filter((_, i) => c.evals.mtBench[i] === undefined || c.evals.llmJpEval[i] === undefined).map((r) => r.run);
  const layers: object[] = [];
  if (refs.length) {
    layers.push(
      { data: { values: refs }, mark: { type: 'point', filled: true, size: 70, color: '#5b6b7f' }, encoding: { x, y } },
      {
        data: { values: refs },
        mark: { type: 'text', align: 'left', dx: 7, dy: -6, fontSize: 11, color: '#333' },
        encoding: { x, y, text: { field: 'model' } },
      },
    );
  }
  // An empty data set still draws the axes (and the legend names every run).
  layers.push({ data: { values: points }, mark: { type: 'point', shape: 'diamond', filled: true, size: 170 }, encoding: { x, y, color: colour } });
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: {
      text: 'MT-Bench × llm-jp-eval',
      ...(missing.length ? { subtitle: `not plotted (a score is missing): ${missing.join(', ')}` } : {}),
    },
    width: 560,
    height: 400,
    layer: layers,
  } as TopLevelSpec;
}

/** The comparison page and its charts (file name → SVG). */
export async function buildComparePage(
  runs: readonly ComparedRun[],
  references: readonly ReferencePoint[],
  opts: { generatedAt: string; referenceSource: string },
): Promise<{ html: string; svgs: Record<string, string>; comparison: Comparison }> {
  const c = compareRuns(runs);
  const svgs: Record<string, string> = {};
  if (runs.some((r) => r.metrics.some(hasLoss))) svgs['loss.svg'] = await renderSvg(compareLossSpec(runs));
  svgs['scatter.svg'] = await renderSvg(compareScatterSpec(references, runs, c));
  const e = escapeHtml;
  const head = ['', ...runs.map((r, i) => `<span style="color:${RUN_COLOURS[i % RUN_COLOURS.length]}">■</span> ${e(r.run)}`)];
  const table = (rows: ReadonlyArray<{ name: string; values: ReadonlyArray<unknown> }>, id: string) =>
    `<table id="${id}"><thead><tr>${head.map((h) => `<th>${h}</th>`).join('')}</tr></thead><tbody>\n` +
    rows.map((r) => `<tr><td>${e(r.name)}</td>${r.values.map((v) => `<td>${e(formatValue(v))}</td>`).join('')}</tr>`).join('\n') +
    '\n</tbody></table>';
  const figure = (file: string, caption: string) =>
    svgs[file]
      ? `<figure id="fig-${file.replace(/\.svg$/, '')}">${namespaceSvgIds(svgs[file], file.replace(/\.svg$/, ''))}<figcaption>${caption}</figcaption></figure>`
      : '';
  const unknownSpecs = runs.filter((r) => !r.spec).map((r) => r.run);
  const sections = [
    `<section id="params"><h2>Parameters that differ</h2>
${c.params.length ? table(c.params, 'params-table') : `<p class="note">No difference among the ${c.paramsCompared} parameters compared.</p>`}
${unknownSpecs.length ? `<p class="note warn">Temporal no longer knows the input of ${e(unknownSpecs.join(', '))}: its parameters are not compared.</p>` : ''}
</section>`,
    `<section id="loss"><h2>Training loss</h2>
${figure('loss.svg', 'Loss per logged step, one panel per training stage, one colour per run (eval_loss dashed).') || '<p class="note">No run has a loss history.</p>'}
</section>`,
    `<section id="finals"><h2>Final metrics per stage</h2>
${c.finals.length ? table(c.finals, 'finals-table') : '<p class="note">No stage logged metrics.</p>'}
</section>`,
    `<section id="evals"><h2>Evaluation</h2>
${table(
  [
    { name: 'llm-jp-eval average (0–1)', values: c.evals.llmJpEval },
    { name: 'MT-Bench (1–10)', values: c.evals.mtBench },
  ],
  'evals-table',
)}
${figure('scatter.svg', `The runs against reference models from <code>${e(opts.referenceSource)}</code> (grey).`)}
</section>`,
  ];
  const title = `tanren compare: ${runs.map((r) => r.run).join(' vs ')}`;
  const html = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${e(title)}</title>
<style>
${REPORT_CSS}</style>
</head>
<body>
<h1>${e(title)}</h1>
<div class="meta">generated ${e(opts.generatedAt)}</div>
${sections.join('\n')}
</body>
</html>
`;
  return { html, svgs, comparison: c };
}
