/**
 * End to end through real workers, the real Temporal dev server and real
 * MinIO: the demo DAG, retries of a real failing process, one GPU stage at a
 * time, and submission of raw JSON with the real `temporal` CLI.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { Client, Connection, WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { keys } from '../../activities/storage/keys.js';
import { createObjectStore, type ObjectStore } from '../../activities/storage/store.js';
import type { OutputManifest } from '../../activities/types.js';
import { loadSpecFile, renderRunInput } from '../../cli/spec-file.js';
import type { PipelineRunInput, PipelineSpec } from '../../schemas/pipeline.js';
import { s3Credentials } from '../../worker/config.js';
import { statusQuery, type RunResult } from '../../workflows/pipeline.js';
import { fetchRun } from '../../cli/run-status.js';
import { ROOT, temporalBin, unique, waitFor } from '../helpers/env.js';
import { startTestWorkers, type TestWorkers } from '../helpers/workers.js';
import { startPipelineArgv, temporalWorkflowArgv } from '../helpers/servers.js';

const exec = promisify(execFile);

describe('pipelines through real workers', () => {
  let workers: TestWorkers;
  let client: Client;
  let storage: ObjectStore;

  before(async () => {
    workers = await startTestWorkers({ prefix: 'it' });
    client = new Client({ connection: await Connection.connect({ address: workers.env.TEMPORAL_ADDRESS }), namespace: workers.env.TEMPORAL_NAMESPACE });
    storage = createObjectStore({ endpoint: workers.env.TANREN_S3_ENDPOINT, bucket: workers.env.TANREN_BUCKET, ...s3Credentials(workers.env) });
  });
  after(async () => {
    await workers?.stop();
    await client?.connection.close();
  });

  function demoInput(mutate: (spec: PipelineSpec) => void = () => {}): PipelineRunInput {
    const file = path.join(ROOT, 'pipelines', 'demo.yaml');
    const spec = loadSpecFile(file);
    mutate(spec);
    const input = renderRunInput(spec, { file: 'pipelines/demo.yaml', env: workers.env, noCache: true });
    (input.spec as PipelineSpec).queues = { cpu: workers.queues.cpu, gpu: workers.queues.gpu };
    return input;
  }

  async function manifestOf(runId: string, stage: string): Promise<OutputManifest> {
    return JSON.parse(await storage.getText(keys.manifest(runId, stage))) as OutputManifest;
  }

  it('runs the demo DAG end to end, one activity per stage, outputs with manifests in MinIO', async () => {
    const workflowId = unique('demo');
    const result = (await client.workflow.execute('pipelineWorkflow', { taskQueue: workers.queues.control, workflowId, args: [demoInput()] })) as RunResult;
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
    const merge = result.stages.find((s) => s.id === 'merge')!;
    const count = result.stages.find((s) => s.id === 'count')!;
    assert.equal(merge.result!.words, count.result!.words, 'the shards add up to the count');
    for (const s of result.stages) {
      const m = await manifestOf(workflowId, s.id);
      assert.ok(m.files.length > 0, `${s.id} has outputs`);
      for (const f of m.files) assert.equal((await storage.stat(m.prefix + f.path))?.size, f.size);
      assert.ok(await storage.stat(keys.log(workflowId, s.id, 1)), `${s.id} has a log object`);
    }
    assert.deepEqual(
      (await manifestOf(workflowId, 'merge')).files.map((f) => f.path),
      ['top-words.json'],
    );
    // One activity per stage, activity id = stage id, in the workflow's history.
    const history = await client.workflow.getHandle(workflowId).fetchHistory();
    const scheduled = (history.events ?? [])
      .map((e) => e.activityTaskScheduledEventAttributes)
      .filter(Boolean)
      .map((a) => [a!.activityId, a!.taskQueue?.name]);
    assert.deepEqual(scheduled.map(([id]) => id).sort(), ['chars', 'count', 'freq-0', 'freq-1', 'merge', 'shard']);
    assert.equal(scheduled.find(([id]) => id === 'chars')![1], workers.queues.gpu);
    assert.equal(scheduled.find(([id]) => id === 'merge')![1], workers.queues.cpu);
  });

  it('retries a stage whose process fails twice, then succeeds, recording each attempt', async () => {
    const workflowId = unique('flaky');
    const input = demoInput((spec) => {
      const f = spec.stages.find((s) => s.id === 'freq-0')!;
      f.with = { ...f.with, fail_attempts: 2 };
      f.retry = { maximumAttempts: 4, initialInterval: '200ms', backoffCoefficient: 2 };
    });
    const result = (await client.workflow.execute('pipelineWorkflow', { taskQueue: workers.queues.control, workflowId, args: [input] })) as RunResult;
    const f = result.stages.find((s) => s.id === 'freq-0')!;
    assert.equal(f.state, 'succeeded');
    assert.equal(f.attempt, 3);
    assert.deepEqual(
      f.attempts!.map((a) => a.attempt),
      [1, 2, 3],
    );
    assert.match(f.attempts![0].failure!, /StageCrashed: stage "freq-0" exited with code 1: failing attempt 1 of 2 on purpose/);
    for (const n of [1, 2, 3]) assert.ok(await storage.stat(keys.log(workflowId, 'freq-0', n)), `log of attempt ${n}`);
  });

  it('never runs two GPU stages at once, even when the DAG allows it (CPU stages do overlap)', async () => {
    const workflowId = unique('gpu-serial');
    const stamp = `
import json, os, time
start = time.time(); time.sleep(0.6); end = time.time()
open(os.environ["TANREN_EVENTS"], "a").write(json.dumps({"event": "result", "values": {"start": start, "end": end}}) + "\\n")
`;
    const stages = [
      ...['g1', 'g2', 'g3'].map((id) => ({ id, queue: 'gpu', run: ['python3', '-c', stamp] })),
      ...['c1', 'c2'].map((id) => ({ id, queue: 'cpu', run: ['python3', '-c', stamp] })),
    ];
    // Identical stages would be cache hits of an earlier run, with that run's times.
    const input = { spec: { name: 'gpu-serial', queues: { cpu: workers.queues.cpu, gpu: workers.queues.gpu }, stages }, options: { noCache: true } };
    const result = (await client.workflow.execute('pipelineWorkflow', { taskQueue: workers.queues.control, workflowId, args: [input] })) as RunResult;
    const span = (id: string) => result.stages.find((s) => s.id === id)!.result as { start: number; end: number };
    const overlaps = (a: string, b: string) => span(a).start < span(b).end && span(b).start < span(a).end;
    for (const [a, b] of [
      ['g1', 'g2'],
      ['g1', 'g3'],
      ['g2', 'g3'],
    ] as const)
      assert.ok(!overlaps(a, b), `${a} and ${b} overlapped`);
    assert.ok(overlaps('c1', 'c2'), 'CPU stages ran in parallel');
  });

  it('cancels a run: the running stage process gets SIGTERM and the run ends cancelled', async () => {
    const workflowId = unique('cancel');
    const marker = path.join(workers.workRoot, `${workflowId}.term`);
    const script = `
import os, signal, sys, time, json
def on_term(*_):
    open(${JSON.stringify(marker)}, "w").write("saved a checkpoint")
    sys.exit(143)
signal.signal(signal.SIGTERM, on_term)
open(os.environ["TANREN_EVENTS"], "a").write(json.dumps({"event": "progress", "step": 1, "total": 100}) + "\\n")
while True: time.sleep(0.1)
`;
    const input = {
      spec: {
        name: 'cancel',
        queues: { cpu: workers.queues.cpu, gpu: workers.queues.gpu },
        stages: [
          { id: 'train', run: ['python3', '-c', script] },
          { id: 'after', needs: ['train'], run: ['true'] },
        ],
      },
      options: {},
    };
    const handle = await client.workflow.start('pipelineWorkflow', { taskQueue: workers.queues.control, workflowId, args: [input] });
    await waitFor('the stage to report progress', async () => (await fetchRun(client, workflowId)).status?.stages[0]!.step === 1);
    await handle.cancel();
    await assert.rejects(handle.result(), WorkflowFailedError);
    await waitFor('the SIGTERM marker', async () => (await import('node:fs')).existsSync(marker), 10_000);
    const s = await handle.query(statusQuery);
    assert.equal(s.state, 'cancelled');
    assert.deepEqual(
      s.stages.map((x) => x.state),
      ['cancelled', 'cancelled'],
    );
  });

  it('accepts raw JSON from the real `temporal` CLI, and fails an invalid one with InvalidPipelineSpec', async () => {
    const good = path.join(workers.workRoot, 'good.json');
    writeFileSync(good, JSON.stringify(demoInput()));
    const goodId = unique('cli-good');
    await exec(temporalBin(), startPipelineArgv(workers.env, { taskQueue: workers.queues.control, workflowId: goodId, inputFile: good }));
    const r = (await client.workflow.getHandle(goodId).result()) as RunResult;
    assert.ok(r.stages.every((s) => s.state === 'succeeded'));
    const shown = await exec(temporalBin(), temporalWorkflowArgv('describe', workers.env, '--workflow-id', goodId, '--output', 'json'));
    assert.match(shown.stdout, /COMPLETED/);

    const bad = path.join(workers.workRoot, 'bad.json');
    writeFileSync(
      bad,
      JSON.stringify({
        spec: {
          name: 'bad',
          stages: [
            { id: 'a', needs: ['ghost'], run: ['true'] },
            { id: 'b', uses: 'pretrian' },
          ],
        },
      }),
    );
    const badId = unique('cli-bad');
    await exec(temporalBin(), startPipelineArgv(workers.env, { taskQueue: workers.queues.control, workflowId: badId, inputFile: bad }));
    const err = await client.workflow
      .getHandle(badId)
      .result()
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    assert.ok(err instanceof WorkflowFailedError);
    assert.ok(err.cause instanceof ApplicationFailure);
    assert.equal(err.cause.type, 'InvalidPipelineSpec');
    assert.match(err.cause.message, /stage "a": stages\[0\]\.needs\[0\]: unknown stage "ghost"/);
    assert.match(err.cause.message, /stage "b": stages\[1\]\.uses: unknown stage kind "pretrian"/);
  });
});
