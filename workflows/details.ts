/**
 * The run's stage table as markdown, for `setCurrentDetails` (Temporal UI →
 * User Metadata → Current Details). Pure and deterministic: workflow code.
 *
 * What the Temporal UI does with it: the UI puts the text in the URL of an
 * iframe (`/render?content=…`). The UI bundled with the `temporal` CLI (UI
 * 2.x, served by its Go ui-server) renders it with gomarkdown (CommonMark
 * plus GFM pipe tables with column alignment, strikethrough, autolinks,
 * SmartyPants, `$…$` math, raw HTML passed through), under a stylesheet that
 * zeroes the padding and border of every element and has no rule for table
 * cells: a table is a table, but its cells touch (`succeeded1`). Newer UI
 * builds (SvelteKit `/render`) parse tables too, but drop raw HTML. So this
 * uses only what both render, with no HTML:
 * - a pipe table whose cells end in no-break spaces ({@link CELL_GAP}), which
 *   no renderer trims or collapses (the stylesheet's `white-space: pre-line`
 *   collapses only ASCII spaces) and which keep a gap even when the table is
 *   squeezed, because they cannot wrap away from the text before them;
 * - left-aligned columns (`:--`), or the headers would be centred over
 *   left-aligned cells;
 * - a stage's failure or retry reason in a row of its own under its state;
 * - every markup character of stage text backslash-escaped, so a `|` or a
 *   `<tag>` in an error message cannot break the table.
 */
import type { RunStatus, StageStatus } from './pipeline.js';

/** Where the run's report is, when it has one. */
export interface DetailsOptions {
  /** Object key of the report in the store, e.g. `runs/demo-try1/report/index.html`. */
  reportKey?: string;
  /** An http(s) URL of the report; shown as a link (with `reportKey` as its text when given). */
  reportUrl?: string;
}

/**
 * Appended to every cell but the last of a row: the gap between columns
 * (about 13 px), since the UI's stylesheet gives table cells no padding.
 * Also keeps SmartyPants from turning a progress of `3/4` into a fraction.
 */
export const CELL_GAP = '\u00a0\u00a0\u00a0';
/** At most this many stage rows; the others are counted by state in one line. */
export const MAX_DETAILS_ROWS = 30;
/** A reason is cut to this many characters. */
export const MAX_REASON_CHARS = 100;
/** Metrics shown per stage. */
const MAX_METRICS = 3;

const HEADERS = ['stage', 'state', 'attempt', 'progress', 'last metrics'];
/** Stages a reader looks for first: shown even when the table is cut. */
const ACTIVE: ReadonlySet<string> = new Set(['failed', 'retrying', 'running']);

/**
 * Renders the run's status as markdown for `setCurrentDetails`: a title line
 * (pipeline, run state, stages done), the report when `opts` names one, and
 * a table with one row per stage (stage | state | attempt | progress | last
 * metrics) whose columns stay apart in the Temporal UI, a stage's reason in a
 * row under its state. Above {@link MAX_DETAILS_ROWS} stages, the failed,
 * retrying and running stages come first and the rest are counted by state,
 * so the text stays a few kilobytes (the UI passes it in a URL).
 */
export function renderDetails(status: RunStatus, opts: DetailsOptions = {}): string {
  const done = status.stages.filter((s) => s.state === 'succeeded' || s.state === 'cached').length;
  const lines = [`**${escapeText(status.pipeline)}** — ${status.state} · ${done} of ${status.stages.length} stages done`];
  const report = reportLine(opts);
  if (report) lines.push('', report);
  if (status.stages.length === 0) return lines.join('\n');

  const shown = pickRows(status.stages);
  lines.push('', row(HEADERS), `|${HEADERS.map(() => ':--').join('|')}|`);
  for (const s of status.stages) {
    if (!shown.has(s)) continue;
    lines.push(row([s.id, s.state, s.attempt ? String(s.attempt) : '', progress(s), metrics(s)].map(escapeText)));
    if (s.reason) lines.push(row(['', `↳\u00a0${escapeText(cut(s.reason, MAX_REASON_CHARS))}`, '', '', '']));
  }
  const hidden = status.stages.length - shown.size;
  if (hidden > 0) {
    const counts = new Map<string, number>();
    for (const s of status.stages) if (!shown.has(s)) counts.set(s.state, (counts.get(s.state) ?? 0) + 1);
    lines.push('', `…and ${hidden} more stages: ${[...counts].map(([state, n]) => `${state} ${n}`).join(', ')}`);
  }
  // At most two sweeps get a table (the text rides in a URL): the running one first.
  const swept = status.stages.filter((s) => s.sweep).sort((a, b) => Number(ACTIVE.has(b.state)) - Number(ACTIVE.has(a.state)));
  for (const s of swept.slice(0, 2)) lines.push('', ...sweepTable(s));
  return lines.join('\n');
}

/** Columns of a sweep's trial table. */
const SWEEP_HEADERS = ['trial', 'params', 'rung', 'step', 'metric', 'state'];

/** A swept stage's trials: params, rung, step, metric and state, the best and why under it; at most {@link MAX_DETAILS_ROWS} rows. */
function sweepTable(s: StageStatus): string[] {
  const sw = s.sweep!;
  const title = `**${escapeText(s.id)}** sweep — ${escapeText(sw.scheduler)}, ${sw.trials.length} trials, ${escapeText(cut(sw.metric, 32))} (${sw.goal})`;
  const out = [title, '', row(SWEEP_HEADERS), `|${SWEEP_HEADERS.map(() => ':--').join('|')}|`];
  const order = [...sw.trials].sort((a, b) => Number(ACTIVE.has(b.state)) - Number(ACTIVE.has(a.state)));
  const shownTrials = new Set(sw.trials.length <= MAX_DETAILS_ROWS ? sw.trials : order.slice(0, MAX_DETAILS_ROWS));
  for (const t of sw.trials) {
    if (!shownTrials.has(t)) continue;
    const params = Object.entries(t.params)
      .map(([k, v]) => `${cut(k, 24)}=${typeof v === 'number' && !Number.isInteger(v) ? Number(v.toPrecision(4)) : cut(String(v), 24)}`)
      .join(' ');
    const metric = t.metric === undefined ? '' : String(Number.isInteger(t.metric) ? t.metric : Number(t.metric.toPrecision(4)));
    out.push(
      row([t.trial.slice(s.id.length + 1), params, t.rung ? String(t.rung) : '', t.step === undefined ? '' : String(t.step), metric, t.state].map(escapeText)),
    );
  }
  if (shownTrials.size < sw.trials.length) out.push('', `…and ${sw.trials.length - shownTrials.size} more trials`);
  if (sw.best) out.push('', `Best: ${escapeText(sw.best)} — ${escapeText(cut(sw.reason ?? '', 300))}`);
  return out;
}

/** The stages that get a row: all of them, or the active ones first and then the others in order. */
function pickRows(stages: StageStatus[]): Set<StageStatus> {
  if (stages.length <= MAX_DETAILS_ROWS) return new Set(stages);
  const shown = new Set<StageStatus>();
  for (const s of stages) if (ACTIVE.has(s.state) && shown.size < MAX_DETAILS_ROWS) shown.add(s);
  for (const s of stages) if (shown.size < MAX_DETAILS_ROWS) shown.add(s);
  return shown;
}

/** One table row: cells are already escaped; each but the last ends in {@link CELL_GAP}. */
function row(cells: string[]): string {
  return `| ${cells.map((c, i) => (i < cells.length - 1 ? c + CELL_GAP : c)).join(' | ')} |`;
}

function progress(s: StageStatus): string {
  if (s.step === undefined) return '';
  return s.total ? `${s.step}/${s.total}` : String(s.step);
}

function metrics(s: StageStatus): string {
  return Object.entries(s.metrics)
    .slice(0, MAX_METRICS)
    .map(([k, v]) => `${cut(k, 32)}=${Number.isInteger(v) ? v : Number(v.toPrecision(4))}`)
    .join(' ');
}

function reportLine({ reportKey, reportUrl }: DetailsOptions): string | undefined {
  if (reportUrl && /^https?:\/\//i.test(reportUrl)) {
    // Characters that would end the link destination or the line, percent-encoded.
    const url = reportUrl.replace(/[\s()<>]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase().padStart(2, '0')}`);
    return `Report: [${escapeText(reportKey ?? 'open')}](${url})`;
  }
  if (reportKey) return reportKey.includes('`') ? `Report: ${escapeText(reportKey)}` : `Report: \`${oneLine(reportKey)}\``;
  return undefined;
}

/**
 * Text as literal markdown on one line: line breaks and control characters
 * become spaces, and every character that could start markup in either
 * renderer (emphasis, code, links, raw HTML, entities, strikethrough, math,
 * the table's own `|`) is backslash-escaped.
 */
export function escapeText(text: string): string {
  return oneLine(text).replace(/[\\`*_[\]<>|&~$]/g, '\\$&');
}

function oneLine(text: string): string {
  // eslint-disable-next-line no-control-regex -- control characters are exactly what this removes
  return text.replace(/[\u0000-\u001f\u007f\u2028\u2029]+/g, ' ');
}

/** At most `max` characters (code points), with `…` when cut. */
function cut(text: string, max: number): string {
  const chars = Array.from(text);
  return chars.length <= max ? text : `${chars.slice(0, max - 1).join('')}…`;
}
