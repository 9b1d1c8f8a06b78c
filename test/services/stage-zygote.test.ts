/**
 * The zygote of built-in Python kinds (stages/tanren_stages/zygote.py, started by
 * activities/stage-runner/launcher-client.ts): a stage forked from a Python that has imported
 * torch. The stages environment and a torch import: here, not in test/unit; the last test
 * runs a stage through the test services and a real worker.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Client, Connection } from '@temporalio/client';
import { closeStarters, launchPythonModule } from '../../activities/stage-runner/launcher-client.js';
import { PIPELINE_WORKFLOW_TYPE } from '../../schemas/names.js';
import type { RunResult } from '../../workflows/pipeline.js';
import { ROOT, stagesPython, unique } from '../helpers/env.js';
import { parentCommand, ran } from '../helpers/launch.js';
import { startTestWorkers, type TestWorkers } from '../helpers/workers.js';

describe('stage zygote', () => {
  let python: string;
  let pkgs: string;
  before(() => {
    python = stagesPython();
    pkgs = mkdtempSync(path.join(os.tmpdir(), 'tanren-zygote-'));
    mkdirSync(path.join(pkgs, 'zprobe'));
    writeFileSync(path.join(pkgs, 'zprobe', '__init__.py'), '');
    writeFileSync(
      path.join(pkgs, 'zprobe', 'main.py'),
      'import os, sys\nprint("args", sys.argv[1:], os.getcwd(), os.environ.get("ONLY"))\nprint("torch preloaded", "torch" in sys.modules)\nsys.exit(4)\n',
    );
  });
  after(async () => {
    await closeStarters();
    rmSync(pkgs, { recursive: true, force: true });
  });

  it('forks a built-in kind from a Python that has imported torch; exit code, args, cwd and environment as with python -m', { timeout: 120_000 }, async () => {
    const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', PYTHONPATH: `${path.join(ROOT, 'stages')}${path.delimiter}${pkgs}`, ONLY: 'this' };
    const fallbacks: string[] = [];
    let parent = '';
    const r = await ran(
      (l) => launchPythonModule({ python, module: 'zprobe.main', args: ['--a', 'b c'], cwd: pkgs, env }, l, (why) => fallbacks.push(why)),
      (pid) => {
        try {
          parent = parentCommand(pid);
        } catch {
          // already reaped: checked below through the output instead
        }
      },
    );
    assert.deepEqual(fallbacks, []);
    assert.equal(r.exit.exitCode, 4);
    assert.ok(r.lines.includes(`stdout: args ['--a', 'b c'] ${pkgs} this`), r.lines.join('\n'));
    assert.ok(r.lines.includes('stdout: torch preloaded True'), 'forked after torch was imported');
    if (parent) assert.match(parent, /tanren_stages\.zygote/);
    assert.ok(r.identity?.startTicks !== undefined, 'the zygote sends the identity');
  });

  it('serves two import-time environments from zygotes and a third with python -m, said once', { timeout: 240_000 }, async () => {
    const base = { PATH: process.env.PATH ?? '/usr/bin:/bin', PYTHONPATH: `${path.join(ROOT, 'stages')}${path.delimiter}${pkgs}` };
    // From no zygote at all, whichever tests ran before.
    await closeStarters();
    const fallbacks: string[] = [];
    const parents: string[] = [];
    // HF_HOME is read at import time (import_time_env.json): each value needs a zygote of its own.
    for (const name of ['a', 'b', 'c', 'c']) {
      const hf = path.join(pkgs, `hf-${name}`);
      const env = { ...base, HF_HOME: hf, ONLY: hf };
      const r = await ran(
        (l) => launchPythonModule({ python, module: 'zprobe.main', args: [], cwd: pkgs, env }, l, (why) => fallbacks.push(why)),
        () => undefined,
      );
      assert.equal(r.exit.exitCode, 4);
      assert.ok(r.lines.includes(`stdout: args [] ${pkgs} ${hf}`), r.lines.join('\n'));
      parents.push(r.lines.includes('stdout: torch preloaded True') ? 'zygote' : 'python -m');
    }
    assert.deepEqual(parents, ['zygote', 'zygote', 'python -m', 'python -m']);
    assert.equal(fallbacks.length, 1, `once per environment left to python -m: ${fallbacks.join('; ')}`);
    assert.match(fallbacks[0], /more than 2 import-time environments/);
  });

  it('the first built-in stage of a worker waits 8 s for a cold zygote and still keeps a 4 s heartbeatTimeout', { timeout: 180_000 }, async () => {
    // No zygote: the stage's start waits while one starts, before the program runs and reports anything. A
    // sitecustomize on the stages' PYTHONPATH (which the zygote imports at start-up, before torch) makes that wait at
    // least 8 s on any host, twice the heartbeatTimeout. The attempt beats meanwhile, so its first attempt succeeds. (2 s
    // was too short for the rest of the attempt on a loaded 2-core host: one attempt lost a beat while the program ran.)
    await closeStarters();
    const slow = mkdtempSync(path.join(os.tmpdir(), 'tanren-slow-zygote-'));
    writeFileSync(path.join(slow, 'sitecustomize.py'), 'import time\ntime.sleep(8)\n');
    const pythonPathBefore = process.env.PYTHONPATH;
    process.env.PYTHONPATH = slow; // the worker in this process passes it on to the stages' PYTHONPATH
    let workers: TestWorkers | undefined;
    let client: Client | undefined;
    try {
      workers = await startTestWorkers({ prefix: 'zyg-hb', python, gpu: false, envOverrides: { TANREN_PREFORK: '1' } });
      client = new Client({ connection: await Connection.connect({ address: workers.env.TEMPORAL_ADDRESS }), namespace: workers.env.TEMPORAL_NAMESPACE });
      const result = (await client.workflow.execute(PIPELINE_WORKFLOW_TYPE, {
        taskQueue: workers.queues.control,
        workflowId: unique('zygote-heartbeat'),
        args: [
          {
            spec: {
              name: 'zygote-heartbeat',
              queues: { cpu: workers.queues.cpu, gpu: workers.queues.cpu },
              defaults: { cache: false, retry: { maximumAttempts: 3, initialInterval: '1s' } },
              stages: [{ id: 'jsonl', uses: 'wiki40b-to-jsonl', with: { source: 'data/wiki40b-ja', min_chars: 100 }, heartbeatTimeout: '4s' }],
            },
            options: {},
          },
        ],
      })) as RunResult;
      const [jsonl] = result.stages;
      assert.equal(jsonl.state, 'succeeded');
      assert.equal(jsonl.attempt, 1, `the first attempt succeeded (attempts: ${JSON.stringify(jsonl.attempts)})`);
    } finally {
      if (pythonPathBefore === undefined) delete process.env.PYTHONPATH;
      else process.env.PYTHONPATH = pythonPathBefore;
      await workers?.stop();
      await client?.connection.close();
      await closeStarters();
      rmSync(slow, { recursive: true, force: true });
    }
  });
});
