/**
 * What an object-store error means, decided in one place. Every error a
 * storage call can throw (an S3 error reply, a socket error, a minio-js
 * argument error, a local file error) falls into one of four kinds, and the
 * object store ({@link createObjectStore}) throws it as the named error class
 * of its kind, with the original as `cause` and its `code` kept.
 *
 * Local errors end in `Error`; when one crosses the Temporal boundary the
 * activity turns it into the `StorageUnavailable` ApplicationFailure
 * (activities/errors.ts, `storageFailure`).
 */

/** The four kinds of storage error; each names what a caller does about it. */
export type StorageErrorKind =
  /** The object (or, for a HEAD, the key) does not exist: return "absent", do not retry. */
  | 'not-found'
  /** The credentials are wrong or may not do this: a person must fix the configuration. */
  | 'auth'
  /** The store is unreachable, restarting, overloaded or failed internally: retry with backoff. */
  | 'transient'
  /** The request itself is wrong (no such bucket, bad name, local file error, a bug): retrying repeats it. */
  | 'permanent';

/** S3 error codes of a missing object. `NotFound` is what a HEAD (statObject) gets: it has no body to say more. */
const NOT_FOUND_CODES = new Set(['NoSuchKey', 'NotFound', 'NoSuchVersion']);

/** S3 error codes of refused credentials or permissions (a HEAD's 403 arrives as `AccessDenied`). */
const AUTH_CODES = new Set([
  'AccessDenied',
  'Forbidden',
  'InvalidAccessKeyId',
  'SignatureDoesNotMatch',
  'ExpiredToken',
  'InvalidToken',
  'AccountProblem',
  'AllAccessDisabled',
  'XMinioInvalidIAMCredentials',
]);

/** S3 error codes and socket errors that a later try may not see. */
const TRANSIENT_CODES = new Set([
  // The server's
  'SlowDown',
  'ServiceUnavailable',
  'InternalError',
  'RequestTimeout',
  'OperationAborted',
  'XMinioServerNotInitialized',
  'XMinioStorageFull',
  // The connection's
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
]);

/** S3 error codes and local errors that no retry will fix. */
const PERMANENT_CODES = new Set([
  'NoSuchBucket',
  'NoSuchUpload',
  'InvalidBucketName',
  'InvalidObjectName',
  'InvalidArgument',
  'InvalidRange',
  'EntityTooLarge',
  'EntityTooSmall',
  'InvalidPart',
  'InvalidPartOrder',
  'MethodNotAllowed',
  'ABORT_ERR',
  'ENOENT',
  'EACCES',
  'EISDIR',
  'ENOTDIR',
  'EROFS',
  'ENOSPC',
  'ELOOP',
]);

/** Error classes whose cause is the caller's, never the store's: minio-js argument checks, cancellation, bugs, bad JSON. */
const PERMANENT_NAMES = new Set([
  'InvalidArgumentError',
  'InvalidObjectNameError',
  'InvalidBucketNameError',
  'InvalidEndpointError',
  'InvalidPortError',
  'AbortError',
  'ApplicationFailure',
  'CancelledFailure',
  'TypeError',
  'RangeError',
  'SyntaxError',
  'ReferenceError',
]);

/** Messages of failures that carry no code: minio-js's own "retryable status" error, dropped keep-alive sockets, undici. */
const TRANSIENT_MESSAGE = /Retryable HTTP status|socket hang up|fetch failed|other side closed|ECONNRESET|ECONNREFUSED/i;

interface ErrorLike {
  name?: unknown;
  code?: unknown;
  message?: unknown;
  statusCode?: unknown;
  status?: unknown;
  cause?: unknown;
}

function kindOfStatus(status: number): StorageErrorKind | undefined {
  if (status === 404) return 'not-found';
  if (status === 401 || status === 403) return 'auth';
  if (status === 408 || status === 429 || status >= 500) return 'transient';
  if (status >= 400) return 'permanent';
  return undefined;
}

/**
 * Classifies an error of a storage call. The first rule that matches decides:
 * a {@link StorageError}'s own kind; its `code` (S3 error code or Node socket
 * error); its HTTP status; its message (minio-js reports a 5xx it gave up on
 * as `Retryable HTTP status: 503`, undici a refused connection as `fetch
 * failed`); the same rules for its `cause`; its class name (minio-js argument
 * errors, cancellation, bugs: permanent).
 * Anything else is `transient`: a bounded retry of an unknown failure costs
 * little, giving up on a blip costs a stage.
 */
export function classifyStorageError(err: unknown): StorageErrorKind {
  return classify(err, 0) ?? 'transient';
}

function classify(err: unknown, depth: number): StorageErrorKind | undefined {
  if (err === null || err === undefined || typeof err !== 'object') return undefined;
  if (err instanceof StorageError) return err.kind;
  const e = err as ErrorLike;
  const code = typeof e.code === 'string' ? e.code : undefined;
  if (code) {
    if (NOT_FOUND_CODES.has(code)) return 'not-found';
    if (AUTH_CODES.has(code)) return 'auth';
    if (TRANSIENT_CODES.has(code)) return 'transient';
    if (PERMANENT_CODES.has(code)) return 'permanent';
  }
  const status = typeof e.statusCode === 'number' ? e.statusCode : typeof e.status === 'number' ? e.status : undefined;
  const byStatus = status !== undefined ? kindOfStatus(status) : undefined;
  if (byStatus) return byStatus;
  if (typeof e.message === 'string' && TRANSIENT_MESSAGE.test(e.message)) return 'transient';
  const byCause = depth < 3 ? classify(e.cause, depth + 1) : undefined;
  if (byCause) return byCause;
  if (typeof e.name === 'string' && PERMANENT_NAMES.has(e.name)) return 'permanent';
  return undefined;
}

/** True when `err` says the object does not exist ({@link classifyStorageError} is `not-found`). */
export function isNotFound(err: unknown): boolean {
  return classifyStorageError(err) === 'not-found';
}

/** True when the server no longer knows a multipart upload id (it was aborted, completed, or lost in a restart). */
export function isUploadLost(err: unknown): boolean {
  return (err as ErrorLike | undefined)?.code === 'NoSuchUpload';
}

/** Base class of the errors the object store throws; `kind` says which of the four it is. */
export class StorageError extends Error {
  override name: string = 'StorageError';
  /** The S3 error code or Node error code of the original error, when it had one. */
  readonly code?: string;
  constructor(
    message: string,
    readonly kind: StorageErrorKind,
    options: { cause?: unknown; code?: string } = {},
  ) {
    super(message, { cause: options.cause });
    const code = options.code ?? (options.cause as ErrorLike | undefined)?.code;
    if (typeof code === 'string') this.code = code;
  }
}

/**
 * The object does not exist. Causes: `NoSuchKey` (GET), `NotFound` (HEAD,
 * which has no body to say more), `NoSuchVersion`, an HTTP 404; an object a
 * concurrent delete (retention, `tanren submit --reuse`) removed.
 */
export class ObjectNotFoundError extends StorageError {
  override name = 'ObjectNotFoundError' as const;
  constructor(message: string, options: { cause?: unknown; code?: string } = {}) {
    super(message, 'not-found', options);
  }
}

/**
 * The store refused the credentials or the operation. Causes: a wrong access
 * key (`InvalidAccessKeyId`) or secret (`SignatureDoesNotMatch`), a user whose
 * policy does not cover the bucket or the action (`AccessDenied`, HTTP 403),
 * an expired token.
 */
export class StorageAuthError extends StorageError {
  override name = 'StorageAuthError' as const;
  constructor(message: string, options: { cause?: unknown; code?: string } = {}) {
    super(message, 'auth', options);
  }
}

/**
 * The store could not be reached or could not answer now. Causes: nothing
 * listening (`ECONNREFUSED`), a dropped keep-alive socket (`ECONNRESET`,
 * `EPIPE`, socket hang up), a timeout, a DNS failure, a server starting up
 * (`XMinioServerNotInitialized`), throttling (`SlowDown`, HTTP 429/503), an
 * internal error (HTTP 5xx), or a failure nothing above recognises.
 */
export class StorageUnavailableError extends StorageError {
  override name = 'StorageUnavailableError' as const;
  constructor(message: string, options: { cause?: unknown; code?: string } = {}) {
    super(message, 'transient', options);
  }
}

/**
 * The request cannot succeed as made. Causes: the bucket does not exist
 * (`NoSuchBucket`), a bad bucket or object name, a multipart upload id the
 * server no longer knows (`NoSuchUpload`), a part too small or out of order,
 * a local file error (`ENOENT`, `ENOSPC`, `EACCES`…), cancellation, a bug.
 */
export class StorageRequestError extends StorageError {
  override name = 'StorageRequestError' as const;
  constructor(message: string, options: { cause?: unknown; code?: string } = {}) {
    super(message, 'permanent', options);
  }
}

/** The named error of `err`'s kind, with the same message, its `code`, and `err` as cause; a {@link StorageError} is returned as it is. */
export function toStorageError(err: unknown): StorageError {
  if (err instanceof StorageError) return err;
  const e = err as ErrorLike | undefined;
  const message = typeof e?.message === 'string' && e.message ? e.message : typeof e?.code === 'string' ? e.code : String(err);
  const options = { cause: err };
  switch (classifyStorageError(err)) {
    case 'not-found':
      return new ObjectNotFoundError(message, options);
    case 'auth':
      return new StorageAuthError(message, options);
    case 'transient':
      return new StorageUnavailableError(message, options);
    case 'permanent':
      return new StorageRequestError(message, options);
  }
}
