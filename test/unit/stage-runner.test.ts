/**
 * Unit tests of the stage runner's pure steps (activities/stage-runner/):
 * command building (parameters, argv, environment) and exit classification
 * with the OutOfMemory shrink of the batch settings. No services.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { ApplicationFailure } from '@temporalio/common';
import { FailureTypes } from '../../schemas/names.js';
import { attemptDir, prepareAttemptDir } from '../../activities/stage-runner/attempt-dir.js';
import {
  DIST_DIR,
  batchSettingsOf,
  checkGpuMemory,
  checkJudgeUrl,
  inputEnvName,
  judgeKeyNames,
  secretValues,
  stageCommand,
  stageParams,
  stageProtocolEnv,
} from '../../activities/stage-runner/command.js';
import { classifyExit, shrinkBatch } from '../../activities/stage-runner/exit-classification.js';
import * as runStage from '../../activities/run-stage.js';

/** Asserts `fn` throws an ApplicationFailure of `type` whose message matches `message`; returns it. */
function throwsFailure(fn: () => unknown, type: string, message: RegExp): ApplicationFailure {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof ApplicationFailure, `expected an ApplicationFailure, got ${String(caught)}`);
  assert.equal(caught.type, type);
  assert.match(caught.message, message);
  return caught;
}

describe('command building', () => {
  const ctx = { python: '/venv/bin/python', projectDir: '/proj', attempt: 3 };

  it('runs a run: stage as written, with nothing added to its environment', () => {
    assert.deepEqual(stageCommand({ id: 'prep', run: ['bash', '-c', 'echo $1', 'x'] }, ctx), { argv: ['bash', '-c', 'echo $1', 'x'], extraEnv: {} });
  });

  it('runs a built-in Python kind from the stages environment, stages/ first on PYTHONPATH', () => {
    const cmd = stageCommand({ id: 'tok', uses: 'train-tokenizer' }, { ...ctx, pythonPath: '/elsewhere' });
    assert.deepEqual(cmd.argv, ['/venv/bin/python', '-m', 'tanren_stages.train_tokenizer']);
    assert.equal(cmd.extraEnv.PYTHONPATH, `/proj/stages${path.delimiter}/elsewhere`);
    assert.equal(stageCommand({ id: 'tok', uses: 'train-tokenizer' }, ctx).extraEnv.PYTHONPATH, '/proj/stages');
  });

  it('launches a multi-GPU Python stage through torchrun, one process per GPU', () => {
    assert.deepEqual(stageCommand({ id: 'pt', uses: 'pretrain', gpus: 4 }, ctx).argv, [
      '/venv/bin/python',
      '-m',
      'torch.distributed.run',
      '--standalone',
      '--nproc-per-node=4',
      '-m',
      'tanren_stages.pretrain',
    ]);
    assert.deepEqual(stageCommand({ id: 'pt', uses: 'pretrain', gpus: 1 }, ctx).argv, ['/venv/bin/python', '-m', 'tanren_stages.pretrain']);
  });

  it('runs a built-in Node kind from dist/ with the given node', () => {
    const cmd = stageCommand({ id: 'report', uses: 'report' }, { ...ctx, node: '/usr/bin/node' });
    assert.deepEqual(cmd, { argv: ['/usr/bin/node', path.join(DIST_DIR, 'stages/report/main.js')], extraEnv: {} });
    assert.equal(path.resolve(DIST_DIR), path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..'), 'DIST_DIR is the compiled root');
  });

  it('fails a Python kind retryably on a worker without a stages environment, and an unknown kind for good', () => {
    const noPython = throwsFailure(
      () => stageCommand({ id: 'tok', uses: 'train-tokenizer' }, { projectDir: '/proj', attempt: 2 }),
      FailureTypes.WorkerMisconfigured,
      /stage "tok" uses the built-in kind "train-tokenizer", but this worker has no stages environment/,
    );
    assert.equal(noPython.nonRetryable, false);
    assert.deepEqual(noPython.details, [{ attempt: 2 }]);
    const unknown = throwsFailure(
      () => stageCommand({ id: 'x', uses: 'no-such-kind' }, ctx),
      FailureTypes.InvalidPipelineSpec,
      /stage "x": unknown kind "no-such-kind"/,
    );
    assert.equal(unknown.nonRetryable, true);
  });

  it('sets the stage protocol variables, the inputs and CUDA_VISIBLE_DEVICES', () => {
    const dir = attemptDir('/work', 'run-1', 'sft', 2);
    const env = stageProtocolEnv(
      { runId: 'run-1', pipeline: 'p', stageId: 'sft', attempt: 2, device: 'cuda', cudaVisibleDevices: '1,3' },
      dir,
      { PYTHONPATH: '/proj/stages' },
      { [inputEnvName('pre-train.v2')]: '/work/run-1/sft/attempt-2/inputs/pre-train.v2' },
    );
    assert.deepEqual(env, {
      TANREN_RUN_ID: 'run-1',
      TANREN_PIPELINE: 'p',
      TANREN_STAGE_ID: 'sft',
      TANREN_ATTEMPT: '2',
      TANREN_PARAMS: '/work/run-1/sft/attempt-2/params.json',
      TANREN_INPUTS: '/work/run-1/sft/attempt-2/inputs',
      TANREN_OUTPUT: '/work/run-1/sft/attempt-2/output',
      TANREN_CHECKPOINTS: '/work/run-1/sft/attempt-2/checkpoints',
      TANREN_EVENTS: '/work/run-1/sft/attempt-2/events.jsonl',
      TANREN_DEVICE: 'cuda',
      PYTHONUNBUFFERED: '1',
      PYTHONPATH: '/proj/stages',
      TANREN_INPUT_PRE_TRAIN_V2: '/work/run-1/sft/attempt-2/inputs/pre-train.v2',
      CUDA_VISIBLE_DEVICES: '1,3',
    });
    const cpu = stageProtocolEnv({ runId: 'r', pipeline: 'p', stageId: 's', attempt: 1, device: 'cpu' }, dir, {}, {});
    assert.equal('CUDA_VISIBLE_DEVICES' in cpu, false);
  });

  it('takes the batch settings the previous attempt left, and says when they are smaller', () => {
    const stage = { with: { micro_batch_size: 8, gradient_accumulation_steps: 2, lr: 0.1 } };
    assert.deepEqual(stageParams(stage), { params: stage.with, settings: { micro_batch_size: 8, gradient_accumulation_steps: 2 }, shrunk: false });
    const after = stageParams(stage, { micro_batch_size: 4, gradient_accumulation_steps: 4 });
    assert.deepEqual(after, {
      params: { micro_batch_size: 4, gradient_accumulation_steps: 4, lr: 0.1 },
      settings: { micro_batch_size: 4, gradient_accumulation_steps: 4 },
      shrunk: true,
    });
    assert.deepEqual(stage.with, { micro_batch_size: 8, gradient_accumulation_steps: 2, lr: 0.1 }, 'the spec is not changed');
    assert.equal(stageParams(stage, { micro_batch_size: 8, gradient_accumulation_steps: 2 }).shrunk, false);
    // A stage without a micro-batch ignores left settings.
    assert.deepEqual(stageParams({ with: { n: 1 } }, { micro_batch_size: 4, gradient_accumulation_steps: 4 }), {
      params: { n: 1 },
      settings: undefined,
      shrunk: false,
    });
    assert.deepEqual(stageParams({ with: {} }), { params: {}, settings: undefined, shrunk: false });
  });

  it('reads batch settings only from a positive integer micro-batch, accumulation defaulting to 1', () => {
    assert.equal(batchSettingsOf({ micro_batch_size: 0 }), undefined);
    assert.equal(batchSettingsOf({ micro_batch_size: 1.5 }), undefined);
    assert.equal(batchSettingsOf({ micro_batch_size: 'x' }), undefined);
    assert.deepEqual(batchSettingsOf({ micro_batch_size: '4' }), { micro_batch_size: 4, gradient_accumulation_steps: 1 });
    assert.deepEqual(batchSettingsOf({ micro_batch_size: 4, gradient_accumulation_steps: -2 }), { micro_batch_size: 4, gradient_accumulation_steps: 1 });
  });

  it('upper-cases stage ids for TANREN_INPUT_<ID>', () => {
    assert.equal(inputEnvName('tokenize'), 'TANREN_INPUT_TOKENIZE');
    assert.equal(inputEnvName('sft-ja.v2'), 'TANREN_INPUT_SFT_JA_V2');
  });

  it('allows only the judge URLs the worker names, and only the judge key the stage names', () => {
    checkJudgeUrl('mt', { judge: { base_url: 'http://127.0.0.1:8000/v1' } });
    checkJudgeUrl('mt', {});
    throwsFailure(
      () => checkJudgeUrl('mt', { judge: { base_url: 'https://api.example.com/v1' } }),
      FailureTypes.StageConfigError,
      /stage "mt": with\.judge\.base_url "https:\/\/api\.example\.com\/v1" is not one this worker may call; allowed: http:\/\/127\.0\.0\.1/,
    );
    checkJudgeUrl('mt', { judge: { base_url: 'https://api.example.com/v1' } }, ['https://api.example.com']);
    assert.deepEqual(judgeKeyNames({ judge: { api_key_env: 'TANREN_JUDGE_KEY' } }), ['TANREN_JUDGE_KEY']);
    assert.deepEqual(judgeKeyNames({ judge: {} }), []);
  });

  it('refuses a stage the free GPU memory cannot hold, naming the devices', () => {
    checkGpuMemory('sft', 10, 12, '0');
    checkGpuMemory('sft', 10, undefined, '0');
    const f = throwsFailure(
      () => checkGpuMemory('sft', 20, 7.25, '1'),
      FailureTypes.StageConfigError,
      /stage "sft" needs about 20 GiB of GPU memory \(memoryEstimateGiB\) but only 7\.3 GiB is free on CUDA_VISIBLE_DEVICES=1: lower micro_batch_size/,
    );
    assert.deepEqual(f.details, [{ needGiB: 20, freeGiB: 7.25 }]);
  });

  it('finds the worker credential values to redact', () => {
    const found = secretValues({ TANREN_S3_SECRET_KEY: 's3', TANREN_JUDGE_API_KEY: 'jk', DB_PASSWORD: 'pw', HOME: '/home/x', EMPTY_TOKEN: '' });
    assert.deepEqual(found.sort(), ['jk', 'pw', 's3']);
  });
});

describe('attempt directory', () => {
  it('is created with its subdirectories, and one an earlier run of the attempt left is emptied first', async () => {
    const root = mkdtempSync(path.join(os.tmpdir(), 'tanren-attempt-dir-'));
    try {
      const d = attemptDir(root, 'run-1', 'prep', 1);
      await prepareAttemptDir(d);
      assert.deepEqual(readdirSync(d.dir).sort(), ['.tanren-owner.json', 'checkpoints', 'inputs', 'output']);
      // What a crashed run of the same attempt left behind (a reset re-runs attempt 1 on the same worker).
      writeFileSync(path.join(d.output, 'stale.txt'), 'old');
      mkdirSync(path.join(d.inputs, 'make'));
      writeFileSync(d.eventsFile, '{"event":"progress"}\n');
      await prepareAttemptDir(d);
      assert.deepEqual(readdirSync(d.dir).sort(), ['.tanren-owner.json', 'checkpoints', 'inputs', 'output']);
      assert.deepEqual(readdirSync(d.output), []);
      assert.deepEqual(readdirSync(d.inputs), []);
      assert.ok(!existsSync(d.eventsFile));
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});

describe('exit classification', () => {
  const base = { stageId: 'pt' };

  it('is no failure for exit code 0 without a signal', () => {
    assert.equal(classifyExit({ ...base, exitCode: 0 }), undefined);
  });

  it('maps the protocol exit codes, and any other code to StageCrashed', () => {
    assert.deepEqual(classifyExit({ ...base, exitCode: 2 }), { type: FailureTypes.InvalidStageInput, message: 'stage "pt" exited with code 2' });
    assert.equal(classifyExit({ ...base, exitCode: 3 })?.type, FailureTypes.StageConfigError);
    assert.equal(classifyExit({ ...base, exitCode: 4 })?.type, FailureTypes.OutOfMemory);
    assert.deepEqual(classifyExit({ ...base, exitCode: 1, said: 'Traceback: boom' }), {
      type: FailureTypes.StageCrashed,
      message: 'stage "pt" exited with code 1: Traceback: boom',
    });
    assert.equal(classifyExit({ ...base, exitCode: undefined })?.type, FailureTypes.StageCrashed);
  });

  it('names the signal of a killed program', () => {
    assert.deepEqual(classifyExit({ ...base, signal: 'SIGSEGV' }), { type: FailureTypes.StageCrashed, message: 'stage "pt" killed by SIGSEGV' });
    assert.equal(classifyExit({ ...base, exitCode: 0, signal: 'SIGKILL' })?.type, FailureTypes.StageCrashed);
  });

  it('lets a known type in the error event win over the exit code, and ignores an unknown one', () => {
    assert.equal(classifyExit({ ...base, exitCode: 1, error: { type: 'InvalidStageInput', message: 'bad shard' } })?.type, FailureTypes.InvalidStageInput);
    assert.equal(classifyExit({ ...base, exitCode: 3, error: { type: 'NoSuchType', message: 'x' } })?.type, FailureTypes.StageConfigError);
  });

  it('makes a stall StageStalled whatever the program said', () => {
    assert.deepEqual(
      classifyExit({ ...base, signal: 'SIGKILL', stalled: true, stallTimeoutMs: 90_500, step: 12, error: { type: 'OutOfMemory', message: 'x' }, said: 'x' }),
      { type: FailureTypes.StageStalled, message: 'stage "pt" stalled: no progress for 91 s after step 12 (stallTimeout), killed: x' },
    );
  });

  it('halves the micro-batch after an OutOfMemory, keeping the effective batch', () => {
    const f = classifyExit({ ...base, exitCode: 4, settings: { micro_batch_size: 8, gradient_accumulation_steps: 3 }, said: 'CUDA out of memory' });
    assert.deepEqual(f, {
      type: FailureTypes.OutOfMemory,
      message: 'stage "pt" exited with code 4: CUDA out of memory — next attempt: micro_batch_size=4, gradient_accumulation_steps=6',
      nextSettings: { micro_batch_size: 4, gradient_accumulation_steps: 6 },
    });
    // Also when the type comes from the error event.
    const viaEvent = classifyExit({
      ...base,
      exitCode: 1,
      error: { type: 'OutOfMemory', message: 'oom' },
      settings: { micro_batch_size: 2, gradient_accumulation_steps: 1 },
    });
    assert.deepEqual(viaEvent?.nextSettings, { micro_batch_size: 1, gradient_accumulation_steps: 2 });
  });

  it('gives up on an OutOfMemory at micro-batch 1, and retries one without batch settings as it is', () => {
    const f = classifyExit({ ...base, exitCode: 4, settings: { micro_batch_size: 1, gradient_accumulation_steps: 8 } });
    assert.equal(f?.type, FailureTypes.OutOfMemory);
    assert.equal(f?.nonRetryable, true);
    assert.equal(f?.nextSettings, undefined);
    assert.match(f.message, /^stage "pt" exited with code 4 — micro_batch_size is already 1: enable gradient_checkpointing/);
    assert.deepEqual(classifyExit({ ...base, exitCode: 4 }), { type: FailureTypes.OutOfMemory, message: 'stage "pt" exited with code 4' });
  });

  it('shrinks batch settings down to 1, rounding odd sizes down', () => {
    assert.deepEqual(shrinkBatch({ micro_batch_size: 7, gradient_accumulation_steps: 2 }), { micro_batch_size: 3, gradient_accumulation_steps: 5 });
    assert.deepEqual(shrinkBatch({ micro_batch_size: 2, gradient_accumulation_steps: 1 }), { micro_batch_size: 1, gradient_accumulation_steps: 2 });
    assert.equal(shrinkBatch({ micro_batch_size: 1, gradient_accumulation_steps: 4 }), undefined);
  });
});

describe('run-stage.ts', () => {
  it('keeps exporting the names its importers use', () => {
    for (const name of ['createRunStage', 'createCheckCache', 'runningDir', 'launcherArgv', 'shrinkBatch', 'inputEnvName', 'DIST_DIR']) {
      assert.ok(name in runStage, `run-stage.ts exports ${name}`);
    }
    assert.equal(runStage.runningDir('/w'), '/w/running');
  });
});
