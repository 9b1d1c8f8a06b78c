/** The `tanren` command as a person and a script use it: messages and exit codes. */
import assert from 'node:assert/strict';
import { execFile, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { describe, it } from 'node:test';
import { acquireGpuLock, GpuLockedError } from '../../worker/gpu.js';
import { prettyLine } from '../../worker/logger.js';
import { ROOT } from '../helpers/env.js';

const CLI = path.join(ROOT, 'dist', 'cli', 'main.js');
const execFileP = promisify(execFile);
const tmp = mkdtempSync(path.join(os.tmpdir(), 'tanren-cli-'));

/** Runs the CLI; async, so the tests of a describe with `concurrency` overlap their ~2 s of CLI start-up each. */
async function tanren(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await execFileP(process.execPath, [CLI, ...args], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, NO_COLOR: '1' } });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const failed = err as { code?: unknown; stdout?: string; stderr?: string };
    if (typeof failed.code !== 'number') throw err;
    return { code: failed.code, stdout: failed.stdout ?? '', stderr: failed.stderr ?? '' };
  }
}

function file(name: string, text: string): string {
  const p = path.join(tmp, name);
  writeFileSync(p, text);
  return p;
}

describe('tanren validate / render', { concurrency: true }, () => {
  it('accepts the demo pipeline', async () => {
    const r = await tanren('validate', 'pipelines/demo.yaml');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /pipelines\/demo\.yaml: ok — pipeline "demo", 6 stages \(1 on the GPU queue\)/);
  });

  it('lists every problem with file, stage and field, exit 1', async () => {
    const bad = file(
      'bad.yaml',
      'name: bad\nstages:\n  - id: a\n    needs: [b]\n    run: [true]\n  - id: b\n    needs: [a]\n    run: [true]\n    timeout: 3 days\n',
    );
    const r = await tanren('validate', bad);
    assert.equal(r.code, 1);
    assert.match(r.stderr, new RegExp(`${bad.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}: stage "b": stages\\[1\\]\\.timeout: not a duration`));
    assert.match(r.stderr, /stage "a": stages\[0\]\.needs: cycle in needs: a → b → a/);
  });

  it('reports YAML syntax errors with the file and line', async () => {
    const r = await tanren('validate', file('broken.yaml', 'name: x\nstages:\n  - id: a\n   run: [true\n'));
    assert.equal(r.code, 1);
    assert.match(r.stderr, /broken\.yaml: .*line \d+/);
  });

  it('--json gives scripts the problems', async () => {
    const r = await tanren('validate', '--json', file('bad2.yaml', 'name: x\nstages:\n  - id: a\n    uses: nope\n'));
    assert.equal(r.code, 1);
    const out = JSON.parse(r.stdout) as { ok: boolean; problems: Array<{ stage: string; path: string }> };
    assert.equal(out.ok, false);
    assert.deepEqual(
      out.problems.map((p) => [p.stage, p.path]),
      [['a', 'stages[0].uses']],
    );
  });

  it('render applies --set with the parameter type and fills in the queues', async () => {
    const r = await tanren('render', 'pipelines/demo.yaml', '--set', 'shards=3');
    assert.equal(r.code, 0, r.stderr);
    const input = JSON.parse(r.stdout) as {
      spec: { stages: Array<{ id: string; with: Record<string, unknown> }>; queues: { gpu: string } };
      options: { specDigest: string };
    };
    assert.equal(input.spec.stages.find((s) => s.id === 'shard')!.with.shards, 3);
    assert.match(input.spec.queues.gpu, /^tanren-gpu-/);
    assert.match(input.options.specDigest, /^[0-9a-f]{64}$/);
  });

  it('refuses an unknown --set parameter and a mistyped one', async () => {
    assert.match((await tanren('render', 'pipelines/demo.yaml', '--set', 'shardz=3')).stderr, /has no parameter "shardz" \(params: source, shards\)/);
    assert.match((await tanren('render', 'pipelines/demo.yaml', '--set', 'shards=many')).stderr, /params\.shards in pipelines\/demo\.yaml is a number/);
  });

  it('exits 2 on usage errors', async () => {
    assert.equal((await tanren('validate')).code, 2);
    assert.equal((await tanren('worker', '--queue', 'tpu')).code, 2);
  });
});

describe('tanren loads only the command it runs (cli/main.ts)', () => {
  it('has no global option that takes a value, which the command detection (the first non-option argument) relies on', async () => {
    const r = await tanren('--help');
    assert.equal(r.code, 0, r.stderr);
    const options = r.stdout.split('\nOptions:\n')[1].split('\n\n')[0].split('\n');
    assert.ok(options.length >= 2, r.stdout);
    for (const line of options) assert.doesNotMatch(line.trim().split(/\s{2,}/)[0], /[<[]/, `a global option takes a value: ${line}`);
  });
});

describe('tanren without a server', { concurrency: true }, () => {
  it('says clearly when Temporal cannot be reached (exit 69)', async () => {
    const r = spawnSync(process.execPath, [CLI, 'status', 'x'], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, TEMPORAL_ADDRESS: '127.0.0.1:1' } });
    assert.equal(r.status, 69);
    assert.match(r.stderr, /cannot reach Temporal at 127\.0\.0\.1:1/);
  });

  it('refuses a --run-name that makes the run id longer than a stage accepts, before reaching for Temporal (exit 2)', () => {
    // "wiki40b-ja.tiny-" is 16 characters: 185 more make 201, one past MAX_RUN_ID_CHARS.
    const submit = (name: string) =>
      spawnSync(process.execPath, [CLI, 'submit', 'pipelines/wiki40b-ja.tiny.yaml', '--run-name', name], {
        cwd: ROOT,
        encoding: 'utf8',
        env: { ...process.env, TEMPORAL_ADDRESS: '127.0.0.1:1' },
      });
    const r = submit('x'.repeat(185));
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /--run-name: the run id "wiki40b-ja\.tiny-<run name>" would have 201 characters; a run id has at most 200/);
    // One shorter is a run id a stage accepts: this one goes on to Temporal, which is not there.
    assert.equal(submit('x'.repeat(184)).status, 69);
  });
});

describe('GPU worker lock', () => {
  it("refuses a second GPU worker on the same host and devices, and takes over a dead one's lock", async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'tanren-lock-'));
    const holder = spawn('sleep', ['30']);
    writeFileSync(path.join(dir, `gpu-${os.hostname()}-q0.lock`), JSON.stringify({ pid: holder.pid }));
    assert.throws(
      () => acquireGpuLock(dir, 'q0'),
      (err: unknown) => err instanceof GpuLockedError && /another GPU worker \(pid \d+\)/.test(err.message),
    );
    holder.kill('SIGKILL');
    await new Promise((r) => holder.once('exit', r));
    const release = acquireGpuLock(dir, 'q0');
    assert.throws(() => {
      const other = spawnSync(
        process.execPath,
        [
          '-e',
          `import(${JSON.stringify(path.join(ROOT, 'dist/worker/gpu.js'))}).then(m => m.acquireGpuLock(${JSON.stringify(dir)}, 'q0')).catch(e => { console.error(e.message); process.exit(7); })`,
        ],
        { encoding: 'utf8' },
      );
      if (other.status === 7) throw new GpuLockedError(other.stderr);
    }, GpuLockedError);
    release();
  });
});

describe('worker logs', () => {
  it('are readable lines on a terminal, with the run, stage and attempt kept', () => {
    const line = JSON.stringify({
      level: 30,
      time: Date.UTC(2026, 0, 2, 3, 4, 5, 6),
      pid: 1,
      msg: 'loss 2.31',
      workflowId: 'demo-x',
      stage: 'pretrain',
      attempt: 2,
    });
    assert.equal(prettyLine(line), '03:04:05.006 INFO  loss 2.31  workflowId=demo-x stage=pretrain attempt=2');
    assert.equal(prettyLine('not json'), 'not json');
  });
});

describe('results in `tanren watch`', () => {
  it("prints each stage's values, and where a result left out of a large run's state is", async () => {
    const { formatResults } = await import('../../cli/watch-run.js');
    const stage = { kind: 'run', queue: 'cpu' as const, needs: [], attempt: 1, metrics: {}, attempts: [] };
    const text = formatResults({
      workflowId: 'big-run',
      runId: 'r',
      temporalStatus: 'RUNNING',
      state: 'running',
      status: {
        pipeline: 'p',
        state: 'running',
        startedAt: '',
        stages: [
          { ...stage, id: 'kept', state: 'succeeded', result: { loss: 1.5, steps: 10 } },
          { ...stage, id: 'omitted', state: 'succeeded', resultOmitted: true, manifestKey: 'runs/big-run/omitted/manifest.json' },
          { ...stage, id: 'pending', state: 'pending', attempt: 0 },
        ],
      },
    });
    const lines = text.split('\n');
    assert.equal(lines.length, 2, text);
    assert.match(lines[0], /kept\s+loss=1\.500\s+steps=10/);
    assert.match(lines[1], /omitted\s+.*result left out of the run's state: tanren artifacts big-run omitted --json/);
  });
});
