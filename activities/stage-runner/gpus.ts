/** The GPUs a gpu-queue stage takes from its worker's slots for one attempt. */
import { Context } from '@temporalio/activity';
import { FailureTypes } from '../../schemas/names.js';
import { stageFailure } from '../errors.js';
import type { StageTask } from '../types.js';
import type { Beat, GpuSlotPool } from './types.js';

/** GPUs held for an attempt: released when it ends, whatever the outcome. */
export interface GpuLease {
  cudaVisibleDevices: string;
  release(): void;
}

/**
 * Waits for the GPUs a gpu-queue stage needs (`gpus`, default 1) on a worker
 * with slots, heartbeating while it waits so the wait never looks like a lost
 * worker; a stage needing more GPUs than the worker has fails retryably, so a
 * worker with more can take it.
 */
export async function takeGpus(slots: GpuSlotPool | undefined, task: StageTask, beat: Beat): Promise<GpuLease | undefined> {
  if (!slots || task.queue !== 'gpu') return undefined;
  const n = task.stage.gpus ?? 1;
  if (n > slots.size) {
    throw stageFailure(
      FailureTypes.WorkerMisconfigured,
      `stage "${task.stage.id}" needs ${n} GPUs (gpus) but this worker serves ${slots.size}: start a worker with more in TANREN_GPU_DEVICES, or lower gpus`,
    );
  }
  const ctx = Context.current();
  beat({ phase: `waiting for ${n} free GPU${n === 1 ? '' : 's'}` });
  const timer = setInterval(() => beat(), 5000);
  try {
    return await slots.acquire(n, `${task.runId}/${task.stage.id}`, ctx.cancellationSignal);
  } finally {
    clearInterval(timer);
  }
}
