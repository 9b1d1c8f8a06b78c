/**
 * Exit classification: what an ended stage process's exit code, signal and
 * `error` event make of it (docs/stage-protocol.md), including the smaller
 * micro-batch an OutOfMemory leaves for the next attempt. Pure.
 */
import { EXIT_CODE_FAILURES, FailureTypes, type FailureType } from '../../schemas/names.js';
import type { BatchSettings } from './types.js';

/** Halves the micro-batch and doubles gradient accumulation (same effective batch); undefined at micro-batch 1. */
export function shrinkBatch(s: BatchSettings): BatchSettings | undefined {
  if (s.micro_batch_size <= 1) return undefined;
  const micro = Math.floor(s.micro_batch_size / 2);
  return { micro_batch_size: micro, gradient_accumulation_steps: Math.round((s.gradient_accumulation_steps * s.micro_batch_size) / micro) };
}

/** How a stage process ended, and what the attempt saw of it. */
export interface StageExit {
  stageId: string;
  exitCode?: number;
  signal?: string;
  /** The program's last `error` event, if any. */
  error?: { type: string; message: string };
  /** The runner killed the program for lack of progress (stallTimeout). */
  stalled?: boolean;
  stallTimeoutMs?: number;
  /** The last step the program reported. */
  step?: number;
  /** The batch settings the attempt ran with, when the stage has them. */
  settings?: BatchSettings;
  /** What the program last said (its error message, else its last log line), already redacted and capped. */
  said?: string;
}

/** The failure an ended stage process is, for the activity to throw. */
export interface ExitFailure {
  type: FailureType;
  message: string;
  /** Set when no retry can help (an OutOfMemory at micro-batch 1); else the failure type decides. */
  nonRetryable?: true;
  /** The settings the next attempt must run with (after an OutOfMemory with a micro-batch above 1). */
  nextSettings?: BatchSettings;
}

/**
 * Classifies a stage's exit: undefined for exit code 0 without a signal;
 * else a failure whose type comes from, in increasing precedence, the signal
 * or exit code (`EXIT_CODE_FAILURES`, else StageCrashed), a known failure
 * type in the program's `error` event, and a stall. An OutOfMemory of a stage
 * with batch settings halves the micro-batch for the next attempt (the same
 * effective batch), or is final at micro-batch 1; one without is retried as
 * it is, since the memory may have been taken by something else.
 */
export function classifyExit(e: StageExit): ExitFailure | undefined {
  if (e.exitCode === 0 && !e.signal) return undefined;
  let type: FailureType = FailureTypes.StageCrashed;
  let reason: string;
  if (e.signal) {
    reason = `killed by ${e.signal}`;
  } else {
    type = EXIT_CODE_FAILURES[e.exitCode ?? -1] ?? FailureTypes.StageCrashed;
    reason = `exited with code ${e.exitCode}`;
  }
  if (e.error && (Object.values(FailureTypes) as string[]).includes(e.error.type)) {
    type = e.error.type as FailureType;
  }
  if (e.stalled) {
    type = FailureTypes.StageStalled;
    reason = `stalled: no progress for ${Math.round(e.stallTimeoutMs! / 1000)} s after step ${e.step} (stallTimeout), killed`;
  }
  const message = `stage "${e.stageId}" ${reason}${e.said ? `: ${e.said}` : ''}`;
  if (type === FailureTypes.OutOfMemory && e.settings) {
    const next = shrinkBatch(e.settings);
    if (!next) {
      return {
        type,
        nonRetryable: true,
        message: `${message} — micro_batch_size is already 1: enable gradient_checkpointing, shorten seq_len, use LoRA/QLoRA, or choose a smaller model`,
      };
    }
    return {
      type,
      message: `${message} — next attempt: micro_batch_size=${next.micro_batch_size}, gradient_accumulation_steps=${next.gradient_accumulation_steps}`,
      nextSettings: next,
    };
  }
  return { type, message };
}
