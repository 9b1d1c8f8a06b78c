/** Shared set-up of tests: the environment `infra/dev up` wrote and the installed binaries. */
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';
import { loadEnv, readEnvFile } from '../../worker/config.js';
import { findStagesPython } from '../../worker/stages-env.js';
import { SEARCH_ATTRIBUTES } from '../../schemas/names.js';

/** The repository root. */
export const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

function versions(): Record<string, string> {
  return readEnvFile(path.join(ROOT, 'infra', 'versions.env'));
}

const cache = process.env.TANREN_CACHE ?? path.join(os.homedir(), '.cache', 'tanren');

/** Path of the installed `temporal` CLI (dev server). */
export function temporalBin(): string {
  const p = path.join(cache, 'tools', `temporal-${versions().TEMPORAL_CLI_VERSION}`, 'temporal');
  if (!existsSync(p)) throw new Error(`temporal CLI not installed at ${p}: run infra/install-tools`);
  return p;
}

/** Path of the installed `tctl` (the legacy Temporal CLI). */
export function tctlBin(): string {
  const p = path.join(cache, 'tools', `tctl-${versions().TCTL_VERSION}`, 'tctl');
  if (!existsSync(p)) throw new Error(`tctl not installed at ${p}: run infra/install-tools tctl`);
  return p;
}

/** Path of the installed Java time-skipping test server. */
export function testServerBin(): string {
  const p = path.join(cache, 'tools', `temporal-test-server-${versions().TEMPORAL_TEST_SERVER_VERSION}`, 'temporal-test-server');
  if (!existsSync(p)) throw new Error(`temporal test server not installed at ${p}: run infra/install-tools`);
  return p;
}

/**
 * The Python of the stages environment: `$TANREN_PYTHON` (infra/test sets it
 * to what `infra/install-stages` printed), else the venv of this checkout's
 * lock that `make stages` created. Installs nothing: without one it throws
 * with the fix.
 */
export function stagesPython(): string {
  const found = findStagesPython({ projectDir: ROOT, envPython: process.env.TANREN_PYTHON });
  if (!found.python) throw new Error(`${found.source} (make stages creates it; make test sets TANREN_PYTHON)`);
  return found.python;
}

/** The tanren search attributes, for ephemeral test servers. */
export const searchAttributeKeys = Object.values(SEARCH_ATTRIBUTES).map((name) => defineSearchAttributeKey(name, SearchAttributeType.KEYWORD));

/**
 * State directory of the services the tests run against: `$TANREN_STATE_DIR`
 * (`make test` points it at its own, `.tanren-test/`), else `<repo>/.tanren`.
 * Child processes inherit the variable, so they find the same services.
 */
export function stateDir(): string {
  return path.resolve(process.env.TANREN_STATE_DIR || path.join(ROOT, '.tanren'));
}

/** Environment of the running services (`$TANREN_STATE_DIR/env`, which `infra/dev up` writes). */
export function servicesEnv() {
  const state = stateDir();
  if (!existsSync(path.join(state, 'env')) && !process.env.TEMPORAL_ADDRESS) {
    throw new Error(`dev services are not running: no ${path.join(state, 'env')}; run \`infra/dev up\` (make test starts its own)`);
  }
  return loadEnv({ ...process.env, TANREN_PROJECT_DIR: ROOT, TANREN_STATE_DIR: state });
}

/** A unique suffix for task queues and ids of one test. */
export function unique(prefix: string): string {
  return `${prefix}-${process.pid}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`;
}

/** Waits until `check` returns a truthy value, polling; fails with `what` after `timeoutMs`. */
export async function waitFor<T>(
  what: string,
  check: () => Promise<T | undefined | false> | T | undefined | false,
  timeoutMs = 30_000,
  everyMs = 100,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${String(last)})` : ''}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
