/**
 * Failures raised by activities. Errors that cross the Temporal boundary are
 * ApplicationFailures with a fixed type from schemas/names.ts.
 */
import { ApplicationFailure } from '@temporalio/common';
import { FailureTypes, NON_RETRYABLE_FAILURE_TYPES, type FailureType } from '../schemas/names.js';

/** Creates an ApplicationFailure of a tanren failure type; non-retryable types are marked so. */
export function stageFailure(type: FailureType, message: string, details?: unknown): ApplicationFailure {
  return ApplicationFailure.create({
    type,
    message,
    nonRetryable: NON_RETRYABLE_FAILURE_TYPES.includes(type),
    details: details === undefined ? undefined : [details],
  });
}

/** Maps an object-store error to `StorageUnavailable` (retryable) with what was being done. */
export function storageFailure(doing: string, err: unknown): ApplicationFailure {
  return stageFailure(FailureTypes.StorageUnavailable, `object storage unavailable while ${doing}: ${(err as Error).message ?? err}`);
}
