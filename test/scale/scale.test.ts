/**
 * The supported maximum, run for real: a pipeline of 5,000 stages (the limit
 * `tanren validate` enforces, schemas/validate.ts MAX_STAGES) and a long
 * chain, each stage a real `run: ['true']` process on real workers, MinIO
 * storing every manifest. The run's Temporal server is a dev server of this
 * test's own with `limit.historyCount.error` lowered to 10,000 events, so a
 * run whose history is not bounded by continue-as-new is terminated and fails.
 * Each test prints a one-line summary: wall time per stage, executions, and
 * the most events any execution's history had.
 *
 * `make test-scale` runs these (infra/test with its own MinIO and state
 * directory); they are not part of `make test`.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { MAX_STAGES } from '../../schemas/validate.js';
import type { RunResult, RunStatus } from '../../workflows/pipeline.js';
import { statusQuery } from '../../workflows/pipeline.js';
import { ROOT, searchAttributeKeys, temporalBin, unique } from '../helpers/env.js';
import { startTestWorkers, type TestWorkers } from '../helpers/workers.js';
import { executions } from './history.js';

const exec = promisify(execFile);
const HISTORY_LIMIT = 10_000;
const FAN_OUT = 5000;
const CHAIN = 2000;

describe('the stage limit', () => {
  it(`a ${MAX_STAGES + 1}-stage spec is rejected by \`tanren validate\`, naming the limit ${MAX_STAGES}`, async () => {
    assert.equal(MAX_STAGES, 5000);
    const dir = mkdtempSync(path.join(os.tmpdir(), 'tanren-scale-'));
    try {
      const file = path.join(dir, 'too-many.yaml');
      const stages = Array.from({ length: MAX_STAGES + 1 }, (_, i) => ({ id: `s${i}`, run: ['true'] }));
      writeFileSync(file, JSON.stringify({ name: 'too-many', stages }, null, 1));
      const err = await exec(process.execPath, ['dist/cli/main.js', 'validate', file], { cwd: ROOT }).then(
        () => assert.fail('validate accepted a spec over the limit'),
        (e: { code?: number; stdout: string; stderr: string }) => e,
      );
      assert.equal(err.code, 1, err.stderr);
      assert.match(err.stdout + err.stderr, /5001 stages: a pipeline may have at most 5000\b/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe(`runs at the supported maximum (real workers, dev server with limit.historyCount.error=${HISTORY_LIMIT})`, () => {
  let env: TestWorkflowEnvironment;
  let workers: TestWorkers;

  before(async () => {
    env = await TestWorkflowEnvironment.createLocal({
      server: {
        executable: { type: 'existing-path', path: temporalBin() },
        searchAttributes: searchAttributeKeys,
        extraArgs: ['--dynamic-config-value', `limit.historyCount.error=${HISTORY_LIMIT}`],
      },
    });
    workers = await startTestWorkers({ prefix: 'scale', envOverrides: { TEMPORAL_ADDRESS: env.address, TANREN_CPU_CONCURRENCY: 8 }, gpu: false });
  });
  after(async () => {
    await workers?.stop();
    await env?.teardown();
  });

  /** Runs `stages` to the end and checks every execution's history; returns the result and a one-line summary. */
  async function runAtScale(label: string, stages: Array<{ id: string; run: string[]; needs?: string[] }>) {
    const workflowId = unique(label);
    const started = performance.now();
    const handle = await env.client.workflow.start('pipelineWorkflow', {
      taskQueue: workers.queues.control,
      workflowId,
      args: [{ spec: { name: label, queues: { cpu: workers.queues.cpu, gpu: workers.queues.cpu }, stages }, options: { noCache: true } }],
    });
    const result = (await handle.result()) as RunResult;
    const seconds = (performance.now() - started) / 1000;
    const runs = await executions(env.client, workflowId);
    const status = (await env.client.workflow.getHandle(workflowId).query(statusQuery)) as RunStatus;
    const maxEvents = Math.max(...runs.map((r) => r.events));
    console.log(
      `scale: ${label} of ${stages.length} stages: ${seconds.toFixed(1)} s, ${((seconds * 1000) / stages.length).toFixed(1)} ms/stage, ` +
        `${runs.length} executions, max ${maxEvents} events per execution (${runs.map((r) => r.events).join('/')}; limit ${HISTORY_LIMIT})`,
    );
    assert.equal(result.stages.length, stages.length);
    const notOk = result.stages.filter((s) => s.state !== 'succeeded');
    assert.equal(notOk.length, 0, `${notOk.length} stages did not succeed, e.g. ${JSON.stringify(notOk.slice(0, 3))}`);
    assert.ok(runs.length >= 2, `${runs.length} execution(s): the run never continued as new`);
    for (const r of runs) assert.ok(r.events < HISTORY_LIMIT, `execution ${r.runId} has ${r.events} events`);
    assert.deepEqual(runs.map((r) => r.status), [...runs.slice(0, -1).map(() => 'CONTINUED_AS_NEW'), 'COMPLETED']);
    assert.equal(status.state, 'succeeded');
    assert.equal(status.continuedAsNew, runs.length - 1);
    return { result, status };
  }

  it(`a fan-out of ${FAN_OUT} independent stages completes, every stage succeeded`, { timeout: 3 * 3_600_000 }, async () => {
    const stages = Array.from({ length: FAN_OUT }, (_, i) => ({ id: `s${i}`, run: ['true'] }));
    const { status } = await runAtScale('fan-out', stages);
    assert.equal(status.stages.filter((s) => s.state === 'succeeded' && s.manifestKey).length, FAN_OUT);
  });

  it(`a chain of ${CHAIN} stages completes`, { timeout: 3 * 3_600_000 }, async () => {
    const stages = Array.from({ length: CHAIN }, (_, i) => ({ id: `s${i}`, run: ['true'], ...(i ? { needs: [`s${i - 1}`] } : {}) }));
    const { status } = await runAtScale('chain', stages);
    // Each stage started only after the one it needs had ended, across executions too.
    for (let i = 1; i < CHAIN; i++) {
      assert.ok(Date.parse(status.stages[i]!.startedAt!) >= Date.parse(status.stages[i - 1]!.endedAt!), `s${i} started before s${i - 1} ended`);
    }
  });
});
