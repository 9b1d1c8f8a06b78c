/**
 * The data a report is built from. `load-inputs.ts` reads it from the stage
 * protocol's directories; `buildReport` turns it into HTML and SVG without I/O.
 */

/** One reference model from the user-editable CSV (`reference_scores`). */
export interface ReferencePoint {
  /** Model name as written in the CSV's `model` column. */
  readonly model: string;
  /** MT-Bench overall score (1–10); null when the cell is empty. */
  readonly mtBench: number | null;
  /** llm-jp-eval average (0–1); null when the cell is empty. */
  readonly llmJpEval: number | null;
  /** Free text from the optional `note` column. */
  readonly note?: string;
  /** Where the figures were published (optional `source` column, a URL). */
  readonly source?: string;
  /** When they were published or read (optional `date` column). */
  readonly date?: string;
}

/** One turn of one MT-Bench question: what was asked, the reference, this run's answer and the judge's verdict. */
export interface MtBenchTurn {
  readonly questionId: string;
  readonly category: string;
  /** 1 or 2. */
  readonly turn: number;
  /** The user's turn; null when answers.jsonl predates recording it. */
  readonly question: string | null;
  /** The reference answer's turn; null when there is none. */
  readonly reference: string | null;
  readonly answer: string;
  /** The judge's rating; null when unparsable, undefined when not judged. */
  readonly score?: number | null;
  /** The judge's last reply. */
  readonly judgment?: string;
}

/** One llm-jp-eval sample as the stage wrote it to `outputs/<dataset>.jsonl`. */
export interface LlmJpEvalSample {
  readonly dataset: string;
  readonly index: number;
  readonly input: string;
  readonly reference: string;
  /** The cleaned prediction that was scored. */
  readonly output: string;
  /** The dataset's designated metric, when scores.json names one. */
  readonly metric?: string;
  /** The sample's value of that metric (else of its first metric). */
  readonly score: number | null;
}

/** Per-dataset entry of the llm-jp-eval stage's `scores.json`. */
export interface LlmJpEvalDataset {
  readonly samples: number;
  /** Metric name (exact_match, char_f1, set_f1, bleu) → mean over samples. */
  readonly metrics: Readonly<Record<string, number>>;
  /** Mean of the dataset's metrics. */
  readonly score: number;
}

/** The llm-jp-eval stage's `scores.json`: `{average, datasets: {name: {samples, metrics, score}}}`. */
export interface LlmJpEvalScores {
  /** Stage id the scores came from. */
  readonly stage: string;
  readonly average: number;
  readonly datasets: Readonly<Record<string, LlmJpEvalDataset>>;
}

/**
 * The MT-Bench stage's outcome. Without a judge the stage writes answers only
 * (no `scores.json`), so there is no score to plot.
 */
export type MtBenchScores =
  | {
      readonly status: 'scored';
      readonly stage: string;
      /** Mean rating over all parsed judgments; null when every judgment was unparsable. */
      readonly score: number | null;
      readonly categories: Readonly<Record<string, number>>;
      readonly unparsable?: number;
      readonly judgeCalls?: number;
      readonly judgePromptTokens?: number;
      readonly judgeCompletionTokens?: number;
      readonly judgeCost?: number | null;
      /** The judge model's name (scores.json `judge.model`). */
      readonly judgeModel?: string;
      /** A remark on the judge (scores.json `judge.note`), e.g. that it is a tiny test model: shown beside the score. */
      readonly judgeNote?: string;
    }
  | { readonly status: 'not-configured'; readonly stage: string; readonly answered?: number }
  | { readonly status: 'absent' };

/** One logged training step. */
export interface MetricPoint {
  readonly step: number;
  /** Numeric metrics of that step (loss, lr, grad_norm, …). */
  readonly values: Readonly<Record<string, number>>;
}

import type { SweepEntry } from './params.js';

/** The metric history of one needed stage. */
export interface MetricSeries {
  /** Stage id (the sub-directory of TANREN_INPUTS). */
  readonly stage: string;
  /** Where it was read, relative to the stage's outputs (e.g. `metrics.jsonl`). */
  readonly source: string;
  readonly points: readonly MetricPoint[];
}

/**
 * States a timeline row may be in: the workflow's stage states after a stage
 * has started (everything but `pending`).
 */
export const TIMELINE_STATES = ['succeeded', 'cached', 'failed', 'skipped', 'cancelled', 'retrying', 'running'] as const;

/** State of one timeline row. */
export type TimelineState = (typeof TIMELINE_STATES)[number];

/** One stage's run in the timeline, as the engine reports it. */
export interface TimelineEntry {
  readonly stage: string;
  /** ISO 8601 start time. */
  readonly start: string;
  /**
   * ISO 8601 end time. A skipped stage may end when it starts, or carry no
   * meaningful duration at all.
   */
  readonly end: string;
  /** Attempts the stage ran: 0 for one that never ran one (a cache hit, a skipped stage). Absent in old timelines. */
  readonly attempts?: number;
  /** How the stage ended (or where it is); absent in old timelines. */
  readonly state?: TimelineState;
  /** For a `cached` stage: the run whose outputs it reused. */
  readonly cachedFrom?: string;
}

/** Everything `buildReport` needs; plain data, so tests can build it directly. */
export interface ReportInputs {
  /** Page title. */
  readonly title: string;
  /** Label of this run's point in the scatter. */
  readonly modelName: string;
  readonly runId?: string;
  readonly pipeline?: string;
  /** ISO time stamped on the page (passed in so the output is reproducible). */
  readonly generatedAt: string;
  readonly references: readonly ReferencePoint[];
  /** Path of the reference CSV as given, shown under the scatter. */
  readonly referenceSource: string;
  readonly mtBench: MtBenchScores;
  /** Null when no needed stage holds llm-jp-eval scores. */
  readonly llmJpEval: LlmJpEvalScores | null;
  /** Every answered MT-Bench turn, in question order (empty or absent when there are none). */
  readonly mtBenchTurns?: readonly MtBenchTurn[];
  /** Every llm-jp-eval sample, by dataset (empty or absent when there are none). */
  readonly llmJpEvalSamples?: readonly LlmJpEvalSample[];
  readonly metrics: readonly MetricSeries[];
  /** Null when the `timeline` param was not given. */
  readonly timeline: readonly TimelineEntry[] | null;
  /** Stages left out of `timeline` by the engine (a run too large for its task's payload); absent when none. */
  readonly timelineOmitted?: number;
  /** Swept stages of the run (the `sweeps` param); absent or empty when none. */
  readonly sweeps?: readonly SweepEntry[];
  /** Remarks gathered while loading (skipped lines, fallbacks), shown on the page. */
  readonly notes: readonly string[];
}

/** What `buildReport` returns. */
export interface BuiltReport {
  /** The self-contained page (charts inlined, no external resources). */
  readonly html: string;
  /** File name (e.g. `scatter.svg`) → standalone SVG document. */
  readonly svgs: Readonly<Record<string, string>>;
  /** Figures for the stage's `result` event. */
  readonly summary: ReportSummary;
}

/** Summary figures of a built report. */
export interface ReportSummary {
  /** Points drawn in the scatter (references with both scores, plus this run when it has both). */
  readonly points: number;
  /** Whether this run's point is in the scatter. */
  readonly runPoint: boolean;
  readonly mtBench: number | null;
  /** Why there is no MT-Bench score, when there is none. */
  readonly mtBenchMissing?: string;
  readonly llmJpEval: number | null;
  /** Stages with a loss curve. */
  readonly lossStages: readonly string[];
  readonly timeline: boolean;
}
