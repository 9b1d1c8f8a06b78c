/**
 * The recoveries an operator reaches for: a Temporal reset (the UI's Reset
 * button, or `temporal workflow reset` with its default signal re-application)
 * after a worker crash, and `tanren retry` of a failed run. Both must finish
 * the run, resuming the stage from the run's checkpoints in MinIO.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { Client, Connection } from '@temporalio/client';
import protos from '@temporalio/proto';
import { listCheckpoints } from '../../activities/checkpoints/manifest.js';
import { createObjectStore, type ObjectStore } from '../../activities/storage/store.js';
import { fetchRun } from '../../cli/run-status.js';
import { s3Credentials } from '../../worker/config.js';
import type { RunResult } from '../../workflows/pipeline.js';
import { ROOT, servicesEnv, temporalBin, unique, waitFor } from '../helpers/env.js';
import { startWorkerProcess, stopWorkerProcess, type WorkerProcess } from '../helpers/worker-process.js';
import { temporalWorkflowArgv } from '../helpers/servers.js';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const exec = promisify(execFile);

/** A training-like stage: a checkpoint at step 5, then progress every 20 ms until killed; resumed, it finishes at once. */
const TRAINER = `
import json, os, signal, sys, time
ev = open(os.environ["TANREN_EVENTS"], "a")
def emit(**k): ev.write(json.dumps(k) + "\\n"); ev.flush()
resume = os.environ.get("TANREN_RESUME_FROM")
if resume:
    step = int(open(os.path.join(resume, "step.txt")).read())
    open(os.path.join(os.environ["TANREN_OUTPUT"], "final.txt"), "w").write(str(step))
    emit(event="progress", step=10, total=10)
    raise SystemExit(0)
ck = os.path.join(os.environ["TANREN_CHECKPOINTS"], "step-000005")
os.makedirs(ck)
open(os.path.join(ck, "step.txt"), "w").write("5")
emit(event="checkpoint", path="step-000005", step=5)
if "stop" in sys.argv:
    for i in range(6, 9):
        emit(event="progress", step=i, total=10)
    # Hangs the way a deadlocked trainer does: alive, silent, holding its resources.
    os.kill(os.getpid(), signal.SIGSTOP)
if "fail" in sys.argv:
    time.sleep(0.5)
    print("the data loader crashed", file=sys.stderr)
    raise SystemExit(1)
i = 5
while True:
    i += 1
    emit(event="progress", step=i, total=10**6)
    time.sleep(0.02)
`;

// A CommonJS module: its namespace is only reachable through the default export.
const { temporal } = protos;

describe('reset and retry', () => {
  const services = servicesEnv();
  const prefix = unique('reset');
  const queues = { control: `${prefix}-control`, cpu: `${prefix}-cpu`, gpu: `${prefix}-gpu` };
  const workRoot = mkdtempSync(path.join(os.tmpdir(), 'tanren-reset-'));
  const workerEnv = {
    TANREN_CONTROL_QUEUE: queues.control,
    TANREN_CPU_QUEUE: queues.cpu,
    TANREN_WORK_DIR: workRoot,
    TANREN_PROGRESS_INTERVAL_MS: '200',
    TANREN_KILL_GRACE_MS: '2000',
  };
  let worker: WorkerProcess | undefined;
  let client: Client;
  let storage: ObjectStore;

  before(async () => {
    worker = await startWorkerProcess('cpu', workerEnv, workRoot, 'reset-cpu');
    client = new Client({ connection: await Connection.connect({ address: services.TEMPORAL_ADDRESS }), namespace: services.TEMPORAL_NAMESPACE });
    storage = createObjectStore({ endpoint: services.TANREN_S3_ENDPOINT, bucket: services.TANREN_BUCKET, ...s3Credentials(services) });
  });
  after(async () => {
    await stopWorkerProcess(worker, 'SIGKILL');
    await client?.connection.close();
  });

  const spec = (name: string, trainArgs: string[] = []) => ({
    name,
    queues: { cpu: queues.cpu, gpu: queues.gpu },
    stages: [
      { id: 'prep', run: ['true'] },
      { id: 'train', needs: ['prep'], run: ['python3', '-c', TRAINER, ...trainArgs], heartbeatTimeout: '20s', retry: { maximumAttempts: 1 } },
      { id: 'eval', needs: ['train'], run: ['true'] },
    ],
  });

  /** Id of the WorkflowTaskCompleted event after which `activityId` was scheduled. */
  async function taskBefore(workflowId: string, activityId: string): Promise<number> {
    const history = await client.workflow.getHandle(workflowId).fetchHistory();
    const scheduled = history.events!.find(
      (e) =>
        e.eventType === temporal.api.enums.v1.EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED && e.activityTaskScheduledEventAttributes?.activityId === activityId,
    );
    assert.ok(scheduled, `${activityId} was scheduled`);
    return Number(scheduled.activityTaskScheduledEventAttributes!.workflowTaskCompletedEventId);
  }

  it(
    'a worker crash, then `temporal workflow reset` with default re-application: the run completes, resumed from the checkpoint',
    { timeout: 240_000 },
    async () => {
      const workflowId = unique('reset-run');
      const handle = await client.workflow.start('pipelineWorkflow', {
        taskQueue: queues.control,
        workflowId,
        args: [{ spec: spec('reset'), options: { noCache: true } }],
      });
      await waitFor('the checkpoint in MinIO', async () => (await listCheckpoints(storage, workflowId, 'train')).length > 0, 60_000, 100);
      await waitFor('live progress', async () => ((await fetchRun(client, workflowId)).status?.stages[1]!.step ?? 0) > 10, 60_000, 200);
      await stopWorkerProcess(worker, 'SIGKILL');
      const eventId = await taskBefore(workflowId, 'train');
      // The operator's command; its default re-applies signals, as the UI's Reset button does.
      await exec(
        temporalBin(),
        temporalWorkflowArgv('reset', services, '--workflow-id', workflowId, '--event-id', String(eventId), '--reason', 'worker crashed'),
      );
      worker = await startWorkerProcess('cpu', workerEnv, workRoot, 'reset-cpu-2');
      const result = (await client.workflow.getHandle(workflowId).result()) as RunResult;
      const train = result.stages.find((s) => s.id === 'train')!;
      assert.deepEqual(
        result.stages.map((s) => s.state),
        ['succeeded', 'succeeded', 'succeeded'],
      );
      assert.equal(train.result!.resumed_from, 'step-000005');
      assert.notEqual((await client.workflow.getHandle(workflowId).describe()).runId, handle.firstExecutionRunId, 'a new execution ran');
    },
  );

  it('`tanren retry` re-runs a failed run in place from the failed stage, resuming from its checkpoint', { timeout: 240_000 }, async () => {
    const workflowId = unique('retry-run');
    const handle = await client.workflow.start('pipelineWorkflow', {
      taskQueue: queues.control,
      workflowId,
      args: [{ spec: spec('retry', ['fail']), options: { noCache: true } }],
    });
    await assert.rejects(handle.result());
    const failed = await exec(process.execPath, ['dist/cli/main.js', 'status', workflowId], { cwd: ROOT }).catch(
      (e: { stdout: string; stderr: string; code?: number }) => e,
    );
    assert.match(failed.stdout, new RegExp(`${workflowId}\\s+failed`), `tanren status: exit ${(failed as { code?: number }).code}, stderr: ${failed.stderr}`);
    assert.match(failed.stdout, /StageCrashed: stage "train" exited with code 1: the data loader crashed/);
    // The stage now "works": the retried attempt finds the checkpoint and finishes.
    const out = await exec(process.execPath, ['dist/cli/main.js', 'retry', workflowId], { cwd: ROOT });
    assert.match(out.stdout, /retrying .* from stage "train"/);
    const result = (await client.workflow.getHandle(workflowId).result()) as RunResult;
    assert.deepEqual(
      result.stages.map((s) => s.state),
      ['succeeded', 'succeeded', 'succeeded'],
    );
    assert.equal(result.stages[1].result!.resumed_from, 'step-000005');
    const again = await exec(process.execPath, ['dist/cli/main.js', 'retry', workflowId], { cwd: ROOT }).catch((e: { stderr: string; code: number }) => e);
    assert.equal((again as { code?: number }).code, 2, 'a completed run has nothing to retry without --from');
  });

  it('a trainer that stops making progress (SIGSTOP) is killed after its stallTimeout and resumed from its checkpoint', { timeout: 240_000 }, async () => {
    const workflowId = unique('stall-run');
    const stalled = spec('stall', ['stop']);
    Object.assign(stalled.stages[1], { stallTimeout: '5s', retry: { maximumAttempts: 2, initialInterval: '1s' } });
    const handle = await client.workflow.start('pipelineWorkflow', {
      taskQueue: queues.control,
      workflowId,
      args: [{ spec: stalled, options: { noCache: true } }],
    });
    const result = (await handle.result()) as RunResult;
    const train = result.stages[1];
    assert.deepEqual(
      result.stages.map((s) => s.state),
      ['succeeded', 'succeeded', 'succeeded'],
    );
    assert.equal(train.attempt, 2);
    assert.equal(train.result!.resumed_from, 'step-000005');
    assert.match(train.attempts![0].failure!, /^StageStalled: stage "train" stalled: no progress for 5 s after step 8/);
    // The UI shows a retried attempt's last failure on its ActivityTaskStarted event.
    const history = await handle.fetchHistory();
    const started = history.events!.filter((e) => e.activityTaskStartedEventAttributes?.attempt === 2);
    assert.ok(
      started.some((e) => e.activityTaskStartedEventAttributes?.lastFailure?.applicationFailureInfo?.type === 'StageStalled'),
      'the UI shows StageStalled',
    );
  });
});
