/**
 * Least privilege for stage programs: the environment they inherit from the
 * worker (an allowlist, never the worker's S3, Temporal TLS or credential
 * variables), the judge URLs they may call, and redaction of anything that
 * enters a run's history (visible to everyone who can read the UI).
 */

/** Worker variables a stage program inherits; everything else stays with the worker. */
export const STAGE_ENV_ALLOW: readonly RegExp[] = [
  /^(PATH|HOME|USER|LOGNAME|SHELL|LANG|LANGUAGE|TZ|TMPDIR|TERM)$/,
  /^LC_[A-Z_]+$/,
  // GPU, Hugging Face and torch settings the ML stages read.
  /^(CUDA|NVIDIA|NCCL|HF|HUGGINGFACE|TRANSFORMERS|TORCH|PYTORCH|TORCHINDUCTOR|TRITON|MKL|OMP|BNB)_[A-Z0-9_]*$/,
  /^TOKENIZERS_PARALLELISM$/,
  // Fault injection hooks of the test suite.
  /^TANREN_TEST_[A-Z0-9_]+$/,
];

/** Where the MT-Bench judge's key lives: passed only to a stage whose `judge.api_key_env` names the variable. */
export const JUDGE_KEY_VAR = /^TANREN_JUDGE_[A-Z0-9_]+$/;

/** Never passed on, whatever an allowlist or the worker's TANREN_STAGE_ENV says. */
const NEVER = /^(TANREN_S3_|TEMPORAL_|AWS_|MINIO_)|SECRET|PASSWORD|CREDENTIAL/;

/**
 * The environment of a stage program: the allowlisted part of `workerEnv`,
 * the variables the worker's config names (`extraNames`), the `TANREN_JUDGE_*`
 * variables the stage's params name as its judge key (`judgeKeyNames`), then
 * `own` (the protocol variables), which win. Any other stage never sees a
 * judge key, so a `run:` stage that dumps its environment cannot publish it.
 */
export function stageEnvironment(
  workerEnv: NodeJS.ProcessEnv,
  own: Record<string, string>,
  extraNames: readonly string[] = [],
  judgeKeyNames: readonly string[] = [],
): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(workerEnv)) {
    if (v === undefined || NEVER.test(k)) continue;
    const judgeKey = JUDGE_KEY_VAR.test(k) && judgeKeyNames.includes(k);
    if (STAGE_ENV_ALLOW.some((re) => re.test(k)) || extraNames.includes(k) || judgeKey) out[k] = v;
  }
  return { ...out, ...own };
}

/** Judge endpoints a stage may call unless the worker allows more (TANREN_JUDGE_BASE_URLS). */
export const DEFAULT_JUDGE_URLS: readonly string[] = ['http://127.0.0.1', 'http://localhost', 'http://[::1]'];

/** True when `url` starts with one of `allowed` at a host or path boundary. */
export function judgeUrlAllowed(url: string, allowed: readonly string[]): boolean {
  return allowed.some((prefix) => {
    const p = prefix.replace(/\/+$/, '');
    return url === p || url.startsWith(`${p}/`) || url.startsWith(`${p}:`);
  });
}

/** Creates a redactor: replaces the worker's secret values and `key=…`/`token=…`-shaped strings. */
export function createRedactor(secrets: readonly string[]): (text: string) => string {
  // Short values would redact ordinary words; credentials are longer than this.
  const values = [...new Set(secrets.filter((s) => s.length >= 6))].sort((a, b) => b.length - a.length);
  const shaped = /\b((?:api[_-]?)?key|token|secret|password|passwd|authorization|bearer)(["']?\s*[:=]\s*|\s+)(["']?)[^\s"',;]{6,}/gi;
  return (text: string) => {
    let out = text;
    for (const v of values) out = out.split(v).join('[redacted]');
    return out.replace(shaped, (_m, name: string, sep: string, quote: string) => `${name}${sep}${quote}[redacted]`);
  };
}

/** Cuts `text` to at most `max` characters, keeping its end (where the error usually is). */
export function capTail(text: string, max: number): string {
  return text.length <= max ? text : `…[${text.length - max} characters cut; the full log is in object storage]…${text.slice(-max)}`;
}

/** Cuts `text` to at most `max` characters, keeping its start. */
export function capHead(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max)}…[${text.length - max} characters cut]`;
}

/** Most bytes of a stage's `result` values (as JSON) that go into history; larger values are replaced by a note. */
export const MAX_RESULT_VALUE_BYTES = 16 * 1024;
/**
 * Most bytes of a stage's whole `result` (as JSON) that go into history: the activity's result is one payload,
 * which Temporal refuses over 2 MB (the attempt would fail, and its retries too). Values past it are replaced
 * by a note; the manifest keeps them all.
 */
export const MAX_RESULT_BYTES = 128 * 1024;
/** Most metrics of a stage that go into history. */
export const MAX_METRICS = 100;

/** A stage's result bounded and redacted for history: oversized values, and values past the total, become a note pointing at the manifest. */
export function boundResult(result: Record<string, unknown>, redact: (t: string) => string): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  let total = 0;
  for (const [k, v] of Object.entries(result)) {
    const json = JSON.stringify(v) ?? '';
    const bytes = Buffer.byteLength(json);
    total += bytes + Buffer.byteLength(k) + 4;
    if (bytes > MAX_RESULT_VALUE_BYTES) out[k] = `[${bytes} bytes: too large for the run's history; see the stage's outputs]`;
    else if (total > MAX_RESULT_BYTES)
      out[k] = `[${bytes} bytes: past the ${MAX_RESULT_BYTES} bytes of a result kept in the run's history; see the stage's manifest]`;
    else out[k] = typeof v === 'string' ? redact(v) : JSON.parse(redact(json));
  }
  return out;
}

/** At most {@link MAX_METRICS} finite numeric metrics. */
export function boundMetrics(metrics: Record<string, number>): Record<string, number> {
  return Object.fromEntries(
    Object.entries(metrics)
      .filter(([, v]) => typeof v === 'number')
      .slice(0, MAX_METRICS),
  );
}
