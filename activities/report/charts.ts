/**
 * The report's charts: Vega-Lite specs built from `ReportInputs` (pure), and
 * headless SVG rendering with vega's `View#toSVG()`. Data is always inline and
 * the view's loader refuses every URL, so rendering never touches the network.
 */
import { formatDuration } from '../../schemas/durations.js';
import { loader as vegaLoader, parse as vegaParse, View, type Loader } from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';
import type { MetricSeries, ReferencePoint, TimelineEntry } from './types.js';

/** Fonts every chart uses: generic families only, nothing to download. */
const FONT = 'system-ui, -apple-system, "Segoe UI", "Noto Sans CJK JP", "Noto Sans", sans-serif';
/** At most this many points of one loss curve are drawn (evenly thinned, last point kept). */
export const MAX_CURVE_POINTS = 600;
/** Curves with at most this many points also get a dot per logged step. */
const DOTS_UP_TO = 60;

const CONFIG = {
  font: FONT,
  background: 'white',
  title: { fontSize: 15, subtitleFontSize: 12, subtitleColor: '#555', anchor: 'start' as const },
  axis: { labelFontSize: 11, titleFontSize: 12, gridColor: '#e6e6e6' },
  legend: { labelFontSize: 11, titleFontSize: 12 },
  view: { stroke: '#ccc' },
};

/** This run's place in the scatter: a point, a line when only one score is known, or nothing. */
export interface RunPosition {
  readonly label: string;
  readonly mtBench: number | null;
  readonly llmJpEval: number | null;
  /** Shown as the chart's subtitle when a score is missing. */
  readonly missingNote?: string;
}

/**
 * MT-Bench (x) × llm-jp-eval average (y): the reference models as grey points
 * with labels, this run as a red diamond. With only one of its scores known,
 * this run is a dashed line at that score; a missing score is never drawn as a value.
 */
export function scatterSpec(references: readonly ReferencePoint[], run: RunPosition): TopLevelSpec {
  const refs = references
    .filter((r) => r.mtBench !== null && r.llmJpEval !== null)
    .map((r) => ({ model: r.model, mt_bench: r.mtBench, llm_jp_eval: r.llmJpEval, note: r.note ?? '' }));
  const xs = [...refs.map((r) => r.mt_bench as number), ...(run.mtBench !== null ? [run.mtBench] : [])];
  const ys = [...refs.map((r) => r.llm_jp_eval as number), ...(run.llmJpEval !== null ? [run.llmJpEval] : [])];
  const x = {
    field: 'mt_bench',
    type: 'quantitative' as const,
    title: 'MT-Bench (judge score, 1–10)',
    scale: { domain: [Math.min(0, ...xs), Math.max(10, ...xs)], nice: false },
  };
  const y = {
    field: 'llm_jp_eval',
    type: 'quantitative' as const,
    title: 'llm-jp-eval (average, 0–1)',
    scale: { domain: [Math.min(0, ...ys), Math.max(1, ...ys)], nice: false },
  };
  const layers: object[] = [];
  if (refs.length > 0) {
    layers.push(
      { data: { values: refs }, mark: { type: 'point', filled: true, size: 70, color: '#5b6b7f' }, encoding: { x, y } },
      {
        data: { values: refs },
        mark: { type: 'text', align: 'left', dx: 7, dy: -6, fontSize: 11, color: '#333' },
        encoding: { x, y, text: { field: 'model' } },
      },
    );
  }
  const runColor = '#d62728';
  if (run.mtBench !== null && run.llmJpEval !== null) {
    const values = [{ model: run.label, mt_bench: run.mtBench, llm_jp_eval: run.llmJpEval }];
    layers.push(
      { data: { values }, mark: { type: 'point', shape: 'diamond', filled: true, size: 170, color: runColor }, encoding: { x, y } },
      {
        data: { values },
        mark: { type: 'text', align: 'left', dx: 9, dy: 12, fontSize: 12, fontWeight: 'bold', color: runColor },
        encoding: { x, y, text: { field: 'model' } },
      },
    );
  } else if (run.llmJpEval !== null) {
    const values = [{ llm_jp_eval: run.llmJpEval, label: `${run.label}: llm-jp-eval ${run.llmJpEval.toFixed(3)}, MT-Bench missing` }];
    layers.push(
      { data: { values }, mark: { type: 'rule', strokeDash: [6, 4], strokeWidth: 2, color: runColor }, encoding: { y } },
      {
        data: { values },
        mark: { type: 'text', align: 'left', x: 4, dy: -7, fontSize: 12, fontWeight: 'bold', color: runColor },
        encoding: { y, text: { field: 'label' } },
      },
    );
  } else if (run.mtBench !== null) {
    const values = [{ mt_bench: run.mtBench, label: `${run.label}: MT-Bench ${run.mtBench.toFixed(2)}, llm-jp-eval missing` }];
    layers.push(
      { data: { values }, mark: { type: 'rule', strokeDash: [6, 4], strokeWidth: 2, color: runColor }, encoding: { x } },
      {
        data: { values },
        mark: { type: 'text', align: 'left', y: 4, dx: 4, baseline: 'top', fontSize: 12, fontWeight: 'bold', color: runColor },
        encoding: { x, text: { field: 'label' } },
      },
    );
  }
  if (layers.length === 0) {
    // Nothing to plot: keep the axes so the empty chart still explains itself.
    layers.push({ data: { values: [{ mt_bench: 0, llm_jp_eval: 0 }] }, mark: { type: 'point', opacity: 0 }, encoding: { x, y } });
  }
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: 'MT-Bench × llm-jp-eval', ...(run.missingNote ? { subtitle: run.missingNote, subtitleColor: runColor } : {}) },
    width: 640,
    height: 420,
    layer: layers,
  } as TopLevelSpec;
}

/** Evenly thins `points` to at most `max`, always keeping the first and last. */
export function thin<T>(points: readonly T[], max: number): T[] {
  if (points.length <= max) return [...points];
  const out: T[] = [];
  const stride = (points.length - 1) / (max - 1);
  for (let i = 0; i < max; i++) out.push(points[Math.round(i * stride)]);
  return out;
}

/** The loss-like metrics charted per stage: `loss` and `eval_loss` when logged. */
export const LOSS_METRICS = ['loss', 'eval_loss'] as const;

/** True when the series logged at least one loss value. */
export function hasLoss(series: MetricSeries): boolean {
  return series.points.some((p) => LOSS_METRICS.some((m) => m in p.values));
}

/**
 * Loss against step, one small chart per stage (each with its own axes, as
 * pretraining and post-training differ in scale), `eval_loss` as a second line.
 */
export function lossSpec(series: readonly MetricSeries[]): TopLevelSpec {
  const rows: { stage: string; step: number; metric: string; value: number; dot: boolean }[] = [];
  for (const s of series) {
    for (const metric of LOSS_METRICS) {
      const logged = s.points.filter((p) => metric in p.values);
      // Short curves (and a lone eval_loss) get a dot per logged value; long ones only the line.
      const dot = logged.length <= DOTS_UP_TO;
      for (const p of thin(logged, MAX_CURVE_POINTS)) rows.push({ stage: s.stage, step: p.step, metric, value: p.values[metric], dot });
    }
  }
  const present = LOSS_METRICS.filter((m) => rows.some((r) => r.metric === m));
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: 'Training loss',
    data: { values: rows },
    facet: { field: 'stage', type: 'nominal', title: null, sort: series.map((s) => s.stage), header: { labelFontSize: 13, labelFontWeight: 'bold' } },
    columns: Math.min(3, Math.max(1, series.length)),
    spec: {
      width: 300,
      height: 200,
      encoding: {
        x: { field: 'step', type: 'quantitative', title: 'step' },
        y: { field: 'value', type: 'quantitative', title: 'loss', scale: { zero: false } },
        color: { field: 'metric', type: 'nominal', title: null, scale: { domain: present, range: present.map((m) => (m === 'loss' ? '#1f77b4' : '#ff7f0e')) } },
      },
      layer: [
        { mark: { type: 'line', strokeWidth: 1.8 } },
        { transform: [{ filter: 'datum.dot' }], mark: { type: 'point', filled: true, size: 22 } },
      ],
    },
    resolve: { scale: { x: 'independent', y: 'independent' } },
  } as TopLevelSpec;
}

/** Gantt chart of the stages' runs, in UTC, labelled with attempts when more than one. */
export function timelineSpec(entries: readonly TimelineEntry[]): TopLevelSpec {
  const rows = entries.map((e) => {
    const start = Date.parse(e.start);
    const end = Date.parse(e.end);
    return {
      stage: e.stage,
      start,
      end,
      label: `${formatDuration(end - start)}${e.attempts && e.attempts > 1 ? ` · ${e.attempts} attempts` : ''}`,
    };
  });
  const order = [...rows].sort((a, b) => a.start - b.start).map((r) => r.stage);
  const x = { field: 'start', type: 'temporal' as const, title: 'time (UTC)', scale: { type: 'utc' as const }, axis: { format: '%H:%M:%S' } };
  const y = { field: 'stage', type: 'nominal' as const, title: null, sort: order };
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: 'Stage timeline',
    width: 640,
    height: { step: 26 },
    data: { values: rows },
    layer: [
      { mark: { type: 'bar', cornerRadius: 3, color: '#4c78a8' }, encoding: { x, x2: { field: 'end' }, y } },
      { mark: { type: 'text', align: 'left', dx: 5, fontSize: 11, color: '#333' }, encoding: { x: { ...x, field: 'end' }, y, text: { field: 'label' } } },
    ],
  } as TopLevelSpec;
}

/** A vega loader that refuses every load, so a chart can never fetch anything. */
function offlineLoader(): Loader {
  const l = vegaLoader();
  const refuse = async (uri: string): Promise<never> => {
    throw new Error(`report charts load nothing from outside (refused ${uri}): put data inline`);
  };
  l.load = refuse;
  l.sanitize = refuse;
  return l;
}

/**
 * Compiles a Vega-Lite spec and renders it to a standalone SVG document,
 * headless (no browser, no canvas package).
 */
export async function renderSvg(spec: TopLevelSpec): Promise<string> {
  const vg = compile(spec, { config: CONFIG }).spec;
  const view = new View(vegaParse(vg), { renderer: 'none', loader: offlineLoader() });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}
