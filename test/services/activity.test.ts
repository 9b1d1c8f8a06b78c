/**
 * runStage with MockActivityEnvironment, real child processes and the real
 * MinIO: protocol env, events → heartbeats, exit codes → failure types,
 * manifest written last, cancellation through the process group.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import { createRunStage, type StageHeartbeat } from '../../activities/run-stage.js';
import { attemptDir, KEPT_AS_ASKED, KEPT_FILE, OWNER_FILE, prepareAttemptDir, sweepOrphanAttemptDirs } from '../../activities/stage-runner/attempt-dir.js';
import { sha256File } from '../../activities/files.js';
import { checkpointKeys, keys } from '../../activities/storage/keys.js';
import { createObjectStore, type ObjectStore } from '../../activities/storage/store.js';
import { HANDED_ON_MANIFEST_BYTES, type OutputManifest, type StageResult, type StageTask } from '../../activities/types.js';
import type { StageSpec } from '../../schemas/pipeline.js';
import { s3Credentials } from '../../worker/config.js';
import { deadWorkerOwner } from '../helpers/attempt-dirs.js';
import { ROOT, servicesEnv, unique, waitFor } from '../helpers/env.js';

const PY = 'python3';

function recordingStore(inner: ObjectStore, calls: string[]): ObjectStore {
  return {
    ...inner,
    bucket: inner.bucket,
    endpoint: inner.endpoint,
    putFile: async (key, file) => {
      calls.push(`put ${key}`);
      await inner.putFile(key, file);
    },
    putText: async (key, text, ct) => {
      calls.push(`put ${key}`);
      await inner.putText(key, text, ct);
    },
  };
}

describe('runStage activity', () => {
  let storage: ObjectStore;
  let workRoot: string;
  before(async () => {
    const env = servicesEnv();
    storage = createObjectStore({ endpoint: env.TANREN_S3_ENDPOINT, bucket: env.TANREN_BUCKET, ...s3Credentials(env) });
    await storage.ensureBucket();
    workRoot = mkdtempSync(path.join(os.tmpdir(), 'tanren-act-'));
  });
  after(() => {});

  function setup(opts: { killGraceMs?: number } = {}) {
    const calls: string[] = [];
    const runStage = createRunStage({
      storage: recordingStore(storage, calls),
      config: { workRoot, projectDir: ROOT, device: 'cpu', queue: 'cpu', pollIntervalMs: 50, killGraceMs: opts.killGraceMs ?? 2000 },
    });
    return { runStage, calls };
  }

  function task(stage: Partial<StageSpec> & { id: string }, inputs: StageTask['inputs'] = []): StageTask {
    return { runId: unique('act'), pipeline: 'act-test', queue: 'cpu', inputs, stage: { needs: [], with: {}, ...stage } };
  }

  it('runs a protocol stage: env, events to heartbeats, outputs and a manifest written last', async () => {
    const { runStage, calls } = setup();
    const script = `
import json, os
ev = open(os.environ["TANREN_EVENTS"], "a")
def emit(**k): ev.write(json.dumps(k) + "\\n"); ev.flush()
p = json.load(open(os.environ["TANREN_PARAMS"]))
for i in range(1, 4):
    emit(event="progress", step=i, total=3)
    emit(event="metric", step=i, values={"loss": 4.0 / i})
os.makedirs(os.path.join(os.environ["TANREN_OUTPUT"], "sub"))
open(os.path.join(os.environ["TANREN_OUTPUT"], "sub", "a.txt"), "w").write(p["word"] * 3)
open(os.path.join(os.environ["TANREN_OUTPUT"], "b.txt"), "w").write(os.environ["TANREN_STAGE_ID"])
emit(event="result", values={"attempt": int(os.environ["TANREN_ATTEMPT"])})
print("hello from the stage")
`;
    const heartbeats: unknown[] = [];
    const env = new MockActivityEnvironment({ attempt: 2 });
    env.on('heartbeat', (d: unknown) => heartbeats.push(d));
    const t = task({ id: 'writer', run: [PY, '-c', script], with: { word: 'ab' }, outputs: ['sub/a.txt'] });
    const result: StageResult = await env.run(runStage, t);
    assert.equal(result.attempt, 2);
    assert.equal(result.files, 2);
    assert.deepEqual(result.result, { attempt: 2 });
    assert.equal(result.metrics.loss, 4 / 3);
    assert.ok(
      heartbeats.some((h) => (h as { step?: number }).step === 3),
      'a heartbeat carried the progress',
    );
    const last = heartbeats.at(-1) as StageHeartbeat;
    assert.deepEqual(
      last.attempts?.map((a) => a.attempt),
      [2],
      'the attempt records itself in every heartbeat',
    );
    assert.ok(last.progressAt, 'the heartbeat says when the program last made progress');
    assert.equal(result.step, 3, 'the result carries the final progress');
    assert.equal(result.total, 3);
    const manifestKey = keys.manifest(t.runId, 'writer');
    const puts = calls.filter((c) => c.startsWith('put runs/') && !c.includes('/logs/'));
    assert.equal(puts.at(-1), `put ${manifestKey}`, 'manifest written after every output');
    const manifest = JSON.parse(await storage.getText(manifestKey)) as OutputManifest;
    assert.deepEqual(
      manifest.files.map((f) => f.path),
      ['b.txt', 'sub/a.txt'],
    );
    const dest = path.join(workRoot, 'check-a.txt');
    await storage.getFile(manifest.prefix + 'sub/a.txt', dest);
    assert.equal(readFileSync(dest, 'utf8'), 'ababab');
    assert.equal(await sha256File(dest), manifest.files[1].sha256);
    assert.match(await storage.getText(keys.log(t.runId, 'writer', 2)), /hello from the stage/);
  });

  it('keeps every line of the stage log, the very first and the very last', async () => {
    const { runStage } = setup();
    const t = task({
      id: 'chatty',
      run: ['sh', '-c', "echo first line; exec python3 -c \"import sys; print('middle'); print('last line', file=sys.stderr)\""],
    });
    await new MockActivityEnvironment().run(runStage, t);
    const log = await storage.getText(keys.log(t.runId, 'chatty', 1));
    assert.deepEqual(log.split('\n').filter(Boolean).sort(), ['first line', 'last line', 'middle']);
  });

  it('downloads the inputs of needed stages, verified, into TANREN_INPUT_<ID>', async () => {
    const { runStage } = setup();
    const producer = task({ id: 'make-data', run: [PY, '-c', 'import os; open(os.path.join(os.environ["TANREN_OUTPUT"], "x.txt"), "w").write("42")'] });
    const made: StageResult = await new MockActivityEnvironment().run(runStage, producer);
    const consumer = {
      ...task({
        id: 'use-data',
        run: [
          PY,
          '-c',
          'import os, json; v = open(os.path.join(os.environ["TANREN_INPUT_MAKE_DATA"], "x.txt")).read(); open(os.environ["TANREN_EVENTS"], "a").write(json.dumps({"event": "result", "values": {"got": v}}) + "\\n")',
        ],
      }),
      runId: producer.runId,
      inputs: [{ stage: 'make-data', manifestKey: made.manifestKey }],
    };
    const used: StageResult = await new MockActivityEnvironment().run(runStage, consumer);
    assert.equal(used.result.got, '42');
    // As a task whose inputs passed their budget names them (workflows/carry.ts fitInputs): this run's manifest of
    // the stage, by its id alone; with the cache on, its key is computed from the same manifest.
    assert.equal(made.manifestKey, `runs/${producer.runId}/make-data/manifest.json`);
    const byId: StageResult = await new MockActivityEnvironment().run(runStage, { ...consumer, cache: true, inputs: [{ stage: 'make-data' }] });
    assert.equal(byId.result.got, '42');
  });

  it('a local stage returns its small manifest; a local consumer handed it reads no manifest; a silent stage leaves no log object', async () => {
    const { runStage, calls } = setup();
    const producer = task({ id: 'make-data', run: ['sh', '-c', 'printf 42 > "$TANREN_OUTPUT/x.txt"'] });
    const made: StageResult = await new MockActivityEnvironment({ isLocal: true }).run(runStage, producer);
    assert.deepEqual(made.manifest, JSON.parse(await storage.getText(made.manifestKey)), 'the result carries the manifest as written');
    assert.ok(JSON.stringify(made.manifest).length <= HANDED_ON_MANIFEST_BYTES);
    // It printed nothing: no log object (`tanren logs` says so).
    assert.equal(await storage.stat(keys.log(producer.runId, 'make-data', 1)), undefined);
    assert.ok(!calls.some((c) => c.includes('/logs/')), calls.join('\n'));
    // A regular activity's result enters the history: no manifest there.
    const regular: StageResult = await new MockActivityEnvironment().run(runStage, task({ id: 'make-data', run: ['true'] }));
    assert.equal(regular.manifest, undefined);

    // The handed-on manifest is used as is: its key names no object, so a read of it would fail the stage.
    const consumer = {
      ...task({ id: 'use-data', run: ['sh', '-c', 'cp "$TANREN_INPUT_MAKE_DATA/x.txt" "$TANREN_OUTPUT/y.txt"'] }),
      runId: producer.runId,
      inputs: [{ stage: 'make-data', manifestKey: `runs/${unique('nowhere')}/make-data/manifest.json`, manifest: made.manifest }],
    };
    const used: StageResult = await new MockActivityEnvironment({ isLocal: true }).run(runStage, consumer);
    const out = JSON.parse(await storage.getText(used.manifestKey)) as OutputManifest;
    assert.equal(await storage.getText(out.prefix + 'y.txt'), '42');
  });

  it('rejects an input whose digest does not match its manifest, without retry', async () => {
    const { runStage } = setup();
    const producer = task({ id: 'src', run: [PY, '-c', 'import os; open(os.path.join(os.environ["TANREN_OUTPUT"], "x.txt"), "w").write("good")'] });
    const made: StageResult = await new MockActivityEnvironment().run(runStage, producer);
    await storage.putText(`${made.outputsPrefix}x.txt`, 'tampered', 'text/plain');
    const consumer = { ...task({ id: 'dst', run: [PY, '-c', 'pass'] }), runId: producer.runId, inputs: [{ stage: 'src', manifestKey: made.manifestKey }] };
    await assert.rejects(new MockActivityEnvironment().run(runStage, consumer), (err: unknown) => {
      assert.ok(err instanceof ApplicationFailure);
      assert.equal(err.type, 'InvalidStageInput');
      assert.equal(err.nonRetryable, true);
      assert.match(err.message, /x\.txt from stage "src" has sha256/);
      return true;
    });
  });

  const exitCases: Array<[string, string, string, boolean]> = [
    ['exit 2', 'import sys; print("bad row 3", file=sys.stderr); sys.exit(2)', 'InvalidStageInput', true],
    ['exit 3', 'import sys; sys.exit(3)', 'StageConfigError', true],
    ['exit 4', 'import sys; sys.exit(4)', 'OutOfMemory', false],
    ['exit 1', 'raise SystemExit(1)', 'StageCrashed', false],
    ['a signal', 'import os, signal; os.kill(os.getpid(), signal.SIGKILL)', 'StageCrashed', false],
    [
      'an error event',
      'import json, os, sys; open(os.environ["TANREN_EVENTS"], "a").write(json.dumps({"event": "error", "type": "OutOfMemory", "message": "CUDA out of memory"}) + "\\n"); sys.exit(1)',
      'OutOfMemory',
      false,
    ],
  ];
  for (const [what, code, type, nonRetryable] of exitCases) {
    it(`maps ${what} to ${type}`, async () => {
      const { runStage } = setup();
      const t = task({ id: 'failing', run: [PY, '-c', code] });
      await assert.rejects(new MockActivityEnvironment().run(runStage, t), (err: unknown) => {
        assert.ok(err instanceof ApplicationFailure, String(err));
        assert.equal(err.type, type);
        assert.equal(err.nonRetryable, nonRetryable);
        assert.match(err.message, /^stage "failing" (exited with code \d+|killed by SIGKILL)/);
        const d = err.details?.[0] as { attempt?: number; attempts?: Array<{ failure?: string }> };
        assert.equal(d.attempt, 1);
        assert.match(d.attempts?.[0]?.failure ?? '', new RegExp(`^${type}: `), 'the failure is recorded with its attempt');
        return true;
      });
      assert.ok(!existsSync(path.join(workRoot, t.runId)), "the failed attempt's directory is gone, and its run's with it");
    });
  }

  it("removes a failed attempt's directory once its checkpoints are in object storage, and keeps it while they are not", async () => {
    // Saves a checkpoint, announces it, then crashes: the next attempt resumes from object storage, never from here.
    const script = `
import json, os, sys
d = os.path.join(os.environ["TANREN_CHECKPOINTS"], "step-000001")
os.makedirs(d)
open(os.path.join(d, "w.txt"), "w").write("weights")
open(os.environ["TANREN_EVENTS"], "a").write(json.dumps({"event": "checkpoint", "step": 1, "path": "step-000001"}) + "\\n")
sys.exit(1)
`;
    const saved = task({ id: 'saver', run: [PY, '-c', script] });
    await assert.rejects(new MockActivityEnvironment().run(setup().runStage, saved), /exited with code 1/);
    assert.ok(await storage.stat(checkpointKeys.manifest(saved.runId, 'saver', 'step-000001')), 'the checkpoint went up');
    assert.ok(!existsSync(path.join(workRoot, saved.runId)), 'the attempt left nothing on the worker');

    // The object store refuses the checkpoint: the directory holds its only copy, so it stays.
    const refused = task({ id: 'saver', run: [PY, '-c', script] });
    const refusing: ObjectStore = {
      ...storage,
      bucket: storage.bucket,
      endpoint: storage.endpoint,
      putFile: async (key, file) => {
        if (key.includes('/checkpoints/')) throw Object.assign(new Error('Access Denied (injected)'), { code: 'AccessDenied' });
        await storage.putFile(key, file);
      },
    };
    const runStage = createRunStage({ storage: refusing, config: { workRoot, projectDir: ROOT, device: 'cpu', queue: 'cpu', pollIntervalMs: 50 } });
    await assert.rejects(new MockActivityEnvironment().run(runStage, refused), /exited with code 1/);
    assert.equal(
      readFileSync(path.join(workRoot, refused.runId, 'saver', 'attempt-1', 'checkpoints', 'step-000001', 'w.txt'), 'utf8'),
      'weights',
      'the checkpoint that did not go up is kept',
    );
  });

  it('keeps every attempt directory when asked (TANREN_KEEP_WORK_DIRS=1), marked so that no later worker sweeps it', async () => {
    const keepRoot = mkdtempSync(path.join(os.tmpdir(), 'tanren-keep-'));
    const runStage = createRunStage({
      storage,
      config: { workRoot: keepRoot, projectDir: ROOT, device: 'cpu', queue: 'cpu', pollIntervalMs: 50, keepWorkDirs: true },
    });
    const script = 'import os, sys; open(os.path.join(os.environ["TANREN_OUTPUT"], "o.txt"), "w").write("out"); sys.exit(int(sys.argv[1]))';
    const ok = task({ id: 'kept', run: [PY, '-c', script, '0'] });
    const failed = task({ id: 'kept', run: [PY, '-c', script, '1'] });
    await new MockActivityEnvironment().run(runStage, ok);
    await assert.rejects(new MockActivityEnvironment().run(runStage, failed), /exited with code 1/);
    for (const t of [ok, failed]) {
      const dir = path.join(keepRoot, t.runId, 'kept', 'attempt-1');
      assert.equal(readFileSync(path.join(dir, 'output', 'o.txt'), 'utf8'), 'out', `${t.runId}: the output stays`);
      assert.equal(readFileSync(path.join(dir, KEPT_FILE), 'utf8').trim(), KEPT_AS_ASKED);
    }
    // A worker that starts once this one is gone leaves them. Their owner records are made a dead worker's, and a
    // directory of that dead worker without the mark is the control.
    const dead = deadWorkerOwner();
    for (const t of [ok, failed]) writeFileSync(path.join(keepRoot, t.runId, 'kept', 'attempt-1', OWNER_FILE), JSON.stringify(dead));
    const control = attemptDir(keepRoot, unique('act'), 'unmarked', 1);
    await prepareAttemptDir(control, dead);
    const swept = await sweepOrphanAttemptDirs(keepRoot);
    assert.deepEqual(swept.removed, [control.dir], 'only the unmarked directory of the dead worker is removed');
    for (const t of [ok, failed]) assert.ok(existsSync(path.join(keepRoot, t.runId, 'kept', 'attempt-1', 'output', 'o.txt')));
    rmSync(keepRoot, { recursive: true, force: true });
  });

  it('retries OutOfMemory with half the micro-batch and twice the accumulation until it fits', async () => {
    const { runStage } = setup();
    const script = `
import json, os, sys
p = json.load(open(os.environ["TANREN_PARAMS"]))
if p["micro_batch_size"] > 2:
    print("CUDA out of memory (simulated)", file=sys.stderr); sys.exit(4)
open(os.environ["TANREN_EVENTS"], "a").write(json.dumps({"event": "result", "values": p}) + "\\n")
`;
    const t = task({ id: 'train', run: [PY, '-c', script], with: { micro_batch_size: 8, gradient_accumulation_steps: 1, lr: 0.1 } });
    let details: unknown;
    const seen: Array<Record<string, unknown>> = [];
    for (let attempt = 1; attempt <= 3; attempt++) {
      const env = new MockActivityEnvironment({ attempt, heartbeatDetails: details });
      env.on('heartbeat', (d: unknown) => {
        details = d;
      });
      try {
        const r: StageResult = await env.run(runStage, t);
        seen.push(r.result);
      } catch (err) {
        assert.ok(err instanceof ApplicationFailure);
        assert.equal(err.type, 'OutOfMemory');
        assert.equal(err.nonRetryable, false);
        seen.push({ failed: err.message });
      }
    }
    assert.match(String(seen[0].failed), /next attempt: micro_batch_size=4, gradient_accumulation_steps=2/);
    assert.match(String(seen[1].failed), /next attempt: micro_batch_size=2, gradient_accumulation_steps=4/);
    assert.deepEqual(seen[2], { micro_batch_size: 2, gradient_accumulation_steps: 4, lr: 0.1 });
  });

  it('keeps the micro-batch an OutOfMemory left when a later attempt fails for another reason', async () => {
    const { runStage } = setup();
    // Attempt 1: OutOfMemory at 8. Attempt 2 (at 4): crashes for another reason. Attempt 3 must still run at 4.
    const script = `
import json, os, sys
p = json.load(open(os.environ["TANREN_PARAMS"]))
a = int(os.environ["TANREN_ATTEMPT"])
if p["micro_batch_size"] > 4: sys.exit(4)
if a == 2: print("a data loader crashed", file=sys.stderr); sys.exit(1)
open(os.environ["TANREN_EVENTS"], "a").write(json.dumps({"event": "result", "values": p}) + "\\n")
`;
    const t = task({ id: 'train', run: [PY, '-c', script], with: { micro_batch_size: 8, gradient_accumulation_steps: 1 } });
    let details: unknown;
    const outcomes: string[] = [];
    let final: StageResult | undefined;
    for (let attempt = 1; attempt <= 3; attempt++) {
      const env = new MockActivityEnvironment({ attempt, heartbeatDetails: details });
      env.on('heartbeat', (d: unknown) => {
        details = d;
      });
      try {
        final = await env.run(runStage, t);
        outcomes.push('ok');
      } catch (err) {
        outcomes.push((err as ApplicationFailure).type ?? 'error');
      }
    }
    assert.deepEqual(outcomes, ['OutOfMemory', 'StageCrashed', 'ok']);
    assert.deepEqual(final!.result, { micro_batch_size: 4, gradient_accumulation_steps: 2 });
    assert.deepEqual(
      final!.attempts!.map((a) => [a.attempt, a.failure?.split(':')[0]]),
      [
        [1, 'OutOfMemory'],
        [2, 'StageCrashed'],
        [3, undefined],
      ],
    );
  });

  it('kills a stage that stops making progress (stallTimeout) and fails it as a retryable StageStalled', async () => {
    const { runStage } = setup();
    const script = `
import json, os, time
ev = open(os.environ["TANREN_EVENTS"], "a")
ev.write(json.dumps({"event": "progress", "step": 1, "total": 10}) + "\\n"); ev.flush()
time.sleep(600)
`;
    const started = Date.now();
    await assert.rejects(
      new MockActivityEnvironment().run(runStage, { ...task({ id: 'hung', run: [PY, '-c', script] }), stallTimeoutMs: 1500 }),
      (err: unknown) => {
        assert.ok(err instanceof ApplicationFailure, String(err));
        assert.equal(err.type, 'StageStalled');
        assert.equal(err.nonRetryable, false);
        assert.match(err.message, /stalled: no progress for 2 s after step 1/);
        return true;
      },
    );
    assert.ok(Date.now() - started < 60_000, 'noticed long before any timeout');
  });

  it('leaves a stage that never reports progress alone, whatever its stallTimeout', async () => {
    const { runStage } = setup();
    const r: StageResult = await new MockActivityEnvironment().run(runStage, {
      ...task({ id: 'quiet', run: [PY, '-c', 'import time; time.sleep(2)'] }),
      stallTimeoutMs: 500,
    });
    assert.equal(r.attempt, 1);
  });

  it("gives a stage only the allowlisted environment, and keeps the worker's secrets out of what enters history", async () => {
    const canary = {
      TANREN_S3_SECRET_KEY: 'canary-s3-secret-0123456789',
      TANREN_S3_ACCESS_KEY: 'canary-access-key-42',
      TEMPORAL_TLS_KEY: '/etc/canary/tls.key',
      TANREN_JUDGE_API_KEY: 'canary-judge-key-987',
    };
    const runStage = createRunStage({
      storage,
      config: {
        workRoot,
        projectDir: ROOT,
        device: 'cpu',
        queue: 'cpu',
        pollIntervalMs: 50,
        workerEnv: { PATH: process.env.PATH, HOME: process.env.HOME, LANG: 'C.UTF-8', MY_SETTING: 'x', ...canary },
        stageEnvNames: ['MY_SETTING', 'TANREN_S3_SECRET_KEY'],
      },
    });
    const dump = `
import json, os, sys
json.dump(dict(os.environ), open(os.path.join(os.environ["TANREN_OUTPUT"], "env.json"), "w"))
open(os.environ["TANREN_EVENTS"], "a").write(json.dumps({"event": "result", "values": {"echo": "token=" + os.environ.get("TANREN_JUDGE_API_KEY", "")}}) + "\\n")
`;
    const t = task({ id: 'envdump', run: [PY, '-c', dump] });
    const r: StageResult = await new MockActivityEnvironment().run(runStage, t);
    const dest = path.join(workRoot, `${unique('env')}.json`);
    await storage.getFile(`${r.outputsPrefix}env.json`, dest);
    const seen = JSON.parse(readFileSync(dest, 'utf8')) as Record<string, string>;
    assert.deepEqual(
      Object.keys(seen).filter((k) => /S3|TEMPORAL/.test(k)),
      [],
      'no S3 or Temporal variable reaches a stage, even when named',
    );
    assert.equal(seen.MY_SETTING, 'x', 'a variable the worker names is passed on');
    assert.equal(seen.TANREN_JUDGE_API_KEY, undefined, 'the judge key is only for a stage whose judge names it');
    assert.equal(seen.TANREN_STAGE_ID, 'envdump');
    const tj = task({ id: 'judgeenv', run: [PY, '-c', dump], with: { judge: { api_key_env: 'TANREN_JUDGE_API_KEY' } } });
    const rj: StageResult = await new MockActivityEnvironment().run(runStage, tj);
    await storage.getFile(`${rj.outputsPrefix}env.json`, dest);
    const judgeSeen = JSON.parse(readFileSync(dest, 'utf8')) as Record<string, string>;
    assert.equal(judgeSeen.TANREN_JUDGE_API_KEY, canary.TANREN_JUDGE_API_KEY, 'the judge key is for the stage whose judge.api_key_env names it');
    assert.doesNotMatch(JSON.stringify([r, rj]), /canary-judge-key/, 'the judge key never enters history');

    const leak = `
import os, sys
print("connecting with secret " + "canary-s3-secret-0123456789" + " password=hunter2hunter2", file=sys.stderr)
sys.exit(1)
`;
    await assert.rejects(new MockActivityEnvironment().run(runStage, task({ id: 'leaky', run: [PY, '-c', leak] })), (err: unknown) => {
      assert.ok(err instanceof ApplicationFailure);
      const text = `${err.message} ${JSON.stringify(err.details)}`;
      assert.doesNotMatch(text, /canary-s3-secret|hunter2/);
      assert.match(err.message, /connecting with secret \[redacted\] password=\[redacted\]/);
      return true;
    });

    await assert.rejects(
      new MockActivityEnvironment().run(
        runStage,
        task({ id: 'judge', run: [PY, '-c', 'pass'], with: { judge: { base_url: 'https://attacker.example/v1', model: 'm' } } }),
      ),
      /with\.judge\.base_url "https:\/\/attacker\.example\/v1" is not one this worker may call; allowed: http:\/\/127\.0\.0\.1/,
    );
  });

  it('gives up on OutOfMemory at micro-batch 1, non-retryable, with what to do', async () => {
    const { runStage } = setup();
    const t = task({ id: 'train', run: [PY, '-c', 'import sys; sys.exit(4)'], with: { micro_batch_size: 1 } });
    await assert.rejects(new MockActivityEnvironment().run(runStage, t), (err: unknown) => {
      assert.ok(err instanceof ApplicationFailure);
      assert.equal(err.type, 'OutOfMemory');
      assert.equal(err.nonRetryable, true);
      assert.match(err.message, /micro_batch_size is already 1: enable gradient_checkpointing/);
      return true;
    });
  });

  it('refuses a GPU stage whose memory estimate exceeds the free GPU memory, before starting it', async () => {
    const runStage = createRunStage({
      storage,
      config: { workRoot, projectDir: ROOT, device: 'cuda', queue: 'gpu', cudaVisibleDevices: '0', gpuFreeGiB: () => 20.5 },
    });
    const marker = path.join(workRoot, `${unique('never')}.txt`);
    const t = { ...task({ id: 'pretrain', run: [PY, '-c', `open(${JSON.stringify(marker)}, "w")`], memoryEstimateGiB: 30 }), queue: 'gpu' as const };
    await assert.rejects(new MockActivityEnvironment().run(runStage, t), (err: unknown) => {
      assert.ok(err instanceof ApplicationFailure);
      assert.equal(err.type, 'StageConfigError');
      assert.match(
        err.message,
        /needs about 30 GiB of GPU memory \(memoryEstimateGiB\) but only 20\.5 GiB is free on CUDA_VISIBLE_DEVICES=0: lower micro_batch_size/,
      );
      return true;
    });
    assert.equal(existsSync(marker), false, 'the stage never started');
  });

  it('fails a stage that skipped a declared output', async () => {
    const { runStage } = setup();
    await assert.rejects(
      new MockActivityEnvironment().run(runStage, task({ id: 'lazy', run: [PY, '-c', 'pass'], outputs: ['model.bin'] })),
      /did not write its declared output "model.bin"/,
    );
  });

  it('on cancellation sends SIGTERM to the process group, then SIGKILL after the grace period', async () => {
    const { runStage } = setup({ killGraceMs: 1000 });
    const marker = path.join(workRoot, `${unique('term')}.txt`);
    const childPidFile = path.join(workRoot, `${unique('child')}.pid`);
    // The stage starts a grandchild, notes SIGTERM, and refuses to exit: only SIGKILL ends it.
    const script = `
import os, signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(${JSON.stringify(childPidFile)}, "w").write(str(child.pid))
def on_term(*_):
    open(${JSON.stringify(marker)}, "w").write("term")
signal.signal(signal.SIGTERM, on_term)
while True:
    time.sleep(0.1)
`;
    const env = new MockActivityEnvironment();
    const stubborn = task({ id: 'stubborn', run: [PY, '-c', script] });
    const running = env.run(runStage, stubborn);
    await waitFor('the grandchild to start', () => existsSync(childPidFile) && readFileSync(childPidFile, 'utf8').length > 0);
    const started = Date.now();
    env.cancel();
    await assert.rejects(running, (err: unknown) => err instanceof CancelledFailure);
    assert.ok(Date.now() - started >= 900, 'waited the grace period before SIGKILL');
    assert.equal(readFileSync(marker, 'utf8'), 'term', 'the stage saw SIGTERM');
    assert.ok(!existsSync(path.join(workRoot, stubborn.runId)), "the cancelled attempt's directory is gone");
    const grandchild = Number(readFileSync(childPidFile, 'utf8'));
    await waitFor(
      'the grandchild to be gone',
      () => {
        try {
          process.kill(grandchild, 0);
          return false;
        } catch {
          return true;
        }
      },
      5000,
    );
  });
});
