/**
 * `buildReport`: from `ReportInputs` to one self-contained HTML page and its
 * charts as SVG. No file or network I/O; the same inputs give the same page.
 */
import { formatDuration } from '../../schemas/durations.js';
import { hasLoss, lossSpec, renderSvg, scatterSpec, timelineDuration, timelineOutcome, timelineSpec, type RunPosition } from './charts.js';
import type { BuiltReport, LlmJpEvalSample, MtBenchScores, MtBenchTurn, ReportInputs, ReportSummary } from './types.js';

/** Rows per page of the per-question and per-sample tables. */
export const ROWS_PER_PAGE = 20;
/** Longest text shown in one cell of those tables; the rest is cut with a note of how much. */
const MAX_CELL_CHARS = 1500;

/** File names of the charts, as written next to report.html. */
export const CHART_FILES = { scatter: 'scatter.svg', loss: 'loss.svg', timeline: 'timeline.svg' } as const;

/** Why this run has no MT-Bench score, or undefined when it has one. */
export function mtBenchMissingReason(mt: MtBenchScores): string | undefined {
  switch (mt.status) {
    case 'scored':
      return mt.score === null ? `every judgment of stage "${mt.stage}" was unparsable, so there is no MT-Bench score` : undefined;
    case 'not-configured':
      return `judge: not configured in stage "${mt.stage}" (answers were written but not graded), so there is no MT-Bench score`;
    case 'absent':
      return "no MT-Bench stage among this stage's needs";
  }
}

/** A few words for the chart's subtitle. */
function shortReason(mt: MtBenchScores): string {
  return mt.status === 'not-configured'
    ? 'not scored (judge: not configured)'
    : mt.status === 'absent'
      ? 'not run (no MT-Bench stage)'
      : 'not scored (judgments unparsable)';
}

/**
 * Builds the report page and its charts.
 *
 * The scatter shows this run only where its scores exist: a missing MT-Bench
 * score (judge not configured) becomes a dashed line at the llm-jp-eval score
 * plus a note, never an invented value. Sections without data (no loss history,
 * no timeline) are replaced by a note saying what would fill them.
 */
export async function buildReport(inputs: ReportInputs): Promise<BuiltReport> {
  const mtScore = inputs.mtBench.status === 'scored' ? inputs.mtBench.score : null;
  const mtMissing = mtBenchMissingReason(inputs.mtBench);
  const llm = inputs.llmJpEval?.average ?? null;
  const llmMissing = inputs.llmJpEval === null ? "no llm-jp-eval stage among this stage's needs" : undefined;
  const missingNote = [mtMissing && `MT-Bench missing: ${mtMissing}`, llmMissing && `llm-jp-eval missing: ${llmMissing}`].filter(Boolean).join('; ');
  const shortMissing = [mtMissing && `MT-Bench ${shortReason(inputs.mtBench)}`, llmMissing && 'no llm-jp-eval stage'].filter(Boolean);
  const run: RunPosition = {
    label: inputs.modelName,
    mtBench: mtScore,
    llmJpEval: llm,
    missingNote: shortMissing.length > 0 ? `${inputs.modelName} is not plotted as a point: ${shortMissing.join('; ')}` : undefined,
  };
  const svgs: Record<string, string> = {};
  svgs[CHART_FILES.scatter] = await renderSvg(scatterSpec(inputs.references, run));
  const lossSeries = inputs.metrics.filter(hasLoss);
  if (lossSeries.length > 0) svgs[CHART_FILES.loss] = await renderSvg(lossSpec(lossSeries));
  if (inputs.timeline && inputs.timeline.length > 0) svgs[CHART_FILES.timeline] = await renderSvg(timelineSpec(inputs.timeline));

  const plottedRefs = inputs.references.filter((r) => r.mtBench !== null && r.llmJpEval !== null).length;
  const runPoint = mtScore !== null && llm !== null;
  const summary: ReportSummary = {
    points: plottedRefs + (runPoint ? 1 : 0),
    runPoint,
    mtBench: mtScore,
    ...(mtMissing ? { mtBenchMissing: mtMissing } : {}),
    llmJpEval: llm,
    lossStages: lossSeries.map((s) => s.stage),
    timeline: svgs[CHART_FILES.timeline] !== undefined,
  };
  return { html: renderHtml(inputs, svgs, run, missingNote, summary), svgs, summary };
}

// ---------------------------------------------------------------- HTML

/** The report's stylesheet (also used by `tanren compare`'s page). */
export const REPORT_CSS = `:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", "Noto Sans CJK JP", "Noto Sans", sans-serif; margin: 0 auto; max-width: 1080px; padding: 24px; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin: 0 0 4px; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 32px; }
h3 { font-size: 1.05em; margin: 20px 0 8px; }
.meta { color: #666; font-size: 0.9em; }
.cards { display: flex; gap: 12px; flex-wrap: wrap; margin: 18px 0; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 10px 14px; min-width: 200px; flex: 1; }
.card .label { color: #666; font-size: 0.85em; }
.card .value { font-size: 1.6em; font-weight: 600; }
.card .why { color: #666; font-size: 0.8em; }
.missing { color: #b22; }
.note { padding: 8px 12px; border-radius: 4px; background: #f3f6fa; border-left: 4px solid #7a9cc6; }
.note.warn { background: #fff6f0; border-left-color: #d62728; }
figure { margin: 12px 0; overflow-x: auto; }
figure svg { max-width: 100%; height: auto; }
figcaption, .small, .file { color: #666; font-size: 0.85em; }
table { border-collapse: collapse; margin: 8px 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 4px 10px; text-align: left; }
td:first-child { white-space: nowrap; }
td:not(:first-child) { font-variant-numeric: tabular-nums; }
th { background: #f5f5f5; }
.tag { background: #d62728; color: white; border-radius: 3px; padding: 0 5px; font-size: 0.8em; }
code { background: #f3f3f3; padding: 0 3px; border-radius: 3px; }
`;

/** Escapes text for HTML element content and attribute values. */
export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

/**
 * Prefixes every id in an SVG (and the references to them), so several vega
 * SVGs can be inlined into one page without their clip paths colliding.
 */
export function namespaceSvgIds(svg: string, prefix: string): string {
  return svg
    .replace(/\bid="([^"]+)"/g, `id="${prefix}-$1"`)
    .replace(/url\(#([^)]+)\)/g, `url(#${prefix}-$1)`)
    .replace(/href="#([^"]+)"/g, `href="#${prefix}-$1"`);
}

const fmt = (v: number | null | undefined, digits: number) => (v === null || v === undefined ? '—' : v.toFixed(digits));

function table(headers: string[], rows: string[][], cls = ''): string {
  const th = headers.map((h) => `<th>${escapeHtml(h)}</th>`).join('');
  const body = rows.map((r) => `<tr>${r.map((c) => `<td>${c}</td>`).join('')}</tr>`).join('\n');
  return `<table${cls ? ` class="${cls}"` : ''}><thead><tr>${th}</tr></thead><tbody>\n${body}\n</tbody></table>`;
}

function figure(svgs: Record<string, string>, file: string, caption: string): string {
  const svg = svgs[file];
  if (!svg) return '';
  const id = file.replace(/\.svg$/, '');
  return `<figure id="fig-${id}">${namespaceSvgIds(svg, id)}<figcaption>${caption} <span class="file">(${escapeHtml(file)})</span></figcaption></figure>`;
}

function note(text: string, kind: 'info' | 'warn' = 'info'): string {
  return `<p class="note ${kind}">${text}</p>`;
}

/** Text for a table cell: escaped, cut at MAX_CELL_CHARS (saying how much is left out), line breaks kept by CSS. */
function longText(s: string | null | undefined): string {
  if (s === null || s === undefined || s === '') return '<span class="missing">—</span>';
  const cut = s.length > MAX_CELL_CHARS ? `${s.slice(0, MAX_CELL_CHARS)}` : s;
  const more = s.length > MAX_CELL_CHARS ? ` <em>(… ${s.length - MAX_CELL_CHARS} more characters)</em>` : '';
  return `<div class="text">${escapeHtml(cut)}${more}</div>`;
}

/**
 * A table split into pages of `perPage` rows with page buttons, in plain HTML and
 * CSS (radio buttons and `:checked` rules, no script), so it works offline and in
 * any viewer. One page or fewer: a plain table.
 */
function pagedTable(id: string, headers: string[], rows: string[][], perPage = ROWS_PER_PAGE): string {
  if (rows.length <= perPage) return table(headers, rows, 'samples');
  const pages: string[][][] = [];
  for (let i = 0; i < rows.length; i += perPage) pages.push(rows.slice(i, i + perPage));
  const radios = pages.map((_, k) => `<input type="radio" name="${id}" id="${id}-${k + 1}"${k === 0 ? ' checked' : ''}>`).join('');
  const labels = pages.map((p, k) => `<label for="${id}-${k + 1}" title="rows ${k * perPage + 1}–${k * perPage + p.length}">${k + 1}</label>`).join('');
  const body = pages.map((p) => `<div class="page">${table(headers, p, 'samples')}</div>`).join('\n');
  return `<div class="pager" id="${id}">${radios}<nav class="pagebar">${rows.length} rows, ${perPage} a page: ${labels}</nav>\n${body}\n</div>`;
}

/** The CSS that shows page k of a pager when its k-th radio button is checked, for k up to `pages`. */
function pagerCss(pages: number): string {
  const rules: string[] = [];
  for (let k = 1; k <= pages; k++) {
    rules.push(
      `.pager > input:nth-of-type(${k}):checked ~ div.page:nth-of-type(${k}) { display: block; }`,
      `.pager > input:nth-of-type(${k}):checked ~ nav label:nth-of-type(${k}) { background: #1f77b4; color: white; }`,
    );
  }
  return rules.join('\n');
}

function mtBenchRows(turns: readonly MtBenchTurn[]): string[][] {
  return turns.map((t) => [
    escapeHtml(t.questionId),
    escapeHtml(t.category),
    String(t.turn),
    longText(t.question),
    longText(t.reference),
    longText(t.answer),
    t.score === undefined
      ? '<span class="missing">not judged</span>'
      : t.score === null
        ? '<span class="missing">unparsable</span>'
        : `<strong>${fmt(t.score, 0)}</strong>`,
    t.judgment === undefined ? '' : longText(t.judgment),
  ]);
}

function llmJpEvalRows(samples: readonly LlmJpEvalSample[]): string[][] {
  return samples.map((s) => [
    escapeHtml(s.dataset),
    String(s.index),
    longText(s.input),
    longText(s.reference),
    longText(s.output),
    s.score === null ? '<span class="missing">—</span>' : `${fmt(s.score, 3)}${s.metric ? ` <span class="small">${escapeHtml(s.metric)}</span>` : ''}`,
  ]);
}

function renderHtml(inputs: ReportInputs, svgs: Record<string, string>, run: RunPosition, missingNote: string, summary: ReportSummary): string {
  const e = escapeHtml;
  const mt = inputs.mtBench;
  const sections: string[] = [];

  // Header cards
  const judgeNote = mt.status === 'scored' && mt.judgeNote ? `<div class="judge-note"><strong>Judge note:</strong> ${e(mt.judgeNote)}</div>` : '';
  const judgeLine = mt.status === 'scored' && mt.judgeModel ? `<div class="why">judge: ${e(mt.judgeModel)}</div>` : '';
  const mtCard =
    summary.mtBench !== null
      ? `<div class="value">${fmt(summary.mtBench, 2)}</div>${judgeLine}${judgeNote}`
      : `<div class="value missing">not scored</div><div class="why">${e(summary.mtBenchMissing ?? '')}</div>${judgeLine}${judgeNote}`;
  const llmCard =
    summary.llmJpEval !== null
      ? `<div class="value">${fmt(summary.llmJpEval, 3)}</div>`
      : `<div class="value missing">none</div><div class="why">no llm-jp-eval stage among the needs</div>`;
  sections.push(`<div class="cards">
<div class="card"><div class="label">MT-Bench (1–10)</div>${mtCard}</div>
<div class="card"><div class="label">llm-jp-eval average (0–1)</div>${llmCard}</div>
<div class="card"><div class="label">loss curves</div><div class="value">${summary.lossStages.length}</div><div class="why">${e(summary.lossStages.join(', ') || 'no metric history')}</div></div>
</div>`);

  // 1. Scatter
  const plottedRefs = inputs.references.filter((r) => r.mtBench !== null && r.llmJpEval !== null).length;
  const sourceCell = (src: string | undefined) =>
    src === undefined ? '' : /^https?:\/\//.test(src) ? `<a class="src" href="${e(src)}">${e(src)}</a>` : e(src);
  const refRows = inputs.references.map((r) => [
    e(r.model),
    fmt(r.mtBench, 2),
    fmt(r.llmJpEval, 3),
    e(r.note ?? '') + (r.mtBench === null || r.llmJpEval === null ? ' <em>(not plotted: a score is empty)</em>' : ''),
    sourceCell(r.source),
    e(r.date ?? ''),
  ]);
  refRows.unshift([
    `<strong>${e(run.label)}</strong> <span class="tag">this run</span>`,
    summary.mtBench !== null ? `<strong>${fmt(summary.mtBench, 2)}</strong>` : '<span class="missing">missing</span>',
    summary.llmJpEval !== null ? `<strong>${fmt(summary.llmJpEval, 3)}</strong>` : '<span class="missing">missing</span>',
    e(missingNote),
    '',
    e(inputs.generatedAt.slice(0, 10)),
  ]);
  sections.push(`<section id="scatter"><h2>MT-Bench × llm-jp-eval</h2>
${missingNote ? note(`<strong>This run's point is missing.</strong> ${e(missingNote)}. No score is invented; ${summary.llmJpEval !== null || summary.mtBench !== null ? 'the dashed line marks the score that is known.' : 'nothing of this run is plotted.'}`, 'warn') : ''}
${plottedRefs < 3 ? note(`Only ${plottedRefs} reference model${plottedRefs === 1 ? ' has' : 's have'} both an MT-Bench and an llm-jp-eval score in <code>${e(inputs.referenceSource)}</code>; a point needs both from published figures, so the others are listed in the table with the score that was found, and none is invented.`) : ''}
${figure(svgs, CHART_FILES.scatter, `This run (red) against reference models from <code>${e(inputs.referenceSource)}</code> (grey; edit that CSV to change them). The table lists where each reference figure was published.`)}
${table(['model', 'MT-Bench', 'llm-jp-eval', 'note', 'source', 'date'], refRows, 'scores')}
</section>`);

  // 2. Loss curves
  const lossSeries = inputs.metrics.filter(hasLoss);
  const noLoss = inputs.metrics.filter((s) => !hasLoss(s)).map((s) => s.stage);
  let lossBody: string;
  if (lossSeries.length === 0) {
    lossBody = note(
      'No loss history found: no needed stage has a <code>metrics.jsonl</code> (lines like <code>{"step": 10, "loss": 2.31}</code>) ' +
        'or an <code>events.jsonl</code> with metric events among its outputs. TensorBoard event files are not read.',
    );
  } else {
    const rows = lossSeries.map((s) => {
      const of = (metric: string) => s.points.filter((p) => metric in p.values);
      const losses = of('loss');
      const evals = of('eval_loss');
      const acc = of('eval_reward_accuracy');
      const lastStep = s.points[s.points.length - 1]?.step;
      return [
        e(s.stage),
        String(lastStep ?? '—'),
        fmt(losses[0]?.values.loss, 4),
        fmt(losses[losses.length - 1]?.values.loss, 4),
        evals.length ? `${fmt(evals[0].values.eval_loss, 4)} <span class="small">(step ${evals[0].step})</span>` : '—',
        evals.length
          ? `<strong>${fmt(evals[evals.length - 1].values.eval_loss, 4)}</strong> <span class="small">(step ${evals[evals.length - 1].step})</span>`
          : '—',
        acc.length ? fmt(acc[acc.length - 1].values.eval_reward_accuracy, 3) : '—',
        `<code>${e(s.source)}</code>`,
      ];
    });
    lossBody =
      figure(
        svgs,
        CHART_FILES.loss,
        'Loss per logged step, one panel per training stage (each with its own scale): training loss and, where the stage holds data out, the held-out (validation) loss.',
      ) + table(['stage', 'last step', 'first loss', 'final loss', 'first held-out loss', 'final held-out loss', 'held-out reward accuracy', 'source'], rows);
  }
  if (noLoss.length > 0) lossBody += note(`Metric history without a <code>loss</code> field: ${e(noLoss.join(', '))}.`);
  sections.push(`<section id="loss"><h2>Training and held-out loss</h2>\n${lossBody}\n</section>`);

  // 3. Eval tables
  const evalParts: string[] = [];
  if (inputs.llmJpEval) {
    const ds = inputs.llmJpEval.datasets;
    const metricNames = [...new Set(Object.values(ds).flatMap((d) => Object.keys(d.metrics)))].sort();
    const rows = Object.entries(ds)
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([name, d]) => [e(name), String(d.samples), ...metricNames.map((m) => fmt(d.metrics[m], 3)), `<strong>${fmt(d.score, 3)}</strong>`]);
    rows.push(['<strong>average</strong>', '', ...metricNames.map(() => ''), `<strong>${fmt(inputs.llmJpEval.average, 3)}</strong>`]);
    evalParts.push(
      `<h3>llm-jp-eval <span class="file">(stage ${e(inputs.llmJpEval.stage)})</span></h3>` +
        table(['dataset', 'samples', ...metricNames, 'score'], rows, 'scores'),
    );
  } else {
    evalParts.push(`<h3>llm-jp-eval</h3>` + note("No llm-jp-eval stage among this stage's needs."));
  }
  if (mt.status === 'scored') {
    const rows = Object.entries(mt.categories)
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([c, v]) => [e(c), fmt(v, 2)]);
    rows.push(['<strong>overall</strong>', `<strong>${fmt(mt.score, 2)}</strong>`]);
    const usage = [
      mt.unparsable !== undefined ? `unparsable judgments: ${mt.unparsable}` : '',
      mt.judgeCalls !== undefined ? `judge calls: ${mt.judgeCalls}` : '',
      mt.judgePromptTokens !== undefined ? `judge tokens: ${mt.judgePromptTokens} in / ${mt.judgeCompletionTokens ?? 0} out` : '',
      mt.judgeCost != null ? `judge cost: ${mt.judgeCost.toFixed(4)}` : '',
    ].filter(Boolean);
    evalParts.push(
      `<h3>MT-Bench <span class="file">(stage ${e(mt.stage)})</span></h3>` +
        (mt.judgeNote ? note(`<strong>Judge note:</strong> ${e(mt.judgeNote)}`, 'warn') : '') +
        (mt.judgeModel ? `<p class="small">judge: ${e(mt.judgeModel)}</p>` : '') +
        table(['category', 'score'], rows, 'scores') +
        (usage.length ? `<p class="small">${e(usage.join(' · '))}</p>` : ''),
    );
  } else {
    evalParts.push(
      `<h3>MT-Bench</h3>` +
        note(
          e(`No per-category scores: ${mtBenchMissingReason(mt)}.`) +
            (mt.status === 'not-configured' && mt.answered !== undefined ? ` ${mt.answered} questions were answered.` : ''),
          'warn',
        ),
    );
  }
  const turns = inputs.mtBenchTurns ?? [];
  const samples = inputs.llmJpEvalSamples ?? [];
  let pages = 0;
  if (turns.length > 0) {
    pages = Math.max(pages, Math.ceil(turns.length / ROWS_PER_PAGE));
    evalParts.push(
      `<h3 id="mt-bench-questions">MT-Bench per question</h3>` +
        (mt.status === 'not-configured' ? note('judge: not configured — the answers are shown, but nothing was graded.', 'warn') : '') +
        pagedTable('mtq', ['id', 'category', 'turn', 'question', 'reference answer', 'model answer', 'judge score', 'judgment'], mtBenchRows(turns)),
    );
  }
  if (samples.length > 0) {
    pages = Math.max(pages, Math.ceil(samples.length / ROWS_PER_PAGE));
    evalParts.push(
      `<h3 id="llm-jp-eval-samples">llm-jp-eval per sample</h3>` +
        `<p class="small">The score is the sample's value of its dataset's designated metric; the output is the cleaned prediction that was scored.</p>` +
        pagedTable('ljs', ['dataset', '#', 'input', 'reference', 'model output', 'score'], llmJpEvalRows(samples)),
    );
  }
  sections.push(`<section id="eval"><h2>Evaluation</h2>\n${evalParts.join('\n')}\n</section>`);

  // 4. Timeline
  let timelineBody: string;
  if (inputs.timeline && inputs.timeline.length > 0) {
    const rows = [...inputs.timeline]
      .sort((a, b) => Date.parse(a.start) - Date.parse(b.start))
      .map((t) => {
        const ms = timelineDuration(t);
        return [e(t.stage), e(t.start), e(t.end), ms === null ? '—' : formatDuration(ms), e(timelineOutcome(t))];
      });
    timelineBody =
      figure(svgs, CHART_FILES.timeline, 'When each stage ran (UTC); a stage that took no time (skipped, an instant cache hit) is a tick.') +
      table(['stage', 'start', 'end', 'duration', 'outcome'], rows) +
      (inputs.timelineOmitted
        ? note(
            `${inputs.timelineOmitted} more stage${inputs.timelineOmitted > 1 ? 's' : ''}, the shortest-running, not shown: ` +
              "this run's timeline was cut to fit in Temporal's payload limit (<code>tanren status</code> lists every stage).",
          )
        : '');
  } else {
    timelineBody = note(
      'No stage timeline: the <code>timeline</code> param (a list of <code>{stage, start, end, attempts, state, cachedFrom?}</code>) was not given.',
    );
  }
  sections.push(`<section id="timeline"><h2>Stage timeline</h2>\n${timelineBody}\n</section>`);

  // 5. Sweeps: the params and metric of every trial, and the one chosen.
  for (const sw of inputs.sweeps ?? []) {
    const names = [...new Set(sw.trials.flatMap((t) => Object.keys(t.params)))];
    const show = (v: unknown) =>
      typeof v === 'number' && !Number.isInteger(v)
        ? String(Number(v.toPrecision(4)))
        : v === undefined || v === null
          ? ''
          : typeof v === 'string'
            ? v
            : JSON.stringify(v);
    const rows = sw.trials.map((t) => [
      e(t.trial.startsWith(`${sw.stage}.`) ? t.trial.slice(sw.stage.length + 1) : t.trial),
      ...names.map((n) => e(show(t.params[n]))),
      t.rung ? String(t.rung) : '',
      t.step === undefined ? '' : String(t.step),
      t.metric === undefined ? '' : e(show(t.metric)),
      t.trial === sw.best ? `<strong>${e(t.state)}</strong>` : e(t.state),
    ]);
    const chosen = sw.best ? `<p>Chosen: <strong>${e(sw.best)}</strong> — ${e(sw.reason ?? '')}</p>` : note(e('No trial was chosen.'), 'warn');
    sections.push(
      `<section id="sweep-${e(sw.stage)}"><h2>Sweep: ${e(sw.stage)}</h2>\n<p class="small">${e(sw.scheduler)}, ${sw.trials.length} trials, ` +
        `${e(sw.metric)} (${e(sw.goal)})</p>\n${chosen}\n${table(['trial', ...names, 'rung', 'step', sw.metric, 'state'], rows)}\n</section>`,
    );
  }

  if (inputs.notes.length > 0) {
    sections.push(`<section id="notes"><h2>Notes</h2><ul>${inputs.notes.map((n) => `<li>${e(n)}</li>`).join('')}</ul></section>`);
  }

  const meta = [
    inputs.pipeline ? `pipeline <code>${e(inputs.pipeline)}</code>` : '',
    inputs.runId ? `run <code>${e(inputs.runId)}</code>` : '',
    `generated ${e(inputs.generatedAt)}`,
  ].filter(Boolean);
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${e(inputs.title)}</title>
<style>
${REPORT_CSS}.judge-note { margin-top: 6px; padding: 4px 8px; background: #fff6f0; border-left: 4px solid #d62728; font-size: 0.85em; }
a.src { word-break: break-all; font-size: 0.85em; }
table.samples td { vertical-align: top; }
table.samples td:first-child { white-space: normal; }
.text { white-space: pre-wrap; word-break: break-word; max-height: 14em; overflow-y: auto; min-width: 8em; max-width: 32em; }
.pager > input { position: absolute; opacity: 0; pointer-events: none; }
.pager > div.page { display: none; }
.pagebar { margin: 6px 0; font-size: 0.9em; color: #555; }
.pagebar label { display: inline-block; min-width: 1.8em; text-align: center; margin: 1px; padding: 1px 4px; border: 1px solid #bbb; border-radius: 3px; cursor: pointer; color: #222; }
${pagerCss(pages)}
</style>
</head>
<body>
<h1>${e(inputs.title)}</h1>
<div class="meta">${meta.join(' · ')}</div>
${sections.join('\n')}
</body>
</html>
`;
}
