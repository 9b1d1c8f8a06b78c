/**
 * The report's charts: Vega-Lite specs built from `ReportInputs` (pure), and
 * headless SVG rendering with vega's `View#toSVG()`. Data is always inline and
 * the view's loader refuses every URL, so rendering never touches the network.
 */
import { formatDuration } from '../../schemas/durations.js';
import { loader as vegaLoader, parse as vegaParse, View, type Loader } from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';
import { TIMELINE_STATES, type MetricSeries, type ReferencePoint, type TimelineEntry, type TimelineState } from './types.js';

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
      layer: [{ mark: { type: 'line', strokeWidth: 1.8 } }, { transform: [{ filter: 'datum.dot' }], mark: { type: 'point', filled: true, size: 22 } }],
    },
    resolve: { scale: { x: 'independent', y: 'independent' } },
  };
}

const attemptsText = (n: number) => `${n} attempt${n === 1 ? '' : 's'}`;

/**
 * What a timeline row says in place of a bare attempt count: `cached (run <id>)`
 * for a cache hit, `skipped`, `cancelled`, `failed after 2 attempts`, or the
 * attempt count of a stage that ran; `—` when an old timeline gave neither.
 */
export function timelineOutcome(e: TimelineEntry): string {
  const n = e.attempts ?? 0;
  switch (e.state) {
    case 'cached':
      return e.cachedFrom ? `cached (run ${e.cachedFrom})` : 'cached';
    case 'skipped':
      return 'skipped';
    case 'cancelled':
      return n > 0 ? `cancelled (attempt ${n})` : 'cancelled';
    case 'failed':
      return n > 0 ? `failed after ${attemptsText(n)}` : 'failed';
    case 'retrying':
    case 'running':
      return n > 0 ? `${e.state} (attempt ${n})` : e.state;
    case 'succeeded':
    case undefined:
      return n > 0 ? attemptsText(n) : '—';
  }
}

/**
 * How long a timeline row took in milliseconds, or null for a skipped stage,
 * whose times mark when it was skipped rather than a run.
 */
export function timelineDuration(e: TimelineEntry): number | null {
  if (e.state === 'skipped') return null;
  return Math.max(0, Date.parse(e.end) - Date.parse(e.start));
}

/** A bar shorter than 1/640 of the whole timeline (about a pixel of the 640px-wide chart) also gets a tick. */
const TICK_BELOW_FRACTION = 640;

/** Bar colour per row state; rows of an old timeline without a state are `unknown`. */
const STATE_COLOURS: Readonly<Record<TimelineState | 'unknown', string>> = {
  succeeded: '#4c78a8',
  cached: '#54a24b',
  failed: '#e45756',
  cancelled: '#9d9d9d',
  skipped: '#bab0ac',
  retrying: '#f58518',
  running: '#72b7b2',
  unknown: '#7f98b5',
};

/**
 * Gantt chart of the stages' runs, in UTC, coloured by state when the engine
 * gave one. Each bar is labelled with its duration and, where it says more than
 * one plain attempt, its outcome (`cached (run …)`, `skipped`, `2 attempts`).
 * Rows that took (next to) no time, such as a skipped stage or a quick cache
 * hit, also get a tick, as their bar would not show; when every row took no
 * time, the axis is widened so the scale is not degenerate.
 */
export function timelineSpec(entries: readonly TimelineEntry[]): TopLevelSpec {
  const spans = entries.map((e) => {
    const start = Date.parse(e.start);
    // A skipped stage may carry no real duration (even an end before its start): draw it as an instant.
    return { start, end: Math.max(start, Date.parse(e.end)) };
  });
  const first = Math.min(...spans.map((r) => r.start));
  const last = Math.max(...spans.map((r) => r.end));
  const rows = entries.map((e, i) => {
    const { start, end } = spans[i];
    const ms = timelineDuration(e);
    const plain = (e.state === undefined || e.state === 'succeeded') && (e.attempts ?? 0) <= 1;
    return {
      stage: e.stage,
      start,
      end,
      // Narrower than about a pixel: the bar would not show, so the row gets a tick as well.
      tick: (end - start) * TICK_BELOW_FRACTION <= last - first,
      state: e.state ?? 'unknown',
      label: [ms === null ? '' : formatDuration(ms), plain ? '' : timelineOutcome(e)].filter(Boolean).join(' · '),
    };
  });
  const order = [...rows].sort((a, b) => a.start - b.start).map((r) => r.stage);
  const x = {
    field: 'start',
    type: 'temporal' as const,
    title: 'time (UTC)',
    scale: { type: 'utc' as const },
    axis: { format: '%H:%M:%S' },
  };
  // Every row took no time: widen the axis by a second each side rather than leave a zero-width domain.
  // Set on the ticks only (every row has one then): the layers share the scale, and vega-lite warns of a
  // conflict when an explicit domain meets the bars' x2.
  const tickX = last > first ? x : { ...x, scale: { ...x.scale, domain: [first - 1000, last + 1000] } };
  const y = { field: 'stage', type: 'nominal' as const, title: null, sort: order };
  const states = (['unknown', ...TIMELINE_STATES] as const).filter((st) => rows.some((r) => r.state === st));
  // Old timelines carry no state: one colour and no legend, as before.
  const color = entries.some((e) => e.state !== undefined)
    ? {
        color: {
          field: 'state',
          type: 'nominal' as const,
          title: null,
          scale: { domain: states, range: states.map((st) => STATE_COLOURS[st]) },
          legend: { orient: 'bottom' as const, direction: 'horizontal' as const },
        },
      }
    : { color: { value: STATE_COLOURS.succeeded } };
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: 'Stage timeline',
    width: 640,
    height: { step: 26 },
    data: { values: rows },
    layer: [
      { mark: { type: 'bar', cornerRadius: 3 }, encoding: { x, x2: { field: 'end' }, y, ...color } },
      { transform: [{ filter: 'datum.tick' }], mark: { type: 'tick', thickness: 3 }, encoding: { x: tickX, y, ...color } },
      { mark: { type: 'text', align: 'left', dx: 5, fontSize: 11, color: '#333' }, encoding: { x: { ...x, field: 'end' }, y, text: { field: 'label' } } },
    ],
  };
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
