/**
 * `local: true` stages through real workers, the real Temporal dev server and
 * real MinIO: they run as local activities of the workflow (markers in the
 * history, no activity tasks), pass outputs on like any stage, are retried
 * after a crash, hit the cache on a second run, run again after a reset (the
 * UI's Reset button: `temporal workflow reset`, signals re-applied), and a
 * cancelled run stops a local stage's process group.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Client, Connection, WorkflowFailedError } from '@temporalio/client';
import { CancelledFailure, defaultPayloadConverter } from '@temporalio/common';
import { keys } from '../../activities/storage/keys.js';
import { createObjectStore, type ObjectStore } from '../../activities/storage/store.js';
import type { OutputManifest, StageResult } from '../../activities/types.js';
import { s3Credentials } from '../../worker/config.js';
import type { RunResult } from '../../workflows/pipeline.js';
import { promisify } from 'node:util';
import { ROOT, temporalBin, unique, waitFor } from '../helpers/env.js';
import { temporalWorkflowArgv } from '../helpers/servers.js';
import { startTestWorkers, type TestWorkers } from '../helpers/workers.js';

const CLI = path.join(ROOT, 'dist', 'cli', 'main.js');

describe('local stages', () => {
  let workers: TestWorkers;
  let client: Client;
  let storage: ObjectStore;
  let scratch: string;

  before(async () => {
    workers = await startTestWorkers({ prefix: 'local', gpu: false });
    client = new Client({ connection: await Connection.connect({ address: workers.env.TEMPORAL_ADDRESS }), namespace: workers.env.TEMPORAL_NAMESPACE });
    storage = createObjectStore({ endpoint: workers.env.TANREN_S3_ENDPOINT, bucket: workers.env.TANREN_BUCKET, ...s3Credentials(workers.env) });
    scratch = mkdtempSync(path.join(os.tmpdir(), 'tanren-local-'));
  });
  after(async () => {
    await workers?.stop();
    await client?.connection.close();
    rmSync(scratch, { recursive: true, force: true });
  });

  const input = (name: string, stages: unknown[], options: Record<string, unknown> = {}) => ({
    spec: { name, queues: { cpu: workers.queues.cpu }, stages },
    options,
  });

  it('runs a chain of local stages as local activities: outputs passed on, a crash retried, a second run cached', async () => {
    const marker = path.join(scratch, 'crashed-once');
    const version = unique('v');
    const stages = [
      { id: 'make', local: true, version, run: ['sh', '-c', 'echo 21 > "$TANREN_OUTPUT/n.txt"'] },
      {
        id: 'double',
        local: true,
        version,
        needs: ['make'],
        retry: { maximumAttempts: 3, initialInterval: '200ms' },
        // Attempt 1 dies by SIGKILL (a crash); attempt 2 reads the input and writes its double.
        run: [
          'sh',
          '-c',
          `if [ ! -e "${marker}" ]; then touch "${marker}"; echo "attempt 1 crashes"; kill -9 $$; fi; echo $(( $(cat "$TANREN_INPUT_MAKE/n.txt") * 2 )) > "$TANREN_OUTPUT/n.txt"`,
        ],
      },
      { id: 'report', version, needs: ['double'], run: ['sh', '-c', 'cp "$TANREN_INPUT_DOUBLE/n.txt" "$TANREN_OUTPUT/final.txt"'] },
    ];
    const workflowId = unique('local-chain');
    const result = (await client.workflow.execute('pipelineWorkflow', {
      taskQueue: workers.queues.control,
      workflowId,
      args: [input('local-chain', stages)],
    })) as RunResult;
    assert.deepEqual(
      result.stages.map((s) => [s.id, s.state, s.attempt]),
      [
        ['make', 'succeeded', 1],
        ['double', 'succeeded', 2],
        ['report', 'succeeded', 1],
      ],
    );
    const final = JSON.parse(await storage.getText(keys.manifest(workflowId, 'report'))) as OutputManifest;
    assert.equal((await storage.getText(final.prefix + 'final.txt')).trim(), '42');
    // The crashed attempt's log went up like any attempt's.
    assert.match(await storage.getText(keys.log(workflowId, 'double', 1)), /attempt 1 crashes/, 'log of the crashed attempt');

    const history = await client.workflow.getHandle(workflowId).fetchHistory();
    const events = history.events ?? [];
    const scheduled = events.flatMap((e) => e.activityTaskScheduledEventAttributes?.activityId ?? []);
    assert.deepEqual(scheduled, ['report'], 'only the regular stage was an activity task');
    const markers = events.filter((e) => e.markerRecordedEventAttributes?.markerName === 'core_local_activity');
    assert.ok(markers.length >= 2, `${markers.length} local activity markers`);
    // make's result (its marker) carries its manifest, as written, for the workflow to hand on to double.
    const results = markers.flatMap((e) => {
      const data = e.markerRecordedEventAttributes?.details?.result?.payloads?.[0];
      return data ? [defaultPayloadConverter.fromPayload<StageResult>(data)] : [];
    });
    const made = results.find((r) => r.stage === 'make');
    assert.deepEqual(made?.manifest, JSON.parse(await storage.getText(keys.manifest(workflowId, 'make'))));
    // make (local) printed nothing: no log object, and `tanren logs` says so; report (regular) has its empty log.
    assert.equal(await storage.stat(keys.log(workflowId, 'make', 1)), undefined);
    assert.equal((await storage.stat(keys.log(workflowId, 'report', 1)))?.size, 0);
    const logs = await promisify(execFile)(process.execPath, [CLI, 'logs', workflowId, 'make']);
    assert.equal(logs.stdout, '');
    assert.match(logs.stderr, /stage "make" of run \S+ printed nothing \(attempt 1\)/);

    // The same pipeline again, cache on: every stage a hit, nothing runs.
    const againId = unique('local-chain-again');
    const again = (await client.workflow.execute('pipelineWorkflow', {
      taskQueue: workers.queues.control,
      workflowId: againId,
      args: [input('local-chain', stages)],
    })) as RunResult;
    assert.deepEqual(
      again.stages.map((s) => [s.id, s.state]),
      [
        ['make', 'cached'],
        ['double', 'cached'],
        ['report', 'cached'],
      ],
    );
    const hitLogs = await promisify(execFile)(process.execPath, [CLI, 'logs', againId, 'make']);
    assert.match(hitLogs.stderr, new RegExp(`cache hit in ${againId}; in run \\S+, which produced its outputs, it printed nothing`));
  });

  it("a reset to the first workflow task (the UI's Reset, signals re-applied) runs the local stages again and completes", async () => {
    const counter = path.join(scratch, 'reset-runs.txt');
    const stages = [
      { id: 'make', local: true, run: ['sh', '-c', `echo make >> "${counter}"; echo 21 > "$TANREN_OUTPUT/n.txt"`] },
      {
        id: 'double',
        local: true,
        needs: ['make'],
        run: ['sh', '-c', `echo double >> "${counter}"; echo $(( $(cat "$TANREN_INPUT_MAKE/n.txt") * 2 )) > "$TANREN_OUTPUT/n.txt"`],
      },
      { id: 'report', needs: ['double'], run: ['sh', '-c', 'cp "$TANREN_INPUT_DOUBLE/n.txt" "$TANREN_OUTPUT/final.txt"'] },
    ];
    const workflowId = unique('local-reset');
    const first = await client.workflow.start('pipelineWorkflow', {
      taskQueue: workers.queues.control,
      workflowId,
      args: [input('local-reset', stages, { noCache: true })],
    });
    await first.result();
    const target = { TEMPORAL_ADDRESS: workers.env.TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE: workers.env.TEMPORAL_NAMESPACE };
    // The operator's command, as the UI's Reset button runs it: its default re-applies signals.
    await promisify(execFile)(
      temporalBin(),
      temporalWorkflowArgv('reset', target, '--workflow-id', workflowId, '--type', 'FirstWorkflowTask', '--reason', 'operator reset'),
    );
    const latest = client.workflow.getHandle(workflowId);
    assert.notEqual((await latest.describe()).runId, first.firstExecutionRunId, 'a new execution runs');
    const result = (await latest.result()) as RunResult;
    assert.deepEqual(
      result.stages.map((s) => [s.id, s.state]),
      [
        ['make', 'succeeded'],
        ['double', 'succeeded'],
        ['report', 'succeeded'],
      ],
    );
    assert.deepEqual(readFileSync(counter, 'utf8').trim().split('\n'), ['make', 'double', 'make', 'double'], 'each local stage ran once per execution');
    const final = JSON.parse(await storage.getText(keys.manifest(workflowId, 'report'))) as OutputManifest;
    assert.equal((await storage.getText(final.prefix + 'final.txt')).trim(), '42');
  });

  it('a cancelled run stops a running local stage and its process group', async () => {
    const pidFile = path.join(scratch, 'sleeper.pid');
    const workflowId = unique('local-cancel');
    const handle = await client.workflow.start('pipelineWorkflow', {
      taskQueue: workers.queues.control,
      workflowId,
      args: [input('local-cancel', [{ id: 'wait', local: true, run: ['sh', '-c', `sleep 300 & echo $! > "${pidFile}"; wait`] }], { noCache: true })],
    });
    await waitFor('the local stage to start its sleeper', () => existsSync(pidFile) && readFileSync(pidFile, 'utf8').trim().length > 0);
    const sleeper = Number(readFileSync(pidFile, 'utf8'));
    await handle.cancel();
    await assert.rejects(handle.result(), (err: unknown) => err instanceof WorkflowFailedError && err.cause instanceof CancelledFailure);
    await waitFor('the sleeper (a grandchild) to be gone', () => {
      try {
        process.kill(sleeper, 0);
        return false;
      } catch {
        return true;
      }
    });
  });
});
