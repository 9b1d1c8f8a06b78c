/**
 * `tanren submit` and run ids that were used before, against the dev server and
 * MinIO: a closed run's id is refused with a RunIdInUseError naming the run, its
 * state and what to do; so is an id Temporal forgot but the bucket still holds;
 * `--reuse` removes the old run's manifests, checkpoints and logs (keeping its
 * outputs) and starts a new execution; a running run is never reused.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Client, Connection } from '@temporalio/client';
import { createObjectStore, type ObjectStore } from '../../activities/storage/store.js';
import { isOutputKey } from '../../cli/reuse-run.js';
import { s3Credentials } from '../../worker/config.js';
import { ROOT, servicesEnv, unique } from '../helpers/env.js';

const CLI = path.join(ROOT, 'dist', 'cli', 'main.js');
// A control queue no worker serves: submitted runs stay running until terminated.
const CONTROL = unique('reuse-control');

function tanren(...args: string[]) {
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, NO_COLOR: '1', TANREN_CONTROL_QUEUE: CONTROL } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('isOutputKey', () => {
  it('keeps per-attempt and older outputs, nothing else', () => {
    assert.equal(isOutputKey('r', 'runs/r/s/attempts/1-ab12cd34/outputs/a/b.txt'), true);
    assert.equal(isOutputKey('r', 'runs/r/s/outputs/x'), true);
    assert.equal(isOutputKey('r', 'runs/r/s/manifest.json'), false);
    assert.equal(isOutputKey('r', 'runs/r/s/checkpoints/step-1/files/outputs/x'), false);
    assert.equal(isOutputKey('r', 'runs/r/s/logs/attempt-1.log'), false);
    assert.equal(isOutputKey('r', 'runs/r-2/s/outputs/x'), false);
  });
});

describe('tanren submit with a run id used before', () => {
  let client: Client;
  let storage: ObjectStore;
  const ids: string[] = [];
  before(async () => {
    const env = servicesEnv();
    client = new Client({ connection: await Connection.connect({ address: env.TEMPORAL_ADDRESS }), namespace: env.TEMPORAL_NAMESPACE });
    storage = createObjectStore({ endpoint: env.TANREN_S3_ENDPOINT, bucket: env.TANREN_BUCKET, ...s3Credentials(env) });
    await storage.ensureBucket();
  });
  after(async () => {
    for (const id of ids)
      await client.workflow
        .getHandle(id)
        .terminate('test cleanup')
        .catch(() => {});
    await client.connection.close();
  });

  /** What an earlier run leaves: a manifest, a checkpoint, a log and an attempt's output. */
  async function leaveObjects(run: string) {
    const objects = {
      manifest: `runs/${run}/count/manifest.json`,
      checkpoint: `runs/${run}/count/checkpoints/step-10/manifest.json`,
      log: `runs/${run}/count/logs/attempt-1.log`,
      output: `runs/${run}/count/attempts/1-0badcafe/outputs/counts.json`,
    };
    for (const key of Object.values(objects)) await storage.putText(key, '{}');
    return objects;
  }

  const submit = (name: string, ...more: string[]) => tanren('submit', 'pipelines/demo.yaml', '--run-name', name, '--json', ...more);

  it("refuses a closed run's id, naming the run, its state and the ways on; --reuse starts it again from a clean prefix", async () => {
    const name = unique('closed');
    const run = `demo-${name}`;
    const first = submit(name);
    assert.equal(first.code, 0, first.stderr);
    ids.push(run);
    const firstRunId = (JSON.parse(first.stdout) as { runId: string }).runId;
    await client.workflow.getHandle(run).terminate('the earlier run ends');
    const objects = await leaveObjects(run);

    const refused = submit(name);
    assert.equal(refused.code, 1);
    assert.match(
      refused.stderr,
      new RegExp(`run "${run}" already exists \\(TERMINATED, closed \\d{4}-\\d\\d-\\d\\dT[^)]*\\) and its objects are under runs/${run}/`),
    );
    assert.match(refused.stderr, new RegExp(`choose another --run-name, continue it with \`tanren retry ${run}\`, or pass --reuse`));
    for (const key of Object.values(objects)) assert.ok(await storage.stat(key), `${key} untouched by a refused submit`);
    assert.equal((await client.workflow.getHandle(run).describe()).runId, firstRunId, 'no new execution');

    const reused = submit(name, '--reuse');
    assert.equal(reused.code, 0, reused.stderr);
    const again = JSON.parse(reused.stdout) as { workflowId: string; runId: string };
    assert.equal(again.workflowId, run);
    assert.notEqual(again.runId, firstRunId, 'a new execution under the same id');
    const desc = await client.workflow.getHandle(run).describe();
    assert.equal(desc.status.name, 'RUNNING');
    assert.equal(desc.runId, again.runId);
    for (const k of ['manifest', 'checkpoint', 'log'] as const) assert.equal(await storage.stat(objects[k]), undefined, `${k} of the earlier run removed`);
    assert.ok(await storage.stat(objects.output), "the earlier run's outputs stay (other runs' cache hits may point at them)");
  });

  it('refuses an id Temporal does not know while the bucket holds objects of it', async () => {
    const name = unique('forgotten');
    const run = `demo-${name}`;
    await leaveObjects(run);
    const refused = submit(name);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, new RegExp(`run "${run}" already exists \\(unknown to Temporal, 3 objects in the bucket\\)`));
    const reused = submit(name, '--reuse');
    assert.equal(reused.code, 0, reused.stderr);
    ids.push(run);
    assert.deepEqual(
      (await storage.list(`runs/${run}/`)).map((o) => o.key),
      [`runs/${run}/count/attempts/1-0badcafe/outputs/counts.json`],
    );
  });

  it('never reuses a running run, and leaves its objects alone', async () => {
    const name = unique('running');
    const run = `demo-${name}`;
    const first = submit(name);
    assert.equal(first.code, 0, first.stderr);
    ids.push(run);
    const objects = await leaveObjects(run);
    const r = submit(name, '--reuse');
    assert.equal(r.code, 1);
    assert.match(r.stderr, new RegExp(`a run with id "${run}" is already running`));
    for (const key of Object.values(objects)) assert.ok(await storage.stat(key), `${key} untouched`);
  });
});
