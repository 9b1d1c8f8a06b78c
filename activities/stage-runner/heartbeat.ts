/**
 * The one heartbeat writer of a stage attempt: every beat sends all of the
 * attempt's details, so the next attempt (and `tanren status`) sees them.
 */
import type { Context } from '@temporalio/activity';
import type { AttemptRecord } from '../types.js';
import type { Beat, StageHeartbeat } from './types.js';

/** Attempts recorded in heartbeats (and a stage's result): the most kept. */
export const MAX_ATTEMPTS_KEPT = 20;

/** An attempt's heartbeat details and the function that sends them. */
export interface HeartbeatWriter {
  /** The details, filled in as the attempt goes. */
  readonly hb: StageHeartbeat;
  /** Applies a change to the details and heartbeats all of them. */
  readonly beat: Beat;
  /** The details the previous attempt last sent, if any. */
  readonly previous: StageHeartbeat | undefined;
  /**
   * Beats every `everyMs` until {@link HeartbeatWriter.stopKeepAlive}: for the part of an attempt that reports no
   * progress of its own (inputs, a checkpoint to restore, a GPU to wait for, the program's start, which for the
   * first built-in stage of a worker waits for its zygote to import torch), which can outlast a short
   * `heartbeatTimeout` on a loaded host. The SDK sends at most one heartbeat per throttle interval.
   */
  keepAlive(everyMs: number): void;
  /** Stops {@link HeartbeatWriter.keepAlive}; idempotent. */
  stopKeepAlive(): void;
}

/**
 * Starts the details of the current attempt from the previous attempt's last
 * heartbeat: its checkpoint, its settings for this attempt, and the attempts so far.
 */
export function createHeartbeat(ctx: Context, startedAt: string): HeartbeatWriter {
  const attempt = ctx.info.attempt;
  const previous = (ctx.info.heartbeatDetails ?? undefined) as StageHeartbeat | undefined;
  const hb: StageHeartbeat = {
    attempt,
    checkpoint: previous?.checkpoint,
    nextSettings: previous?.nextSettings,
    attempts: [...(previous?.attempts ?? []).filter((a) => a.attempt < attempt), { attempt, startedAt }].slice(-MAX_ATTEMPTS_KEPT),
  };
  const beat: Beat = (change = {}) => {
    Object.assign(hb, change);
    // A local activity (a `local: true` stage) has no heartbeats: its details live only in this attempt.
    if (!ctx.info.isLocal) ctx.heartbeat({ ...hb });
  };
  let keeping: NodeJS.Timeout | undefined;
  const stopKeepAlive = () => {
    clearInterval(keeping);
    keeping = undefined;
  };
  const keepAlive = (everyMs: number) => {
    stopKeepAlive();
    // No beat at once: most attempts start their program well within a second, and a beat is a call to the server.
    if (!ctx.info.isLocal) keeping = setInterval(() => beat(), everyMs);
  };
  return { hb, beat, previous, keepAlive, stopKeepAlive };
}

/** Ends the current attempt's record (with its failure, if any); returns every attempt recorded. */
export function closeAttempt(hb: StageHeartbeat, failure?: string): AttemptRecord[] {
  const current = hb.attempts?.at(-1);
  if (current && current.endedAt === undefined) {
    current.endedAt = new Date().toISOString();
    if (failure) current.failure = failure;
  }
  return hb.attempts ?? [];
}
