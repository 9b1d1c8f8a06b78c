/**
 * A stage started by the launcher keeps the worker's nice, also in the scheduler autogroup of the session it gets.
 * This file's process runs at nice 3 as a worker started under `nice -n 3` would (`node --test` runs each file in a
 * process of its own, so no other test runs slower for it).
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import os from 'node:os';
import { describe, it } from 'node:test';
import { launch } from '../../activities/stage-runner/launcher-client.js';
import { ran } from '../helpers/launch.js';

// Before the first launch: the launcher is forked then, and inherits it.
const expected = Math.min(os.getPriority() + 3, 19);
os.setPriority(expected);

describe('stage launcher under nice', () => {
  it("gives a stage's own session the worker's nice", async () => {
    const env = { PATH: process.env.PATH ?? '/usr/bin:/bin' };
    // The launcher sets the group's nice just after the program starts: a program this short may look first.
    const script = [
      'echo "own $(cut -d" " -f19 /proc/self/stat)"',
      'if [ ! -r /proc/self/autogroup ]; then echo "group none"; exit 0; fi',
      `for i in $(seq 100); do g=$(cut -d" " -f3 /proc/self/autogroup); [ "$g" = ${expected} ] && break; sleep 0.05; done`,
      'echo "group $g"',
    ].join('\n');
    const r = await ran((l) => launch({ file: 'sh', args: ['-c', script], cwd: os.tmpdir(), env }, l));
    assert.equal(r.exit.exitCode, 0, r.lines.join('\n'));
    assert.ok(r.lines.includes(`stdout: own ${expected}`), r.lines.join('\n'));
    // Without autogroups plain nice (inherited, above) is all there is; with them the new session's group carries it.
    assert.ok(r.lines.includes(existsSync('/proc/self/autogroup') ? `stdout: group ${expected}` : 'stdout: group none'), r.lines.join('\n'));
  });
});
