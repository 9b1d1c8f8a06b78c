/**
 * Temporal's 2 MB payload limit, on a dev server that enforces it
 * (`limit.blobSize.error`, 2 MiB by default): a run whose stages report large
 * results must still continue as new and complete. Its state handed to the
 * next execution and its final result each travel as one payload, so the
 * workflow keeps the stages' results in them only within a budget (the
 * results stay in each stage's manifest). The activities are the scriptable
 * fakes: what is measured is the workflow's payloads.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { fetchRun } from '../../cli/run-status.js';
import { CONTINUE_AS_NEW_AFTER_STAGES, type RunResult } from '../../workflows/pipeline.js';
import { startFakeWorker } from '../helpers/fake-activities.js';
import { startDevServer } from '../helpers/servers.js';
import { executions, largeMessageClient } from '../helpers/history.js';
import { unique } from '../helpers/env.js';

/** Temporal's default `limit.blobSize.error`. */
const PAYLOAD_LIMIT = 2 * 1024 * 1024;
/** Each stage's result: under the 16 KiB a single result value may have (activities/stage-env.ts). */
const RESULT_BYTES = 6 * 1024;
/**
 * The run continues as new once 300 stages ended and the ones in flight (at most 200) finish: 600 stages leave
 * some for the next execution, which is handed the results of up to 500 (~3 MiB).
 */
const STAGES = 2 * CONTINUE_AS_NEW_AFTER_STAGES;

describe("a run whose stages' results outgrow Temporal's 2 MB payload limit", () => {
  let env: TestWorkflowEnvironment;
  before(async () => {
    env = await startDevServer();
  });
  after(async () => {
    await env?.teardown();
  });

  it(
    `${STAGES} stages of ${RESULT_BYTES / 1024} KiB results each continue as new and complete; each payload stays under the limit`,
    { timeout: 180_000 },
    async () => {
      assert.ok(STAGES * RESULT_BYTES > 1.5 * PAYLOAD_LIMIT, 'the results alone are over the limit');
      const { taskQueue, worker } = await startFakeWorker(env, 'payloads');
      const spec = {
        name: 'large-results',
        queues: { cpu: taskQueue, gpu: taskQueue },
        stages: Array.from({ length: STAGES }, (_, i) => ({ id: `s${i}`, run: ['x'], with: { resultBytes: RESULT_BYTES } })),
      };
      const workflowId = unique('large-results');
      const { result, shown } = await worker.runUntil(async () => {
        const handle = await env.client.workflow.start('pipelineWorkflow', { taskQueue, workflowId, args: [{ spec, options: {} }] });
        const result = (await handle.result()) as RunResult;
        return { result, shown: await fetchRun(env.client, workflowId) };
      });
      // Whole history pages of this run (600 results of 6 KiB) pass the default client's 4 MB message limit.
      const reader = await largeMessageClient(env);
      const runs = await executions(reader.client, workflowId).finally(reader.close);
      assert.ok(runs.length >= 2, 'the run continued as new');
      assert.equal(runs.at(-1)!.status, 'COMPLETED');
      for (const r of runs)
        if (r.continuedWithBytes !== undefined) assert.ok(r.continuedWithBytes < PAYLOAD_LIMIT, `continued with ${r.continuedWithBytes} bytes`);
      assert.equal(result.stages.length, STAGES);
      assert.ok(result.stages.every((s) => s.state === 'succeeded' && s.manifestKey));
      const bytes = Buffer.byteLength(JSON.stringify(result));
      assert.ok(bytes < PAYLOAD_LIMIT, `result is ${bytes} bytes`);
      // Results left out say where they are; the ones kept are whole.
      const omitted = result.stages.filter((s) => s.resultOmitted);
      assert.ok(omitted.length > 0 && omitted.length < STAGES, `${omitted.length} results left out`);
      for (const s of omitted) assert.equal(s.result, undefined);
      for (const s of result.stages.filter((x) => !x.resultOmitted)) assert.equal((s.result as { blob: string }).blob.length, RESULT_BYTES);
      // `tanren status` reads the same through the query.
      assert.equal(shown.status?.stages.length, STAGES);
      console.log(
        `# ${STAGES} stages × ${RESULT_BYTES} B results: ${runs.length} executions, continued with ${runs.map((r) => r.continuedWithBytes ?? '-').join('/')} bytes; ` +
          `result ${bytes} bytes, ${omitted.length} results left out`,
      );
    },
  );
});
