/**
 * The one retry of storage calls: {@link retry} with a named policy. Each
 * policy says which errors it retries (by {@link classifyStorageError} kind),
 * how often and how long; every wait comes from {@link retryDelay}.
 *
 * Policies nest where a caller needs two: the object store retries each call
 * under `transient`, and the stage runner wraps its uploads and downloads in
 * `outage` on top, so a blip costs 100 ms and a MinIO restart costs a wait,
 * never the stage.
 */
import { classifyStorageError, isUploadLost, type StorageErrorKind } from './errors.js';

/** Names of the retry policies. */
export type RetryPolicyName = keyof typeof RETRY_POLICIES;

/** Limits and backoff of a retry: the one options shape of {@link retry}. */
export interface RetryOptions {
  /** The named policy these options start from; the fields set here override it. @default 'transient' */
  policy?: RetryPolicyName;
  /** Tries in all, the first included. @default Infinity (bounded by `totalMs`) */
  attempts?: number;
  /** Gives up when the next wait would end more than this many ms after the first try began. @default Infinity */
  totalMs?: number;
  /** Wait before the second try. @default 250 */
  firstDelayMs?: number;
  /** Each wait is the previous one times this. @default 2 */
  factor?: number;
  /** Longest wait. @default 5000 */
  maxDelayMs?: number;
  /** Random spread of each wait as a fraction of it: 0.2 is ±20 %. @default 0 */
  jitter?: number;
  /** Error kinds that are retried; others are thrown at once. @default ['transient'] */
  retryOn?: readonly StorageErrorKind[];
  /** Decides instead of `retryOn` which errors are retried. */
  retryIf?: (err: unknown) => boolean;
  /** Called before each wait (to log, or heartbeat while the store is away). */
  onRetry?: (attempt: number, err: unknown, delayMs: number) => void;
}

const DEFAULTS = {
  attempts: Infinity,
  totalMs: Infinity,
  firstDelayMs: 250,
  factor: 2,
  maxDelayMs: 5000,
  jitter: 0,
  retryOn: ['transient'] as readonly StorageErrorKind[],
};

/** The named policies. */
export const RETRY_POLICIES = {
  /**
   * Every call of the object store: a dropped keep-alive socket, a refused
   * connection, a 5xx or `SlowDown`, tried 3 times in all, 100 ms then 200 ms
   * apart. Longer outages are the caller's (`outage`).
   */
  transient: { attempts: 3, firstDelayMs: 100, maxDelayMs: 1000 },
  /**
   * One part or file of a checkpoint transfer: transient errors, 8 tries,
   * 0.5 s doubling to 10 s with ±20 % jitter (about 45 s in all), so
   * parallel parts do not retry in step.
   */
  transfer: { attempts: 8, firstDelayMs: 500, maxDelayMs: 10_000, jitter: 0.2 },
  /**
   * A stage's uploads and downloads while MinIO restarts: transient errors
   * for up to 90 s, 250 ms doubling to 5 s. Not-found and credential errors
   * fail at once: no wait makes them succeed.
   */
  outage: { totalMs: 90_000, firstDelayMs: 250, maxDelayMs: 5000 },
  /**
   * A read of an object another worker has just written (an upstream stage's
   * manifest, a sweep trial's): `not-found` only, for up to 10 s, for stores
   * that show a new key a little late (MinIO itself is read-after-write
   * consistent, so there it never waits). Nest it inside `outage` to ride out
   * both.
   */
  'eventual-read': { totalMs: 10_000, firstDelayMs: 250, maxDelayMs: 2000, retryOn: ['not-found'] },
  /**
   * A whole multipart upload whose upload id the server lost (`NoSuchUpload`,
   * e.g. after a restart): started again from its first part, 3 tries in all,
   * at once.
   */
  multipart: { attempts: 3, firstDelayMs: 0, retryOn: [], retryIf: isUploadLost },
} as const satisfies Record<string, Omit<RetryOptions, 'policy' | 'onRetry'>>;

/** `options` with its policy's and the defaults' values filled in. */
export function resolveRetryOptions(options: RetryPolicyName | RetryOptions = {}): Required<Omit<RetryOptions, 'retryIf' | 'onRetry'>> & RetryOptions {
  const o = typeof options === 'string' ? { policy: options } : options;
  const policy = o.policy ?? 'transient';
  return { ...DEFAULTS, ...RETRY_POLICIES[policy], ...stripUndefined(o), policy };
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/**
 * The wait after failed try `attempt` (1-based): `firstDelayMs × factor^(attempt−1)`,
 * at most `maxDelayMs`, spread by ±`jitter`. `random` is Math.random's stand-in in tests.
 */
export function retryDelay(options: RetryPolicyName | RetryOptions, attempt: number, random: () => number = Math.random): number {
  const o = resolveRetryOptions(options);
  const base = Math.min(o.maxDelayMs, o.firstDelayMs * o.factor ** Math.max(0, attempt - 1));
  return o.jitter ? base * (1 + o.jitter * (2 * random() - 1)) : base;
}

/** True when `options` retries `err` (its `retryIf`, else its `retryOn` kinds). */
export function isRetryable(options: RetryPolicyName | RetryOptions, err: unknown): boolean {
  const o = resolveRetryOptions(options);
  return o.retryIf ? o.retryIf(err) : o.retryOn.includes(classifyStorageError(err));
}

/**
 * Runs `fn` until it succeeds, retrying the errors `policy` retries until its
 * `attempts` or `totalMs` run out; then, or for an error it does not retry,
 * throws the last error as it was. `fn` gets the try's number (1-based).
 *
 *     await retry(() => storage.getText(key), 'transient');
 *     await retry(() => storage.putFile(key, file), { policy: 'outage', onRetry: heartbeat });
 */
export async function retry<T>(fn: (attempt: number) => Promise<T>, policy: RetryPolicyName | RetryOptions = 'transient'): Promise<T> {
  const o = resolveRetryOptions(policy);
  const deadline = Date.now() + o.totalMs;
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn(attempt);
    } catch (err) {
      if (attempt >= o.attempts || !isRetryable(o, err)) throw err;
      const delay = retryDelay(o, attempt);
      if (Date.now() + delay > deadline) throw err;
      o.onRetry?.(attempt, err, delay);
      if (delay > 0) await new Promise((r) => setTimeout(r, delay));
    }
  }
}
