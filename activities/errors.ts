/**
 * Failures raised by activities. Errors that cross the Temporal boundary are
 * ApplicationFailures with a fixed type from schemas/names.ts.
 */
import { ApplicationFailure } from '@temporalio/common';
import { FailureTypes, NON_RETRYABLE_FAILURE_TYPES, type FailureType } from '../schemas/names.js';
import { StorageAuthError } from './storage/errors.js';

/** Creates an ApplicationFailure of a tanren failure type; non-retryable types are marked so. */
export function stageFailure(type: FailureType, message: string, details?: unknown): ApplicationFailure {
  return ApplicationFailure.create({
    type,
    message,
    nonRetryable: NON_RETRYABLE_FAILURE_TYPES.includes(type),
    details: details === undefined ? undefined : [details],
  });
}

/**
 * Maps an object-store error to a stage failure with what was being done:
 * refused credentials (`StorageAuthError`) are this worker's configuration,
 * `WorkerMisconfigured` (retried, perhaps on a worker that has the right
 * ones); anything else is `StorageUnavailable` (retried with backoff).
 */
export function storageFailure(doing: string, err: unknown): ApplicationFailure {
  const message = (err as Error).message ?? String(err);
  if (err instanceof StorageAuthError) {
    return stageFailure(
      FailureTypes.WorkerMisconfigured,
      `object storage refused this worker's credentials while ${doing} (check TANREN_S3_ACCESS_KEY/TANREN_S3_SECRET_KEY and the bucket policy): ${message}`,
    );
  }
  return stageFailure(FailureTypes.StorageUnavailable, `object storage unavailable while ${doing}: ${message}`);
}
