/**
 * The stage timeline a report stage receives (`with.timeline`), kept within a
 * budget: it travels in the report's activity input, one payload of at most
 * 2 MB: a run of 5,000 stages with long ids, cached from a run with a long id
 * (a row names the run it reused), has ~1.95 MB of rows, past the payload with
 * the largest sweeps' trials beside them. Pure code.
 */
import { jsonBytes } from '../schemas/payload-size.js';

/** One row of the timeline: a stage that has ended (or been skipped or reused). */
export interface TimelineRow {
  stage: string;
  start: string;
  end: string;
  attempts: number;
  state: string;
  /** For a cache hit: the run whose outputs it reused. */
  cachedFrom?: string;
}

/**
 * Most bytes (JSON, UTF-8) of the timeline in a report's task: a quarter of Temporal's 2 MiB, leaving room for
 * the sweeps' trials (at most ~340 kB, schemas/pipeline.ts) and the rest of the task.
 */
export const TIMELINE_BUDGET_BYTES = 512 * 1024;

/**
 * Fits timeline rows into `budget` bytes, each step only if the one before was not enough: the rows as they are;
 * without the runs cache hits came from (their state still says `cached`); then only the longest-running stages
 * that fit, in their order (a chart of thousands of instant rows says little; the count left out is returned
 * and the report says it). The input is never changed.
 */
export function fitTimeline(rows: readonly TimelineRow[], budget = TIMELINE_BUDGET_BYTES): { rows: TimelineRow[]; omitted: number } {
  if (jsonBytes(rows) <= budget) return { rows: [...rows], omitted: 0 };
  const plain = rows.map(({ cachedFrom: _from, ...row }) => row);
  if (jsonBytes(plain) <= budget) return { rows: plain, omitted: 0 };
  const took = (r: TimelineRow) => Date.parse(r.end) - Date.parse(r.start);
  // Longest first (ties and unparsable times: the earlier row); `[]` and a comma per row.
  const order = plain.map((row, i) => ({ i, ms: took(row) || 0, bytes: jsonBytes(row) + 1 })).sort((a, b) => b.ms - a.ms || a.i - b.i);
  const keep = new Set<number>();
  let total = 2;
  for (const { i, bytes } of order) {
    if (total + bytes > budget) break;
    keep.add(i);
    total += bytes;
  }
  return { rows: plain.filter((_, i) => keep.has(i)), omitted: rows.length - keep.size };
}
