/**
 * How a worker finds the stages' Python without TANREN_PYTHON: the venv
 * `infra/install-stages` made for the checkout's lock, under the tanren cache.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { defaultCacheDir, findStagesPython, resolveStagesPython, stagesLockKey } from '../../worker/stages-env.js';
import { ROOT } from '../helpers/env.js';

let tmp: string;
let projectDir: string;
let cacheDir: string;

/** An executable stand-in for a Python interpreter. */
function fakePython(file: string): string {
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(file, '#!/bin/sh\nexit 0\n');
  chmodSync(file, 0o755);
  return file;
}

/** A venv as install-stages leaves it, for `key`; `complete: false` is one whose sync was interrupted. */
function makeVenv(key: string, complete = true): { venv: string; python: string } {
  const venv = path.join(cacheDir, 'venvs', `stages-${key}`);
  const python = fakePython(path.join(venv, 'bin', 'python'));
  if (complete) writeFileSync(path.join(venv, '.tanren-complete'), '2025-01-01T00:00:00Z\n');
  return { venv, python };
}

describe('findStagesPython', () => {
  before(() => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'tanren-stages-env-'));
    projectDir = path.join(tmp, 'checkout');
    mkdirSync(path.join(projectDir, 'stages'), { recursive: true });
    writeFileSync(path.join(projectDir, 'stages', 'uv.lock'), 'version = 1\n');
    writeFileSync(path.join(projectDir, 'stages', 'pyproject.toml'), '[project]\nname = "tanren-stages"\n');
  });
  after(() => rmSync(tmp, { recursive: true, force: true }));

  it('keys the venv by sha256 of uv.lock followed by pyproject.toml', () => {
    // sha256 of 'version = 1\n[project]\nname = "tanren-stages"\n', first 12 hex digits.
    const expected = execFileSync('sh', ['-c', 'cat uv.lock pyproject.toml | sha256sum | cut -c1-12'], {
      cwd: path.join(projectDir, 'stages'),
      encoding: 'utf8',
    }).trim();
    assert.match(expected, /^[0-9a-f]{12}$/);
    assert.equal(stagesLockKey(projectDir), expected);
  });

  it("finds the completed venv of the checkout's lock in the cache", () => {
    cacheDir = path.join(tmp, 'cache-found');
    const key = stagesLockKey(projectDir);
    const { venv, python } = makeVenv(key);
    const found = findStagesPython({ projectDir, cacheDir });
    assert.equal(found.python, python);
    assert.match(found.source, new RegExp(`key ${key}`));
    assert.ok(found.source.includes(venv), found.source);
  });

  it('does not use a venv whose sync did not finish (no .tanren-complete)', () => {
    cacheDir = path.join(tmp, 'cache-incomplete');
    makeVenv(stagesLockKey(projectDir), false);
    const found = findStagesPython({ projectDir, cacheDir });
    assert.equal(found.python, undefined);
    assert.match(found.source, /sync did not finish \(no \.tanren-complete\)/);
    assert.match(found.source, /make stages/);
  });

  it('does not use the venv of another lock, and says so', () => {
    cacheDir = path.join(tmp, 'cache-other');
    makeVenv('0123456789ab');
    const found = findStagesPython({ projectDir, cacheDir });
    assert.equal(found.python, undefined);
    assert.match(found.source, /does not exist \(the cache holds stages-0123456789ab: made for another stages\/uv\.lock/);
    assert.match(found.source, /make stages/);
  });

  it('says how to fix an empty cache', () => {
    const found = findStagesPython({ projectDir, cacheDir: path.join(tmp, 'cache-empty') });
    assert.equal(found.python, undefined);
    assert.match(found.source, /^no stages environment: .*does not exist; run `make stages`/);
  });

  it('prefers TANREN_PYTHON when it is executable', () => {
    cacheDir = path.join(tmp, 'cache-env');
    makeVenv(stagesLockKey(projectDir));
    const own = fakePython(path.join(tmp, 'own', 'python3'));
    const found = findStagesPython({ projectDir, cacheDir, envPython: own });
    assert.equal(found.python, own);
    assert.match(found.source, /^TANREN_PYTHON/);
  });

  it('ignores a TANREN_PYTHON that is not executable and falls back to the venv, saying so', () => {
    cacheDir = path.join(tmp, 'cache-env-bad');
    const { python } = makeVenv(stagesLockKey(projectDir));
    const found = findStagesPython({ projectDir, cacheDir, envPython: path.join(tmp, 'gone', 'python') });
    assert.equal(found.python, python);
    assert.match(found.source, /TANREN_PYTHON=.*gone\/python is not an executable file, so it was ignored; using the stages venv/);
  });

  it('explains a project directory that is not a checkout', () => {
    const found = findStagesPython({ projectDir: path.join(tmp, 'nowhere'), cacheDir: path.join(tmp, 'cache-found') });
    assert.equal(found.python, undefined);
    assert.match(found.source, /no readable uv\.lock and pyproject\.toml.*TANREN_PROJECT_DIR/);
  });

  it('logs where the python came from once, as a warning when there is none', () => {
    const lines: Array<[string, object, string]> = [];
    const logger = { info: (o: object, m: string) => lines.push(['info', o, m]), warn: (o: object, m: string) => lines.push(['warn', o, m]) };
    const python = resolveStagesPython({ projectDir, cacheDir: path.join(tmp, 'cache-found') }, logger);
    assert.ok(python);
    assert.deepEqual(
      lines.map(([level, , msg]) => [level, msg]),
      [['info', 'stages environment']],
    );
    lines.length = 0;
    assert.equal(resolveStagesPython({ projectDir, cacheDir: path.join(tmp, 'cache-empty') }, logger), undefined);
    assert.deepEqual(
      lines.map(([level, , msg]) => [level, msg]),
      [['warn', 'no stages environment: built-in Python stage kinds will fail']],
    );
    assert.match((lines[0][1] as { source: string }).source, /make stages/);
  });
});

describe('findStagesPython on this checkout', () => {
  it('finds the venv that infra/install-stages prints', () => {
    // `make test` runs `make stages` first, so the venv is there; without it this fails with the fix in the message.
    const found = findStagesPython({ projectDir: ROOT });
    assert.ok(found.python, `no stages venv: ${found.source}`);
    const env = { ...process.env };
    const out = execFileSync(path.join(ROOT, 'infra', 'install-stages'), { cwd: ROOT, env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    const printed = out.trim().split('\n').at(-1)!.trim();
    assert.equal(found.python, printed);
    assert.ok(found.python.startsWith(path.join(defaultCacheDir(), 'venvs', `stages-${stagesLockKey(ROOT)}`)));
  });
});
