/**
 * The Node launcher that starts stage programs for a worker (activities/stage-runner/launcher-client.ts).
 * The zygote of built-in Python kinds: test/services/stage-zygote.test.ts.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import { describe, it } from 'node:test';
import { importTimeEnv, launch } from '../../activities/stage-runner/launcher-client.js';
import { ran } from '../helpers/launch.js';

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

  it('keys zygotes by the import-time part of the environment (same cases as stages/tests/test_zygote.py)', () => {
    const env = { HF_HOME: '/h', LC_ALL: 'C', PYTHONPATH: '/p', PYTHONUNBUFFERED: '1', TANREN_RUN: 'r', PATHX: 'x', PATH: '/bin' };
    assert.deepEqual(importTimeEnv(env), { HF_HOME: '/h', LC_ALL: 'C', PYTHONPATH: '/p', PATH: '/bin' });
  });
});
