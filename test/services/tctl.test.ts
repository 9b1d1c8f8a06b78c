/**
 * Submission with the real `tctl` (v1.x, the legacy Temporal CLI), the way
 * docs/operations.md shows it: `tanren render` output started on the control
 * queue runs to completion through real workers, and an invalid raw spec fails
 * the run with `InvalidPipelineSpec`, which `tanren status` then shows.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { Client, Connection, WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { PIPELINE_WORKFLOW_TYPE } from '../../schemas/names.js';
import type { RunResult } from '../../workflows/pipeline.js';
import { ROOT, tctlBin, unique } from '../helpers/env.js';
import { startTestWorkers, type TestWorkers } from '../helpers/workers.js';

const exec = promisify(execFile);
const CLI = path.join(ROOT, 'dist', 'cli', 'main.js');

describe('submission with tctl through real workers', () => {
  let workers: TestWorkers;
  let client: Client;

  before(async () => {
    workers = await startTestWorkers({ prefix: 'tctl' });
    client = new Client({ connection: await Connection.connect({ address: workers.env.TEMPORAL_ADDRESS }), namespace: workers.env.TEMPORAL_NAMESPACE });
  });
  after(async () => {
    await workers?.stop();
    await client?.connection.close();
  });

  /** Environment of child processes: the test services and the test workers' queues. */
  function childEnv(): NodeJS.ProcessEnv {
    return {
      ...process.env,
      NO_COLOR: '1',
      TEMPORAL_ADDRESS: workers.env.TEMPORAL_ADDRESS,
      TEMPORAL_NAMESPACE: workers.env.TEMPORAL_NAMESPACE,
      TANREN_CPU_QUEUE: workers.queues.cpu,
      TANREN_GPU_QUEUE: workers.queues.gpu,
    };
  }

  /** `tctl workflow start` of the pipeline workflow on the control queue, exactly as docs/operations.md shows it. */
  async function tctlStart(workflowId: string, inputFile: string): Promise<string> {
    const { stdout } = await exec(
      tctlBin(),
      [
        '--address',
        workers.env.TEMPORAL_ADDRESS,
        '--namespace',
        workers.env.TEMPORAL_NAMESPACE,
        'workflow',
        'start',
        '--taskqueue',
        workers.queues.control,
        '--workflow_type',
        PIPELINE_WORKFLOW_TYPE,
        '--workflow_id',
        workflowId,
        '--input_file',
        inputFile,
      ],
      { cwd: ROOT, env: childEnv() },
    );
    return stdout;
  }

  it('starts `tanren render` output with `tctl workflow start`; the run completes, every stage succeeded', async () => {
    const input = path.join(workers.workRoot, 'input.json');
    // `tanren render spec.yaml > input.json`, with the test workers' queues from the environment.
    const rendered = await exec(process.execPath, [CLI, 'render', 'pipelines/demo.yaml', '--no-cache'], { cwd: ROOT, env: childEnv() });
    writeFileSync(input, rendered.stdout);
    const workflowId = unique('tctl-demo');
    const started = await tctlStart(workflowId, input);
    assert.match(started, new RegExp(`Started Workflow Id: ${workflowId}`));

    const result = (await client.workflow.getHandle(workflowId).result()) as RunResult;
    assert.deepEqual(
      result.stages.map((s) => [s.id, s.state]),
      [
        ['count', 'succeeded'],
        ['shard', 'succeeded'],
        ['freq-0', 'succeeded'],
        ['freq-1', 'succeeded'],
        ['chars', 'succeeded'],
        ['merge', 'succeeded'],
      ],
    );
    const desc = await client.workflow.getHandle(workflowId).describe();
    assert.equal(desc.status.name, 'COMPLETED');
    assert.equal(desc.taskQueue, workers.queues.control);
  });

  it('fails an invalid raw spec sent with tctl with InvalidPipelineSpec naming the stage; `tanren status` shows it', async () => {
    const bad = path.join(workers.workRoot, 'bad.json');
    writeFileSync(bad, JSON.stringify({ spec: { name: 'bad', stages: [{ id: 'a', needs: ['ghost'], run: ['true'] }] } }));
    const workflowId = unique('tctl-bad');
    await tctlStart(workflowId, bad);

    const err = await client.workflow
      .getHandle(workflowId)
      .result()
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    assert.ok(err instanceof WorkflowFailedError, `expected WorkflowFailedError, got ${String(err)}`);
    assert.ok(err.cause instanceof ApplicationFailure, `expected an ApplicationFailure cause, got ${String(err.cause)}`);
    assert.equal(err.cause.type, 'InvalidPipelineSpec');
    assert.equal(err.cause.nonRetryable, true);
    assert.match(err.cause.message, /stage "a": stages\[0\]\.needs\[0\]: unknown stage "ghost"/);

    const status = await exec(process.execPath, [CLI, 'status', workflowId], { cwd: ROOT, env: childEnv() }).then(
      (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
      (e: { code?: number; stdout?: string; stderr?: string }) => ({ code: e.code, stdout: e.stdout ?? '', stderr: e.stderr ?? '' }),
    );
    const shown = `stdout:\n${status.stdout}\nstderr:\n${status.stderr}`;
    assert.equal(status.code, 1, `tanren status of a failed run exits 1\n${shown}`);
    assert.match(status.stdout, /failed/, `tanren status shows the run failed\n${shown}`);
    assert.match(status.stdout, /InvalidPipelineSpec/, `tanren status shows the failure type\n${shown}`);
  });
});
