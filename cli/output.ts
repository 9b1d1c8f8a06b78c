/**
 * Output for people: tables, progress bars and colours on a terminal; and the
 * exit codes scripts rely on.
 */

/** Exit codes of the tanren CLI. */
export const ExitCodes = {
  ok: 0,
  /** the run failed, or the spec is invalid */
  failed: 1,
  usage: 2,
  notFound: 3,
  cancelled: 4,
  /** Temporal or object storage cannot be reached (EX_UNAVAILABLE) */
  unavailable: 69,
  /** the environment is misconfigured (EX_CONFIG) */
  config: 78,
} as const;

const useColour = () => Boolean(process.stdout.isTTY) && !process.env.NO_COLOR;
const paint = (code: number) => (s: string) => (useColour() ? `\u001b[${code}m${s}\u001b[0m` : s);
/** Colour helpers; plain text when not on a terminal or NO_COLOR is set. */
export const colour = { red: paint(31), green: paint(32), yellow: paint(33), blue: paint(34), dim: paint(2), bold: paint(1) };

/** Colours a stage or run state. */
export function colourState(state: string): string {
  if (state === 'succeeded' || state === 'cached') return colour.green(state);
  if (state === 'failed' || state === 'cancelled') return colour.red(state);
  if (state === 'running' || state === 'retrying') return colour.blue(state);
  if (state === 'paused' || state === 'skipped') return colour.yellow(state);
  return colour.dim(state);
}

// eslint-disable-next-line no-control-regex
const ANSI = /\u001b\[[0-9;]*m/g;
const visible = (s: string) => s.replace(ANSI, '').length;

/** Renders rows as an aligned table with a header. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(visible(h), ...rows.map((r) => visible(r[i] ?? ''))));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => c + ' '.repeat(widths[i] - visible(c)))
      .join('  ')
      .trimEnd();
  return [colour.bold(line(header)), ...rows.map(line)].join('\n');
}

/** A text progress bar: `[#####.....] 50%`. */
export function progressBar(step: number | undefined, total: number | undefined, width = 20): string {
  if (step === undefined || !total) return '';
  const frac = Math.max(0, Math.min(1, step / total));
  const full = Math.round(frac * width);
  return `[${'#'.repeat(full)}${'.'.repeat(width - full)}] ${Math.round(frac * 100)}%`;
}
