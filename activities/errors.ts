/**
 * Failures raised by activities. Errors that cross the Temporal boundary are
 * ApplicationFailures with a fixed type from schemas/names.ts.
 */
import { ApplicationFailure } from '@temporalio/common';
import { FailureTypes, NON_RETRYABLE_FAILURE_TYPES, type FailureType } from '../schemas/names.js';
import { classifyStorageError, StorageAuthError } from './storage/errors.js';

/** Creates an ApplicationFailure of a tanren failure type; non-retryable types are marked so. */
export function stageFailure(type: FailureType, message: string, details?: unknown): ApplicationFailure {
  return ApplicationFailure.create({
    type,
    message,
    nonRetryable: NON_RETRYABLE_FAILURE_TYPES.includes(type),
    details: details === undefined ? undefined : [details],
  });
}

/** Local file-system errors of a transfer that are the worker host's: a full disk, a read-only or forbidden work directory. */
const HOST_DISK_CODES = new Set(['ENOSPC', 'EDQUOT', 'EROFS', 'EACCES', 'EPERM']);

/**
 * Maps an object-store error to a stage failure with what was being done:
 * refused credentials (`StorageAuthError`) are this worker's configuration,
 * `WorkerMisconfigured` (retried, perhaps on a worker that has the right
 * ones), and so is a full, read-only or forbidden local disk; anything else is
 * `StorageUnavailable` (retried with backoff), said as a refusal when the
 * store answered that the request itself is wrong.
 */
export function storageFailure(doing: string, err: unknown): ApplicationFailure {
  const message = (err as Error).message ?? String(err);
  if (err instanceof StorageAuthError) {
    return stageFailure(
      FailureTypes.WorkerMisconfigured,
      `object storage refused this worker's credentials while ${doing} (check TANREN_S3_ACCESS_KEY/TANREN_S3_SECRET_KEY and the bucket policy): ${message}`,
    );
  }
  const kind = classifyStorageError(err);
  const code = (err as { code?: unknown } | undefined)?.code;
  if (kind === 'permanent' && typeof code === 'string' && HOST_DISK_CODES.has(code)) {
    return stageFailure(
      FailureTypes.WorkerMisconfigured,
      `this worker's disk refused a file while ${doing} (check the free space and permissions of TANREN_WORK_DIR): ${message}`,
    );
  }
  if (kind === 'permanent') return stageFailure(FailureTypes.StorageUnavailable, `object storage call failed while ${doing}: ${message}`);
  return stageFailure(FailureTypes.StorageUnavailable, `object storage unavailable while ${doing}: ${message}`);
}
