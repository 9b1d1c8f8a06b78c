/**
 * The processes that start stage programs for a worker (activities/stage-runner/launcher-client.ts):
 * the Node launcher for any program, the zygote for built-in Python kinds. No services: the
 * zygote runs from the stages environment (`make stages`; `make test` sets TANREN_PYTHON).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { launch, launchPythonModule, type LaunchedExit } from '../../activities/stage-runner/launcher-client.js';
import { ROOT, stagesPython } from '../helpers/env.js';

interface Ran {
  pid?: number;
  identity?: { startTicks?: number };
  error?: string;
  lines: string[];
  exit: LaunchedExit;
}

/** Runs one program to its end through `start`, collecting what the listener heard. */
async function ran(start: (l: Parameters<typeof launch>[1]) => ReturnType<typeof launch>, whileRunning?: (pid: number) => void): Promise<Ran> {
  const lines: string[] = [];
  let exit!: LaunchedExit;
  let ended!: () => void;
  let seen = 0;
  const done = new Promise<void>((r) => (ended = r));
  const s = await start({
    line: (stream, line) => lines.push(`${stream}: ${line}`),
    exit: (e) => {
      exit = e;
      if (++seen === 2) ended();
    },
    closed: () => {
      if (++seen === 2) ended();
    },
  });
  if (s.pid && whileRunning) whileRunning(s.pid);
  await done;
  return { ...s, lines, exit };
}

const parentCommand = (pid: number) => {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  return readFileSync(`/proc/${ppid}/cmdline`, 'utf8').split('\0').join(' ');
};

describe('stage launcher', () => {
  const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', ONLY: 'this' };

  it('relays output in order, the exit code, and only the environment it was given', async () => {
    const r = await ran((l) => launch({ file: 'sh', args: ['-c', 'echo one; echo two >&2; echo "$ONLY ${HOME:-no-home}"; exit 3'], cwd: os.tmpdir(), env }, l));
    assert.ok(r.pid && r.identity?.startTicks !== undefined, 'pid and identity');
    assert.deepEqual(
      r.lines.filter((l) => l.startsWith('stdout')),
      ['stdout: one', 'stdout: this no-home'],
    );
    assert.ok(r.lines.includes('stderr: two'));
    assert.equal(r.exit.exitCode, 3);
    assert.equal(r.exit.signal, undefined);
  });

  it('runs the program in its own process group; a signal to the group is reported by name', async () => {
    const r = await ran(
      (l) => launch({ file: 'sh', args: ['-c', 'sleep 30 & wait'], cwd: os.tmpdir(), env }, l),
      (pid) => {
        const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
        assert.equal(Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[2]), pid, 'process group id = pid');
        setTimeout(() => process.kill(-pid, 'SIGTERM'), 200);
      },
    );
    assert.equal(r.exit.signal, 'SIGTERM');
  });

  it('says why a program could not start', async () => {
    const r = await ran((l) => launch({ file: '/nonexistent/program', args: [], cwd: os.tmpdir(), env }, l));
    assert.match(r.exit.error ?? '', /ENOENT/);
  });
});

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
  after(() => rmSync(pkgs, { recursive: true, force: true }));

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
});
