/** Checkpoint upload, retention, verified restore and multipart transfers, against the real local MinIO. */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { CheckpointCorruptError, type CheckpointManifest, CheckpointUploadError, listCheckpoints } from '../../activities/checkpoints/manifest.js';
import { downloadCheckpoint, restoreLatestCheckpoint } from '../../activities/checkpoints/restore.js';
import { runUploadProcess, UPLOAD_MAIN, type UploadJob } from '../../activities/checkpoints/upload-process.js';
import { createCheckpointUploader } from '../../activities/checkpoints/uploader.js';
import { sha256File } from '../../activities/files.js';
import { createMinioClient, type ObjectStoreConfig } from '../../activities/storage/client.js';
import { checkpointKeys } from '../../activities/storage/keys.js';
import { createMultipartClient, defaultPartConcurrency } from '../../activities/storage/multipart.js';
import { createObjectStore, type ObjectStore } from '../../activities/storage/store.js';
import { s3Credentials } from '../../worker/config.js';
import { servicesEnv, unique } from '../helpers/env.js';

const FAST_RETRY = { attempts: 4, firstDelayMs: 5, maxDelayMs: 20 };

/** Records the order of writes and deletes; `failPut` decides per call whether putFile throws. */
function recordingStore(inner: ObjectStore, calls: string[], failPut?: (key: string) => boolean): ObjectStore {
  return {
    ...inner,
    bucket: inner.bucket,
    endpoint: inner.endpoint,
    putFile: async (key, file) => {
      if (failPut?.(key)) {
        calls.push(`fail ${key}`);
        throw Object.assign(new Error(`connect ECONNREFUSED (injected) for ${key}`), { code: 'ECONNREFUSED' });
      }
      calls.push(`put ${key}`);
      await inner.putFile(key, file);
    },
    putText: async (key, text, ct) => {
      calls.push(`put ${key}`);
      await inner.putText(key, text, ct);
    },
    remove: async (keys) => {
      for (const k of keys) calls.push(`remove ${k}`);
      await inner.remove(keys);
    },
  };
}

/** Writes a small checkpoint directory `<root>/<name>` with model/optimizer/rng files. */
async function writeCheckpoint(root: string, name: string, seed: string): Promise<void> {
  const dir = path.join(root, name);
  await mkdir(path.join(dir, 'model'), { recursive: true });
  await writeFile(path.join(dir, 'model', 'weights.bin'), Buffer.concat([Buffer.from(seed), randomBytes(64 * 1024)]));
  await writeFile(path.join(dir, 'optimizer.bin'), randomBytes(32 * 1024));
  await writeFile(path.join(dir, 'rng.json'), JSON.stringify({ seed }));
}

describe('checkpoints', () => {
  let storage: ObjectStore;
  let s3: ObjectStoreConfig;
  let tmp: string;
  const runs: string[] = [];
  const newRun = () => {
    const r = unique('ckpt');
    runs.push(r);
    return r;
  };

  before(async () => {
    const env = servicesEnv();
    s3 = { endpoint: env.TANREN_S3_ENDPOINT, bucket: env.TANREN_BUCKET, ...s3Credentials(env) };
    storage = createObjectStore(s3);
    await storage.ensureBucket();
    tmp = mkdtempSync(path.join(os.tmpdir(), 'tanren-ckpt-'));
  });
  after(async () => {
    for (const r of runs) {
      const objs = await storage.list(`runs/${r}/`);
      await storage.remove(objs.map((o) => o.key));
    }
    await rm(tmp, { recursive: true, force: true });
  });

  it('publishes quickly announced checkpoints in order, manifests last, and keeps the newest K', async () => {
    const runId = newRun();
    const dir = path.join(tmp, runId);
    const names = [1, 2, 3, 4, 5].map((i) => `step-${String(i * 100).padStart(6, '0')}`);
    for (const n of names) await writeCheckpoint(dir, n, n);
    const calls: string[] = [];
    const up = createCheckpointUploader({ storage: recordingStore(storage, calls), runId, stage: 'train', checkpointsDir: dir, keep: 2, retry: FAST_RETRY });
    const t0 = Date.now();
    names.forEach((n, i) => up.announce({ path: n, step: (i + 1) * 100 }));
    assert.ok(Date.now() - t0 < 50, 'announce must not wait for uploads');
    assert.equal(up.latest(), undefined);
    await up.flush();

    assert.deepEqual(
      up.published().map((r) => r.step),
      [100, 200, 300, 400, 500],
    );
    assert.deepEqual(up.latest(), { key: checkpointKeys.manifest(runId, 'train', names[4]), path: names[4], step: 500 });
    // Order: each checkpoint's files, then its manifest, checkpoints one after the other.
    const puts = calls.filter((c) => c.startsWith('put '));
    for (const [i, n] of names.entries()) {
      const own = puts.map((c, j) => [c, j] as const).filter(([c]) => c.includes(`/checkpoints/${n}/`));
      assert.equal(own.length, 4, `${n}: 3 files + manifest`);
      assert.ok(own.at(-1)![0].endsWith(`${n}/manifest.json`), `${n}: manifest written last`);
      if (i > 0) {
        const prevManifest = puts.indexOf(`put ${checkpointKeys.manifest(runId, 'train', names[i - 1])}`);
        assert.ok(own[0][1] > prevManifest, `${n} starts after ${names[i - 1]} is published`);
      }
    }
    // Retention: newest 2 remain; deleted ones lost their manifest before their files.
    const listed = await listCheckpoints(storage, runId, 'train');
    assert.deepEqual(
      listed.map((r) => r.path),
      [names[4], names[3]],
    );
    for (const n of names.slice(0, 3)) {
      assert.deepEqual(await storage.list(checkpointKeys.checkpoint(runId, 'train', n)), [], `${n} fully deleted`);
      const rmManifest = calls.indexOf(`remove ${checkpointKeys.manifest(runId, 'train', n)}`);
      const rmFile = calls.indexOf(`remove ${checkpointKeys.files(runId, 'train', n)}rng.json`);
      assert.ok(rmManifest >= 0 && rmManifest < rmFile, `${n}: manifest removed first`);
    }
    const manifest = JSON.parse(await storage.getText(listed[0].key)) as CheckpointManifest;
    assert.equal(manifest.step, 500);
    assert.deepEqual(
      manifest.files.map((f) => f.path),
      ['model/weights.bin', 'optimizer.bin', 'rng.json'],
    );
    assert.equal(manifest.files[1].sha256, await sha256File(path.join(dir, names[4], 'optimizer.bin')));
  });

  it('restores the newest intact checkpoint, skipping a tampered one with the reason, and honours the hint', async () => {
    const runId = newRun();
    const dir = path.join(tmp, runId);
    for (const n of ['step-000010', 'step-000020']) await writeCheckpoint(dir, n, n);
    const up = createCheckpointUploader({ storage, runId, stage: 'train', checkpointsDir: dir, keep: 3, retry: FAST_RETRY });
    up.announce({ path: 'step-000010', step: 10 });
    up.announce({ path: 'step-000020', step: 20 });
    await up.flush();
    const [newest, older] = await listCheckpoints(storage, runId, 'train');
    assert.equal(newest.step, 20);

    const restoreRoot = path.join(tmp, `${runId}-restore`);
    const clean = await restoreLatestCheckpoint(storage, runId, 'train', restoreRoot);
    assert.equal(clean?.ref.step, 20);
    assert.deepEqual(clean?.skipped, []);
    assert.equal(await readFile(path.join(clean.dir, 'rng.json'), 'utf8'), JSON.stringify({ seed: 'step-000020' }));

    // Tamper with the newest checkpoint's optimizer in MinIO.
    const tampered = `${checkpointKeys.files(runId, 'train', 'step-000020')}optimizer.bin`;
    await storage.putText(tampered, 'not the optimizer', 'application/octet-stream');
    const goodDigest = await sha256File(path.join(dir, 'step-000020', 'optimizer.bin'));
    await assert.rejects(downloadCheckpoint(storage, newest, path.join(tmp, `${runId}-direct`)), (err: Error) => {
      assert.ok(err instanceof CheckpointCorruptError);
      assert.equal(err.name, 'CheckpointCorruptError');
      assert.match(err.message, new RegExp(tampered.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));
      assert.ok(err.message.includes(goodDigest), 'names the expected digest');
      assert.match(err.message, /sha256 [0-9a-f]{64} .* says sha256 [0-9a-f]{64}/);
      return true;
    });
    const restored = await restoreLatestCheckpoint(storage, runId, 'train', restoreRoot, newest);
    assert.equal(restored?.ref.path, 'step-000010');
    assert.equal(restored?.skipped.length, 1);
    assert.equal(restored?.skipped[0].ref.path, 'step-000020');
    assert.match(restored.skipped[0].reason, /optimizer\.bin has sha256/);
    assert.equal(await readFile(path.join(restored.dir, 'rng.json'), 'utf8'), JSON.stringify({ seed: 'step-000010' }));

    // An older hint does not hide a newer checkpoint (a worker can die after an upload, before heartbeating it):
    // the newest is tried first, here found tampered, then the hint. A hint whose manifest is gone is ignored.
    const hinted = await restoreLatestCheckpoint(storage, runId, 'train', restoreRoot, older);
    assert.equal(hinted?.ref.path, 'step-000010');
    assert.deepEqual(
      hinted?.skipped.map((k) => k.ref.path),
      ['step-000020'],
    );
    const gone = { key: checkpointKeys.manifest(runId, 'train', 'step-000005'), path: 'step-000005', step: 5 };
    const fallback = await restoreLatestCheckpoint(storage, runId, 'train', restoreRoot, gone);
    assert.equal(fallback?.ref.path, 'step-000010');
    assert.equal(await restoreLatestCheckpoint(storage, newRun(), 'train', restoreRoot), undefined);
  });

  it('round-trips a 40 MiB file as a parallel multipart upload with the right sha256', async () => {
    const runId = newRun();
    const dir = path.join(tmp, runId);
    await writeCheckpoint(dir, 'step-000001', 'big');
    const big = path.join(dir, 'step-000001', 'model', 'big.safetensors');
    await writeFile(big, randomBytes(40 * 1024 * 1024));
    const expected = await sha256File(big);
    const up = createCheckpointUploader({
      storage,
      runId,
      stage: 'train',
      checkpointsDir: dir,
      keep: 1,
      s3,
      multipart: { partSize: 16 * 1024 * 1024, concurrency: 4 },
      retry: FAST_RETRY,
    });
    up.announce({ path: 'step-000001', step: 1 });
    await up.flush();
    const ref = up.latest()!;
    const manifest = JSON.parse(await storage.getText(ref.key)) as CheckpointManifest;
    assert.equal(manifest.files.find((f) => f.path === 'model/big.safetensors')?.sha256, expected);
    const stat = await createMinioClient(s3).statObject(s3.bucket, `${manifest.prefix}model/big.safetensors`);
    assert.match(stat.etag, /-3$/, 'stored as a 3-part multipart object');
    for (const opts of [{}, { s3 }]) {
      const got = await downloadCheckpoint(storage, ref, path.join(tmp, `${runId}-dl`), opts);
      assert.equal(await sha256File(path.join(got, 'model', 'big.safetensors')), expected);
    }
  });

  it('retries only the failed part after a dropped connection, and restarts an upload whose id was lost', async () => {
    const runId = newRun();
    const file = path.join(tmp, `${runId}.bin`);
    await writeFile(file, randomBytes(12 * 1024 * 1024));
    const client = createMinioClient(s3);
    const partCalls: number[] = [];
    let initiated = 0;
    let failComplete = true;
    const realUploadPart = client.uploadPart.bind(client);
    const realInitiate = client.initiateNewMultipartUpload.bind(client);
    const realComplete = client.completeMultipartUpload.bind(client);
    client.uploadPart = async (cfg, payload) => {
      partCalls.push(cfg.partNumber);
      if (cfg.partNumber === 2 && partCalls.filter((n) => n === 2).length === 1) {
        throw Object.assign(new Error('socket hang up (injected)'), { code: 'ECONNRESET' });
      }
      return realUploadPart(cfg, payload);
    };
    client.initiateNewMultipartUpload = async (...args) => {
      initiated++;
      return realInitiate(...args);
    };
    client.completeMultipartUpload = async (bucket, key, uploadId, etags) => {
      if (failComplete) {
        failComplete = false;
        await client.abortMultipartUpload(bucket, key, uploadId); // as if the server had lost it
      }
      return realComplete(bucket, key, uploadId, etags);
    };
    const retries: string[] = [];
    const mp = createMultipartClient(s3, client);
    const key = `runs/${runId}/mp/${path.basename(file)}`;
    const r = await mp.uploadFile(key, file, { partSize: 5 * 1024 * 1024, concurrency: 3, retry: FAST_RETRY, onRetry: (what) => retries.push(what) });
    assert.equal(r.sha256, await sha256File(file));
    assert.equal(r.parts, 3);
    assert.equal(initiated, 2, 'NoSuchUpload on complete starts the upload again');
    // Round 1: parts 1, 2 (fails), 3, 2 (retry); round 2: 1, 2, 3.
    assert.deepEqual([...partCalls.slice(0, 4)].sort(), [1, 2, 2, 3]);
    assert.deepEqual([...partCalls.slice(4)].sort(), [1, 2, 3]);
    assert.ok(
      retries.some((w) => w.includes('part 2')),
      retries.join(', '),
    );
    assert.ok(
      retries.some((w) => w.includes('upload id lost')),
      retries.join(', '),
    );
    const back = path.join(tmp, `${runId}.back`);
    await storage.getFile(key, back);
    assert.equal(await sha256File(back), r.sha256);
  });

  it('retries failed uploads with backoff and then publishes', async () => {
    const runId = newRun();
    const dir = path.join(tmp, runId);
    await writeCheckpoint(dir, 'step-000001', 'flaky');
    const calls: string[] = [];
    let failures = 3;
    const warnings: string[] = [];
    const up = createCheckpointUploader({
      storage: recordingStore(storage, calls, () => failures-- > 0),
      runId,
      stage: 'train',
      checkpointsDir: dir,
      keep: 2,
      retry: FAST_RETRY,
      log: { info: () => {}, warn: (m) => warnings.push(m) },
    });
    up.announce({ path: 'step-000001', step: 1 });
    await up.flush();
    assert.equal(calls.filter((c) => c.startsWith('fail ')).length, 3);
    assert.equal(up.latest()?.step, 1);
    assert.equal(warnings.filter((w) => w.includes('retrying')).length, 3);
    const ref = (await listCheckpoints(storage, runId, 'train'))[0];
    await downloadCheckpoint(storage, ref, path.join(tmp, `${runId}-dl`));
  });

  it('a permanent failure leaves no manifest, later checkpoints still publish, and flush() rejects', async () => {
    const runId = newRun();
    const dir = path.join(tmp, runId);
    for (const n of ['step-000001', 'step-000002', 'step-000003']) await writeCheckpoint(dir, n, n);
    const calls: string[] = [];
    const up = createCheckpointUploader({
      storage: recordingStore(storage, calls, (key) => key.includes('/step-000002/files/optimizer')),
      runId,
      stage: 'train',
      checkpointsDir: dir,
      keep: 5,
      retry: FAST_RETRY,
    });
    up.announce({ path: 'step-000001', step: 1 });
    up.announce({ path: 'step-000002', step: 2 });
    up.announce({ path: 'step-000003', step: 3 });
    up.announce({ path: '../escape', step: 4 });
    await assert.rejects(up.flush(), (err: Error) => {
      assert.ok(err instanceof CheckpointUploadError);
      assert.equal(err.name, 'CheckpointUploadError');
      assert.deepEqual(
        err.failures.map((f) => f.path),
        ['step-000002', '../escape'],
      );
      assert.match(err.message, /ECONNREFUSED/);
      return true;
    });
    assert.equal(calls.filter((c) => c.startsWith('fail ')).length, FAST_RETRY.attempts);
    assert.equal(await storage.stat(checkpointKeys.manifest(runId, 'train', 'step-000002')), undefined);
    assert.deepEqual(await storage.list(checkpointKeys.checkpoint(runId, 'train', 'step-000002')), [], 'partial files removed');
    assert.deepEqual(
      (await listCheckpoints(storage, runId, 'train')).map((r) => r.step),
      [3, 1],
    );
    assert.deepEqual(
      up.published().map((r) => r.step),
      [1, 3],
    );
  });
  /** Resolves once a multipart upload of `key` has been initiated (MinIO lists them by exact key only). */
  async function multipartStarted(key: string): Promise<void> {
    const client = createMinioClient(s3);
    for (let i = 0; i < 1200; i++) {
      const n = await new Promise<number>((resolve, reject) => {
        let found = 0;
        const st = client.listIncompleteUploads(s3.bucket, key, true);
        st.on('data', () => found++);
        st.on('end', () => resolve(found));
        st.on('error', reject);
      });
      if (n > 0) return;
      await new Promise((r) => setTimeout(r, 25));
    }
    assert.fail(`no multipart upload of ${key} began within 30 s`);
  }

  it('uploads in a separate process at nice 19 in its own deprioritised autogroup, with the same manifest as in-process', async () => {
    const runId = newRun();
    const dir = path.join(tmp, runId);
    await writeCheckpoint(dir, 'step-000001', 'child');
    await writeFile(path.join(dir, 'step-000001', 'model', 'big.safetensors'), randomBytes(12 * 1024 * 1024));
    const stats: Array<{ cpuSeconds: number; bytes: number }> = [];
    const manifests: CheckpointManifest[] = [];
    for (const uploadProcess of [true, false]) {
      const stage = uploadProcess ? 'child' : 'inline';
      const up = createCheckpointUploader({
        storage,
        runId,
        stage,
        checkpointsDir: dir,
        keep: 1,
        s3,
        uploadProcess,
        processThreshold: 0,
        retry: FAST_RETRY,
        multipartThreshold: 5 * 1024 * 1024,
        multipart: { partSize: 5 * 1024 * 1024 },
        onUploadStats: (s) => stats.push(s),
      });
      up.announce({ path: 'step-000001', step: 1 });
      await up.flush();
      manifests.push(JSON.parse(await storage.getText(up.latest()!.key)) as CheckpointManifest);
    }
    assert.equal(stats.length, 1, 'stats come from the upload process only');
    // Below the threshold (default 64 MiB) the same checkpoint goes up in this process: no upload process.
    const small = createCheckpointUploader({
      storage,
      runId,
      stage: 'small',
      checkpointsDir: dir,
      keep: 1,
      s3,
      retry: FAST_RETRY,
      onUploadStats: (s) => stats.push(s),
    });
    small.announce({ path: 'step-000001', step: 1 });
    await small.flush();
    assert.equal(stats.length, 1, 'a small checkpoint starts no upload process');
    assert.deepEqual((JSON.parse(await storage.getText(small.latest()!.key)) as CheckpointManifest).files, manifests[0].files);
    assert.ok(stats[0].cpuSeconds > 0 && stats[0].bytes > 12 * 1024 * 1024, JSON.stringify(stats));
    const strip = (m: CheckpointManifest) => m.files;
    assert.deepEqual(strip(manifests[0]), strip(manifests[1]));
    assert.deepEqual(
      manifests[0].files.map((f) => f.path),
      ['model/big.safetensors', 'model/weights.bin', 'optimizer.bin', 'rng.json'],
    );
    const etag = (await createMinioClient(s3).statObject(s3.bucket, `${manifests[0].prefix}model/big.safetensors`)).etag;
    assert.match(etag, /-3$/, 'multipart from the child');
    assert.ok(defaultPartConcurrency(2) <= 2 && defaultPartConcurrency(1) === 1 && defaultPartConcurrency(64) === 4);

    // Priority of the child, read from /proc while it runs.
    let seen: { nice: number; autogroup: string; sid: number } | undefined;
    const big = path.join(tmp, `${runId}-prio.bin`);
    await writeFile(big, randomBytes(24 * 1024 * 1024));
    await runUploadProcess(
      { s3, files: [{ key: `runs/${runId}/prio.bin`, file: big }], multipartThreshold: 5 * 1024 * 1024, partSize: 5 * 1024 * 1024, concurrency: 1 },
      {
        onSpawn: (pid) => {
          // Give nice/ionice time to exec node and node time to set its autogroup.
          const probe = setInterval(() => {
            try {
              const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
              const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
              const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
              const autogroup = readFileSync(`/proc/${pid}/autogroup`, 'utf8').trim();
              if (cmd.includes('upload-process-main') && autogroup.endsWith('nice 19')) {
                seen = { nice: Number(f[16]), autogroup, sid: Number(f[3]) };
                clearInterval(probe);
              }
            } catch {
              clearInterval(probe); // exited already
            }
          }, 5);
        },
      },
    );
    assert.ok(seen, 'the child was seen running with autogroup nice 19');
    assert.equal(seen.nice, 19);
    assert.notEqual(seen.sid, readFileSync('/proc/self/stat', 'utf8').split(') ')[1].split(' ')[3], 'own session');
  });

  it('cancellation kills the upload process: no manifest, flush rejects at once, queued checkpoints fail too', async () => {
    const runId = newRun();
    const dir = path.join(tmp, runId);
    for (const n of ['step-000001', 'step-000002']) {
      await writeCheckpoint(dir, n, n);
      await writeFile(path.join(dir, n, 'model', 'big.safetensors'), randomBytes(48 * 1024 * 1024));
    }
    const ac = new AbortController();
    const up = createCheckpointUploader({
      storage,
      runId,
      stage: 'train',
      checkpointsDir: dir,
      keep: 2,
      s3,
      processThreshold: 0,
      retry: FAST_RETRY,
      signal: ac.signal,
      multipart: { partSize: 5 * 1024 * 1024, concurrency: 1 },
    });
    up.announce({ path: 'step-000001', step: 1 });
    up.announce({ path: 'step-000002', step: 2 });
    // Cancel once the upload is under way.
    await multipartStarted(`${checkpointKeys.files(runId, 'train', 'step-000001')}model/big.safetensors`);
    const t0 = Date.now();
    ac.abort();
    await assert.rejects(up.flush(), (err: Error) => {
      assert.ok(err instanceof CheckpointUploadError);
      assert.deepEqual(
        err.failures.map((f) => f.path),
        ['step-000001', 'step-000002'],
      );
      assert.match(err.message, /cancelled/);
      return true;
    });
    assert.ok(Date.now() - t0 < 5000, `flush returned ${Date.now() - t0} ms after the abort`);
    assert.equal(up.latest(), undefined);
    assert.deepEqual(await listCheckpoints(storage, runId, 'train'), []);
  });

  it('the upload process stops when its stdin closes (the worker died) and reports errors with their code', async () => {
    const runId = newRun();
    const file = path.join(tmp, `${runId}.bin`);
    await writeFile(file, randomBytes(128 * 1024 * 1024));
    const job: UploadJob = {
      s3,
      files: [{ key: `runs/${runId}/orphan.bin`, file }],
      multipartThreshold: 5 * 1024 * 1024,
      partSize: 5 * 1024 * 1024,
      concurrency: 1,
    };
    const child = spawn(process.execPath, [UPLOAD_MAIN], { stdio: ['pipe', 'pipe', 'inherit'] });
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    child.stdin.write(`${JSON.stringify(job)}\n`);
    await multipartStarted(`runs/${runId}/orphan.bin`);
    const t0 = Date.now();
    child.stdin.end();
    assert.equal(await exited, 2);
    assert.ok(Date.now() - t0 < 5000, `exited ${Date.now() - t0} ms after its stdin closed`);
    assert.equal(await storage.stat(`runs/${runId}/orphan.bin`), undefined, 'no completed object');

    // A missing file: the ENOENT code crosses the process boundary (permanent, not retried).
    await assert.rejects(
      runUploadProcess({ ...job, files: [{ key: `runs/${runId}/missing.bin`, file: path.join(tmp, 'no-such-file') }] }),
      (err: Error & { code?: string }) => {
        assert.equal(err.code, 'ENOENT');
        assert.match(err.message, /no-such-file/);
        return true;
      },
    );
  });
});
