/**
 * The monitor of a running stage: reads its events file every poll interval
 * into the attempt's state, heartbeats it, hands announced checkpoints to the
 * uploader, copies the log to object storage now and then, and kills a stage
 * that reported progress and then none for its stallTimeout.
 */
import type { Logger } from '@temporalio/common';
import type { CheckpointUploader } from '../checkpoints/uploader.js';
import { EventFileReader, type StageEvent } from '../events.js';
import type { Beat, StageHeartbeat } from './types.js';

/** What the program reported through its events. */
export interface StageState {
  step?: number;
  total?: number;
  message?: string;
  metrics: Record<string, number>;
  result: Record<string, unknown>;
  checkpoints: Array<{ path: string; step?: number }>;
  /** Its last `error` event. */
  error?: { type: string; message: string };
}

/** What the monitor needs. */
export interface MonitorOptions {
  eventsFile: string;
  stageId: string;
  log: Logger;
  uploader: Pick<CheckpointUploader, 'announce' | 'latest'>;
  hb: StageHeartbeat;
  beat: Beat;
  /** Kill and fail (StageStalled) after this long without progress, once there was some. */
  stallTimeoutMs?: number;
  /** Kills the stalled program. */
  onStall: () => void;
  pollIntervalMs: number;
  logUploadIntervalMs: number;
  /** Copies the log to object storage; never throws. */
  uploadLog: () => Promise<void>;
}

/** A running monitor. */
export interface StageMonitor {
  readonly state: StageState;
  /** True once the stage was killed for lack of progress. */
  readonly stalled: boolean;
  /** Ends the polling (after the process has exited) and waits for the poll under way. */
  stop(): Promise<void>;
  /** Reads what the program appended since the last read and heartbeats it; `final` after exit, when a stall no longer counts. */
  pump(final: boolean): Promise<void>;
}

/** Starts polling the events file. */
export function startMonitor(o: MonitorOptions): StageMonitor {
  const { log, stageId } = o;
  const reader = new EventFileReader(o.eventsFile, (line, why) => {
    log.warn(`stage event ignored (${why})`, { stage: stageId, line: line.slice(0, 200) });
  });
  const state: StageState = { metrics: {}, result: {}, checkpoints: [] };
  // Liveness by progress: once the program has reported a step, it must keep doing so.
  let lastProgressAt: number | undefined;
  let stalled = false;
  const apply = (e: StageEvent) => {
    switch (e.event) {
      case 'progress':
        state.step = e.step;
        state.total = e.total ?? state.total;
        state.message = e.message ?? state.message;
        lastProgressAt = Date.now();
        break;
      case 'metric':
        Object.assign(state.metrics, e.values);
        break;
      case 'checkpoint':
        state.checkpoints.push({ path: e.path, step: e.step });
        try {
          o.uploader.announce({ path: e.path, step: e.step });
        } catch (err) {
          log.warn('checkpoint event ignored', { stage: stageId, error: String(err) });
        }
        break;
      case 'result':
        Object.assign(state.result, e.values);
        break;
      case 'error':
        state.error = { type: e.type, message: e.message };
        break;
      case 'artifact':
        break;
      default:
        log.debug('unknown stage event', { event: (e as { event: string }).event });
    }
  };
  const pump = async (final: boolean) => {
    for (const e of await reader.poll()) apply(e);
    o.beat({
      phase: undefined,
      step: state.step,
      total: state.total,
      message: state.message,
      metrics: state.metrics,
      lastCheckpoint: state.checkpoints.at(-1),
      checkpoint: o.uploader.latest() ?? o.hb.checkpoint,
      ...(lastProgressAt !== undefined ? { progressAt: new Date(lastProgressAt).toISOString() } : {}),
    });
    if (!final && !stalled && o.stallTimeoutMs && lastProgressAt !== undefined && Date.now() - lastProgressAt > o.stallTimeoutMs) {
      stalled = true;
      log.warn('stage stalled: no progress within its stallTimeout; killing it', { stage: stageId, step: state.step, stallTimeoutMs: o.stallTimeoutMs });
      o.onStall();
    }
  };

  let lastLogUpload = Date.now();
  let done = false;
  let wake: (() => void) | undefined;
  let pollTimer: NodeJS.Timeout | undefined;
  const poller = (async () => {
    while (!done) {
      // Interruptible, so a finished stage is noticed at once rather than after a poll interval.
      await new Promise<void>((r) => {
        wake = r;
        pollTimer = setTimeout(r, o.pollIntervalMs);
      });
      if (done) break;
      try {
        await pump(false);
      } catch (err) {
        log.warn('reading stage events failed', { error: String(err) });
      }
      if (Date.now() - lastLogUpload >= o.logUploadIntervalMs) {
        lastLogUpload = Date.now();
        await o.uploadLog();
      }
    }
  })();

  return {
    state,
    get stalled() {
      return stalled;
    },
    async stop() {
      done = true;
      clearTimeout(pollTimer);
      wake?.();
      await poller;
    },
    pump,
  };
}
