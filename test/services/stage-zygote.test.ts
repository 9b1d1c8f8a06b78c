/**
 * The zygote of built-in Python kinds (stages/tanren_stages/zygote.py, started by
 * activities/stage-runner/launcher-client.ts): a stage forked from a Python that has imported
 * torch. No services, but the stages environment and a torch import: here, not in test/unit.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { closeStarters, launchPythonModule } from '../../activities/stage-runner/launcher-client.js';
import { ROOT, stagesPython } from '../helpers/env.js';
import { parentCommand, ran } from '../helpers/launch.js';

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
});
