/**
 * The storage layer without services: the error classifier over fabricated
 * minio-js, S3 and socket errors, the named error classes, and the retry
 * policies' limits, delays and pass-through of errors they do not retry.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ApplicationFailure } from '@temporalio/common';
import { InvalidArgumentError, InvalidObjectNameError, S3Error } from 'minio';
import {
  classifyStorageError,
  isNotFound,
  isUploadLost,
  ObjectNotFoundError,
  StorageAuthError,
  StorageError,
  StorageRequestError,
  StorageUnavailableError,
  toStorageError,
  type StorageErrorKind,
} from '../../activities/storage/errors.js';
import { storageFailure } from '../../activities/errors.js';
import { checkpointKeys, keys, manifestObjectKey, outputKeys } from '../../activities/storage/keys.js';
import { isRetryable, resolveRetryOptions, retry, retryDelay, RETRY_POLICIES } from '../../activities/storage/retry.js';

/** An S3 error reply as minio-js throws it. */
function s3Error(code: string, message = `${code} (fabricated)`): S3Error {
  const e = new S3Error(message);
  (e as S3Error & { code: string }).code = code;
  return e;
}

/** A Node socket error. */
function sysError(code: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`connect ${code} 127.0.0.1:9000`), { code, syscall: 'connect' });
}

describe('classifyStorageError', () => {
  const cases: Array<[string, unknown, StorageErrorKind]> = [
    ['NoSuchKey (GET of a missing object)', s3Error('NoSuchKey'), 'not-found'],
    ['NotFound (HEAD of a missing object)', s3Error('NotFound'), 'not-found'],
    ['AccessDenied', s3Error('AccessDenied'), 'auth'],
    ['InvalidAccessKeyId', s3Error('InvalidAccessKeyId'), 'auth'],
    ['SignatureDoesNotMatch', s3Error('SignatureDoesNotMatch'), 'auth'],
    ['SlowDown', s3Error('SlowDown'), 'transient'],
    ['InternalError', s3Error('InternalError'), 'transient'],
    ['XMinioServerNotInitialized (a restarting MinIO)', s3Error('XMinioServerNotInitialized'), 'transient'],
    ["minio-js's 503 it gave up on", new Error('Request failed after 0 retries: Error: Retryable HTTP status: 503'), 'transient'],
    ['an HTTP 503 status', Object.assign(new Error('unavailable'), { statusCode: 503 }), 'transient'],
    ['an HTTP 429 status', Object.assign(new Error('too many'), { status: 429 }), 'transient'],
    ['an HTTP 404 status', Object.assign(new Error('gone'), { statusCode: 404 }), 'not-found'],
    ['an HTTP 403 status', Object.assign(new Error('no'), { statusCode: 403 }), 'auth'],
    ['ECONNRESET', sysError('ECONNRESET'), 'transient'],
    ['ECONNREFUSED', sysError('ECONNREFUSED'), 'transient'],
    ['EPIPE', sysError('EPIPE'), 'transient'],
    ['ETIMEDOUT', sysError('ETIMEDOUT'), 'transient'],
    ['socket hang up without a code', new Error('socket hang up'), 'transient'],
    ['fetch failed with the socket error as cause', new TypeError('fetch failed', { cause: sysError('ECONNREFUSED') }), 'transient'],
    ['NoSuchBucket', s3Error('NoSuchBucket'), 'permanent'],
    ['NoSuchUpload', s3Error('NoSuchUpload'), 'permanent'],
    ['EntityTooSmall', s3Error('EntityTooSmall'), 'permanent'],
    ['ENOENT of a local file', Object.assign(new Error('no such file'), { code: 'ENOENT' }), 'permanent'],
    ['ENOSPC of a local file', Object.assign(new Error('disk full'), { code: 'ENOSPC' }), 'permanent'],
    ["minio-js's argument check", new InvalidArgumentError('bad argument'), 'permanent'],
    ['an ApplicationFailure', ApplicationFailure.nonRetryable('bad output', 'InvalidStageOutput'), 'permanent'],
    ['a bug (TypeError)', new TypeError('x is not a function'), 'permanent'],
    ['an unrecognised failure', new Error('something odd'), 'transient'],
    ['a thrown string', 'odd', 'transient'],
  ];
  for (const [what, err, kind] of cases) {
    it(`${what} → ${kind}`, () => assert.equal(classifyStorageError(err), kind));
  }

  it('isNotFound and isUploadLost', () => {
    assert.equal(isNotFound(s3Error('NoSuchKey')), true);
    assert.equal(isNotFound(s3Error('NoSuchBucket')), false, 'a missing bucket is a configuration error, not an absent object');
    assert.equal(isNotFound(new ObjectNotFoundError('gone')), true);
    assert.equal(isUploadLost(s3Error('NoSuchUpload')), true);
    assert.equal(isUploadLost(s3Error('NoSuchKey')), false);
  });
});

describe('named storage errors', () => {
  it('toStorageError keeps the message and code, names the kind, and keeps the original as cause', () => {
    const cases: Array<[unknown, new (...a: never[]) => StorageError, string]> = [
      [s3Error('NoSuchKey'), ObjectNotFoundError, 'ObjectNotFoundError'],
      [s3Error('SignatureDoesNotMatch'), StorageAuthError, 'StorageAuthError'],
      [sysError('ECONNREFUSED'), StorageUnavailableError, 'StorageUnavailableError'],
      [s3Error('NoSuchBucket'), StorageRequestError, 'StorageRequestError'],
    ];
    for (const [original, cls, name] of cases) {
      const e = toStorageError(original);
      assert.ok(e instanceof cls && e instanceof StorageError && e instanceof Error, name);
      assert.equal(e.name, name);
      assert.equal(e.message, (original as Error).message);
      assert.equal(e.code, (original as { code: string }).code);
      assert.equal(e.cause, original);
      assert.equal(classifyStorageError(e), e.kind, 'a named error classifies as its own kind');
    }
  });

  it('a named error is returned as it is', () => {
    const e = new StorageAuthError('these credentials may not use bucket "x"');
    assert.equal(toStorageError(e), e);
  });
});

describe('retry policies', () => {
  const quick = { firstDelayMs: 1, maxDelayMs: 2 };

  it('every policy is documented by its limits: attempts or a time budget', () => {
    for (const name of Object.keys(RETRY_POLICIES) as Array<keyof typeof RETRY_POLICIES>) {
      const o = resolveRetryOptions(name);
      assert.ok(Number.isFinite(o.attempts) || Number.isFinite(o.totalMs), `${name} is bounded`);
    }
  });

  it('transient: 3 tries, 100 ms then 200 ms; retries network and 5xx errors, not missing objects or refused credentials', () => {
    assert.deepEqual(
      [1, 2].map((n) => retryDelay('transient', n)),
      [100, 200],
    );
    assert.equal(resolveRetryOptions('transient').attempts, 3);
    assert.equal(isRetryable('transient', sysError('ECONNRESET')), true);
    assert.equal(isRetryable('transient', s3Error('SlowDown')), true);
    assert.equal(isRetryable('transient', s3Error('NoSuchKey')), false);
    assert.equal(isRetryable('transient', s3Error('AccessDenied')), false);
  });

  it('outage: 250 ms doubling to 5 s, 90 s in all; never retries not-found (the old storage retry waited 90 s on a NoSuchKey)', () => {
    assert.deepEqual(
      [1, 2, 3, 4, 5, 6, 7].map((n) => retryDelay('outage', n)),
      [250, 500, 1000, 2000, 4000, 5000, 5000],
    );
    assert.equal(resolveRetryOptions('outage').totalMs, 90_000);
    assert.equal(isRetryable('outage', s3Error('NoSuchKey')), false);
    assert.equal(isRetryable('outage', sysError('ECONNREFUSED')), true);
  });

  it('transfer: 8 tries, 0.5 s doubling to 10 s, ±20 % jitter', () => {
    assert.equal(resolveRetryOptions('transfer').attempts, 8);
    assert.equal(
      retryDelay('transfer', 1, () => 0.5),
      500,
    );
    assert.equal(
      retryDelay('transfer', 1, () => 0),
      400,
    );
    assert.equal(
      retryDelay('transfer', 1, () => 1),
      600,
    );
    assert.equal(
      retryDelay('transfer', 10, () => 0.5),
      10_000,
    );
    assert.equal(isRetryable('transfer', s3Error('NoSuchUpload')), false, 'a lost upload id is for the multipart policy');
  });

  it('eventual-read retries only not-found, for at most 10 s; multipart only a lost upload id, at once', () => {
    assert.equal(resolveRetryOptions('eventual-read').totalMs, 10_000);
    assert.equal(isRetryable('eventual-read', s3Error('NoSuchKey')), true);
    assert.equal(isRetryable('eventual-read', sysError('ECONNRESET')), false, 'outages are the enclosing policy’s');
    assert.equal(isRetryable('multipart', s3Error('NoSuchUpload')), true);
    assert.equal(isRetryable('multipart', sysError('ECONNRESET')), false);
    assert.equal(retryDelay('multipart', 1), 0);
  });

  it('retries until it succeeds, calling onRetry before each wait', async () => {
    const seen: Array<[number, number]> = [];
    let calls = 0;
    const out = await retry(
      async (attempt) => {
        calls++;
        if (attempt < 3) throw sysError('ECONNRESET');
        return 'ok';
      },
      { policy: 'transient', ...quick, onRetry: (attempt, _err, delay) => seen.push([attempt, delay]) },
    );
    assert.equal(out, 'ok');
    assert.equal(calls, 3);
    assert.deepEqual(seen, [
      [1, 1],
      [2, 2],
    ]);
  });

  it('throws the last error as it was once the attempts run out', async () => {
    let calls = 0;
    const last = sysError('ECONNREFUSED');
    await assert.rejects(
      retry(
        async () => {
          calls++;
          throw last;
        },
        { policy: 'transfer', ...quick, jitter: 0, attempts: 4 },
      ),
      (err) => err === last,
    );
    assert.equal(calls, 4);
  });

  it('passes an error the policy does not retry through at once', async () => {
    for (const err of [s3Error('NoSuchKey'), s3Error('AccessDenied'), s3Error('NoSuchBucket'), new TypeError('bug')]) {
      let calls = 0;
      await assert.rejects(
        retry(async () => {
          calls++;
          throw err;
        }, 'outage'),
        (e) => e === err,
      );
      assert.equal(calls, 1, `${err.message}: one try`);
    }
  });

  it('gives up when the next wait would end past totalMs', async () => {
    let calls = 0;
    const started = Date.now();
    await assert.rejects(
      retry(
        async () => {
          calls++;
          throw sysError('ECONNREFUSED');
        },
        { policy: 'outage', totalMs: 60, firstDelayMs: 20, maxDelayMs: 20 },
      ),
    );
    assert.ok(calls >= 2 && calls <= 4, `${calls} tries in a 60 ms budget of 20 ms waits`);
    assert.ok(Date.now() - started < 1000);
  });

  it('nests: eventual-read inside outage retries a late object and an outage, each under its own limits', async () => {
    const script = [sysError('ECONNRESET'), s3Error('NoSuchKey'), s3Error('NoSuchKey')];
    let calls = 0;
    const out = await retry(
      () =>
        retry(
          async () => {
            const next = script[calls++];
            if (next) throw next;
            return 'manifest';
          },
          { policy: 'eventual-read', ...quick },
        ),
      { policy: 'outage', ...quick },
    );
    assert.equal(out, 'manifest');
    assert.equal(calls, 4);
  });

  it('the multipart policy starts a lost upload again at most twice', async () => {
    let calls = 0;
    await assert.rejects(
      retry(async () => {
        calls++;
        throw s3Error('NoSuchUpload');
      }, 'multipart'),
      (e) => isUploadLost(e),
    );
    assert.equal(calls, 3);
  });
});

describe('object keys', () => {
  it('lay out a run as documented', () => {
    assert.equal(keys.manifest('r', 's'), 'runs/r/s/manifest.json');
    assert.equal(keys.log('r', 's', 2), 'runs/r/s/logs/attempt-2.log');
    assert.equal(keys.logs('r', 's'), 'runs/r/s/logs/');
    assert.equal(outputKeys.attempt('r', 's', 1, 'abcd1234'), 'runs/r/s/attempts/1-abcd1234/outputs/');
    assert.equal(checkpointKeys.manifest('r', 's', 'step-1'), 'runs/r/s/checkpoints/step-1/manifest.json');
    assert.ok(checkpointKeys.files('r', 's', 'step-1').startsWith(checkpointKeys.root('r', 's')));
    assert.equal(manifestObjectKey({ runId: 'r', stage: 's' }, { path: 'a.txt', size: 1, sha256: 'x' }), 'runs/r/s/outputs/a.txt');
  });
});

describe('storageFailure: what a stage attempt fails as when the store fails', () => {
  it('refused credentials are the worker’s configuration (WorkerMisconfigured), anything else StorageUnavailable; both retried', () => {
    const auth = storageFailure('downloading inputs', new StorageAuthError('Access Denied.', { code: 'AccessDenied' }));
    assert.equal(auth.type, 'WorkerMisconfigured');
    assert.equal(auth.nonRetryable, false);
    assert.match(auth.message, /refused this worker's credentials while downloading inputs.*Access Denied\./);
    const down = storageFailure('uploading outputs', new StorageUnavailableError('connect ECONNREFUSED', { code: 'ECONNREFUSED' }));
    assert.equal(down.type, 'StorageUnavailable');
    assert.equal(down.nonRetryable, false);
    assert.match(down.message, /unavailable while uploading outputs: connect ECONNREFUSED/);
  });

  it("a full or read-only local disk is the worker host's (WorkerMisconfigured); a request the store refuses is not called an outage", () => {
    const full = storageFailure('downloading x for stage "pretrain"', sysError('ENOSPC'));
    assert.equal(full.type, 'WorkerMisconfigured');
    assert.equal(full.nonRetryable, false);
    assert.match(full.message, /this worker's disk refused a file while downloading x for stage "pretrain".*TANREN_WORK_DIR.*ENOSPC/);
    const bad = storageFailure('uploading outputs', new InvalidObjectNameError('Invalid object name: undefined'));
    assert.equal(bad.type, 'StorageUnavailable');
    assert.match(bad.message, /^object storage call failed while uploading outputs: Invalid object name: undefined$/);
    // A vanished local file is no disk problem of the host's.
    assert.match(storageFailure('uploading outputs', sysError('ENOENT')).message, /^object storage call failed/);
  });
});
