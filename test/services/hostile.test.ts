/**
 * Raw inputs a `temporal`/`tctl` user (or an attacker with access to the task
 * queue) can send: each must end the run FAILED with InvalidPipelineSpec, fast,
 * with no failed workflow task (a failed task retries forever and never ends).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { Client, Connection, WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import protos from '@temporalio/proto';
import { temporalBin, unique } from '../helpers/env.js';
import { startPipelineArgv } from '../helpers/servers.js';
import { startTestWorkers, type TestWorkers } from '../helpers/workers.js';

// A CommonJS module: its namespace is only reachable through the default export.
const { temporal } = protos;
const exec = promisify(execFile);

describe('hostile workflow input ends as InvalidPipelineSpec', () => {
  let workers: TestWorkers;
  let client: Client;

  before(async () => {
    workers = await startTestWorkers({ prefix: 'hostile', gpu: false });
    client = new Client({ connection: await Connection.connect({ address: workers.env.TEMPORAL_ADDRESS }), namespace: workers.env.TEMPORAL_NAMESPACE });
  });
  after(async () => {
    await workers?.stop();
    await client?.connection.close();
  });

  const queues = () => ({ cpu: workers.queues.cpu, gpu: workers.queues.gpu });
  // Written as text: JSON.stringify itself overflows the stack on it.
  const deepJson = `${'{"nest":'.repeat(5000)}{"leaf":1}${'}'.repeat(5000)}`;
  const cases: Array<[string, () => unknown, RegExp]> = [
    [
      '3,000 stages each needing an unknown stage',
      () => ({ name: 'h1', queues: queues(), stages: Array.from({ length: 3000 }, (_, i) => ({ id: `s${i}`, needs: ['ghost'], run: ['true'] })) }),
      /unknown stage "ghost"[\s\S]*… and 2950 more problems/,
    ],
    [
      'a `with:` nested 5,000 objects deep',
      () => ({ name: 'h2', queues: queues(), stages: [{ id: 'a', run: ['true'], with: '@DEEP@' }] }),
      /stages\[0\]\.with: nested more than 32 levels deep/,
    ],
    [
      'a parameter named like an Object method',
      () => ({ name: 'h3', queues: queues(), stages: [{ id: 'a', run: ['echo', '${{ params.constructor }}'] }] }),
      /unknown parameter "constructor"/,
    ],
    [
      'a 0.4 ms timeout',
      () => ({ name: 'h4', queues: queues(), stages: [{ id: 'a', run: ['true'], timeout: '0.4ms' }] }),
      /stages\[0\]\.timeout: out of range/,
    ],
    [
      'a 10,000-stage chain',
      () => ({
        name: 'h5',
        queues: queues(),
        stages: Array.from({ length: 10_000 }, (_, i) => ({ id: `s${i}`, run: ['true'], ...(i ? { needs: [`s${i - 1}`] } : {}) })),
      }),
      /10000 stages: a pipeline may have at most 5000/,
    ],
  ];
  for (const [what, make, expected] of cases) {
    it(what, { timeout: 120_000 }, async () => {
      const file = path.join(workers.workRoot, `${unique('hostile')}.json`);
      writeFileSync(file, JSON.stringify({ spec: make() }).replace('"@DEEP@"', deepJson));
      const workflowId = unique('hostile');
      const started = Date.now();
      // The way such input arrives: the `temporal` CLI, raw JSON, no tanren validation on the way.
      await exec(temporalBin(), startPipelineArgv(workers.env, { taskQueue: workers.queues.control, workflowId, inputFile: file }), { maxBuffer: 1 << 26 });
      const err = await client.workflow
        .getHandle(workflowId)
        .result()
        .then(
          () => undefined,
          (e: unknown) => e,
        );
      const secs = (Date.now() - started) / 1000;
      assert.ok(err instanceof WorkflowFailedError, String(err));
      assert.ok(err.cause instanceof ApplicationFailure);
      assert.equal(err.cause.type, 'InvalidPipelineSpec');
      assert.equal(err.cause.nonRetryable, true);
      assert.match(err.cause.message, expected);
      assert.ok(err.cause.message.length < 64 * 1024, `message of ${err.cause.message.length} characters`);
      assert.ok(secs < 30, `ended after ${secs.toFixed(1)} s`);
      const history = await client.workflow.getHandle(workflowId).fetchHistory();
      const failedTasks = history.events!.filter((e) => e.eventType === temporal.api.enums.v1.EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED);
      assert.equal(failedTasks.length, 0, 'no workflow task failed');
    });
  }
});
