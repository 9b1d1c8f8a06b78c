/** `tanren submit` and `tanren status` against the test services: ids, links and exit codes (the rest of the CLI: test/unit/cli.test.ts). */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Client, Connection } from '@temporalio/client';
import { ROOT, servicesEnv, unique } from '../helpers/env.js';

const CLI = path.join(ROOT, 'dist', 'cli', 'main.js');

// A control queue no worker serves: submitted runs stay running.
const CONTROL = unique('cli-control');

function tanren(...args: string[]) {
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, NO_COLOR: '1', TANREN_CONTROL_QUEUE: CONTROL } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('tanren submit / status against the dev server', () => {
  let client: Client;
  const ids: string[] = [];
  before(async () => {
    const env = servicesEnv();
    client = new Client({ connection: await Connection.connect({ address: env.TEMPORAL_ADDRESS }), namespace: env.TEMPORAL_NAMESPACE });
  });
  after(async () => {
    for (const id of ids)
      await client.workflow
        .getHandle(id)
        .terminate('test cleanup')
        .catch(() => {});
    await client.connection.close();
  });

  it('submits with a readable id and UI link, and refuses a duplicate running id', () => {
    const name = unique('dup');
    const first = tanren('submit', 'pipelines/demo.yaml', '--run-name', name, '--json');
    assert.equal(first.code, 0, first.stderr);
    const out = JSON.parse(first.stdout) as { workflowId: string; url: string };
    ids.push(out.workflowId);
    assert.equal(out.workflowId, `demo-${name}`);
    assert.match(out.url, /\/namespaces\/default\/workflows\/demo-dup-.*\/history$/);
    const second = tanren('submit', 'pipelines/demo.yaml', '--run-name', name);
    assert.equal(second.code, 1);
    assert.match(second.stderr, new RegExp(`a run with id "demo-${name}" is already running`));
  });

  it('status of an unknown run exits 3', () => {
    const r = tanren('status', 'no-such-run-anywhere');
    assert.equal(r.code, 3);
    assert.match(r.stderr, /no such run/);
  });
});
