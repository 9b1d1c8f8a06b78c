/**
 * The workers' MinIO user that `infra/dev up` creates (with the same set-up
 * script as production, infra/production/minio/setup.sh): the credentials the
 * services' env points at reach the objects of the bucket and nothing else,
 * and the root account stays out of the env.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { before, describe, it } from 'node:test';
import type * as Minio from 'minio';
import { createMinioClient, type ObjectStoreConfig } from '../../activities/storage/client.js';
import { createMultipartClient } from '../../activities/storage/multipart.js';
import { createObjectStore } from '../../activities/storage/store.js';
import { readEnvFile, s3Credentials, type TanrenEnv } from '../../worker/config.js';
import { servicesEnv, stateDir, unique } from '../helpers/env.js';

/** The S3 error code of a refused request, for assert.rejects. */
function refusedWith(code: string) {
  return (err: unknown) => {
    assert.equal((err as { code?: string }).code, code, `expected ${code}, got ${String(err)}`);
    return true;
  };
}

/** The root account `infra/dev up` keeps in the state directory, if these services are ours. */
function rootAccount(): { user: string; password: string; file: string } | undefined {
  const file = path.join(stateDir(), 'minio.credentials');
  if (!existsSync(file)) return undefined;
  const vars = readEnvFile(file);
  if (!vars.MINIO_ROOT_USER || !vars.MINIO_ROOT_PASSWORD) return undefined;
  return { user: vars.MINIO_ROOT_USER, password: vars.MINIO_ROOT_PASSWORD, file };
}

describe("the workers' MinIO user", () => {
  let env: TanrenEnv;
  let s3: ObjectStoreConfig;
  let worker: Minio.Client;
  before(() => {
    env = servicesEnv();
    s3 = { endpoint: env.TANREN_S3_ENDPOINT, bucket: env.TANREN_BUCKET, region: env.TANREN_S3_REGION, ...s3Credentials(env) };
    worker = createMinioClient(s3);
  });

  it('starts like a worker (ensureBucket on the existing bucket), puts, lists, gets and deletes objects', async () => {
    const storage = createObjectStore(s3);
    await storage.ensureBucket();
    const prefix = `${unique('minio-user')}/`;
    await storage.putText(`${prefix}a.json`, '{"ok":true}');
    assert.equal(await storage.getText(`${prefix}a.json`), '{"ok":true}');
    assert.deepEqual(
      (await storage.list(prefix)).map((o) => o.key),
      [`${prefix}a.json`],
    );
    await storage.remove([`${prefix}a.json`]);
    assert.equal(await storage.stat(`${prefix}a.json`), undefined);
  });

  it('uploads in parts (multipart, as checkpoints do), aborts an upload, reads the object back', async () => {
    const tmp = mkdtempSync(path.join(os.tmpdir(), 'tanren-minio-user-'));
    const key = `${unique('minio-user')}/big.bin`;
    const client = createMinioClient(s3);
    try {
      const file = path.join(tmp, 'big.bin');
      writeFileSync(file, Buffer.alloc(6 * 1024 * 1024, 7));
      await createMultipartClient(s3).uploadFile(key, file, { partSize: 5 * 1024 * 1024 });
      const stat = await client.statObject(s3.bucket, key);
      assert.equal(stat.size, 6 * 1024 * 1024);
      assert.match(stat.etag, /-2$/, 'a multipart object of two parts'); // its ETag ends in -<parts>
      const uploadId = await client.initiateNewMultipartUpload(s3.bucket, `${key}.aborted`, {});
      await client.abortMultipartUpload(s3.bucket, `${key}.aborted`, uploadId);
    } finally {
      await client.removeObject(s3.bucket, key);
      rmSync(tmp, { recursive: true, force: true });
    }
  });

  it('may not create or delete buckets (AccessDenied)', async () => {
    await assert.rejects(worker.makeBucket(unique('tanren-denied'), s3.region ?? 'us-east-1'), refusedWith('AccessDenied'));
    await assert.rejects(worker.removeBucket(s3.bucket), refusedWith('AccessDenied'));
    assert.equal(await worker.bucketExists(s3.bucket), true);
  });

  it('cannot reach another bucket', async () => {
    const root = rootAccount();
    assert.ok(root, `no MinIO root credentials in ${stateDir()}: start the services with infra/dev (make test does)`);
    const admin = createMinioClient({ ...s3, accessKey: root.user, secretKey: root.password });
    const other = unique('tanren-other');
    await admin.makeBucket(other, s3.region ?? 'us-east-1');
    try {
      await admin.putObject(other, 'x', Buffer.from('root'));
      await assert.rejects(worker.putObject(other, 'y', Buffer.from('worker')), refusedWith('AccessDenied'));
      await assert.rejects(worker.statObject(other, 'x'), (err: unknown) =>
        ['AccessDenied', 'Forbidden', 'NotFound'].includes((err as { code?: string }).code ?? ''),
      );
      await assert.rejects(worker.removeObject(other, 'x'), refusedWith('AccessDenied'));
    } finally {
      await admin.removeObjects(other, ['x', 'y']); // 'y' only if the worker's put was let through
      await admin.removeBucket(other);
    }
  });

  it("the env points at the workers' credentials, and the root account is in neither", () => {
    const root = rootAccount();
    assert.ok(root, `no MinIO root credentials in ${stateDir()}: start the services with infra/dev (make test does)`);
    const envFile = path.join(stateDir(), 'env');
    const envText = readFileSync(envFile, 'utf8');
    assert.ok(!envText.includes(root.password), `${envFile} holds the MinIO root secret`);
    assert.ok(!envText.includes('TANREN_S3_SECRET_KEY'), `${envFile} names files, it holds no secret`);
    const credFile = readEnvFile(envFile).TANREN_S3_CREDENTIALS_FILE;
    assert.ok(credFile, `${envFile} sets TANREN_S3_CREDENTIALS_FILE`);
    assert.notEqual(path.resolve(credFile), path.resolve(root.file));
    const credText = readFileSync(credFile, 'utf8');
    assert.ok(!credText.includes(root.password), `${credFile} holds the MinIO root secret`);
    assert.notEqual(readEnvFile(credFile).TANREN_S3_ACCESS_KEY, root.user);
    assert.notEqual(s3.accessKey, root.user);
    for (const file of [credFile, root.file]) {
      assert.equal(statSync(file).mode & 0o777, 0o600, `${file} is mode 0600`);
    }
  });
});
