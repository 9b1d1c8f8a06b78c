/** The run state carried across continue-as-new: packed small, unpacked to the same status. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MAX_RESULT_BYTES, MAX_RESULT_VALUE_BYTES, boundResult } from '../../activities/stage-env.js';
import { jsonBytes, jsonBytesUpTo, utf8Bytes } from '../../schemas/payload-size.js';
import { MAX_PIPELINE_SWEEP_PARAMS_BYTES, MAX_PIPELINE_SWEEP_TRIALS, MAX_SWEEP_RUNGS } from '../../schemas/pipeline.js';
import { MAX_SPEC_BYTES, MAX_STAGES } from '../../schemas/validate.js';
import { fitInputs, fitResults, packStage, PAYLOAD_BUDGET_BYTES, unpackStage, type WithResult } from '../../workflows/carry.js';
import type { StageStatus } from '../../workflows/pipeline.js';
import type { SweepStatus } from '../../workflows/sweep.js';

const ctx = { runId: 'big-run', defaultCache: 'cache: off for this run (--no-cache)' };
const base = (id: string) => ({ id, kind: 'run', queue: 'cpu' as const, needs: ['a'] });

describe('carried run state', () => {
  const plain: StageStatus = {
    ...base('s1'),
    state: 'succeeded',
    attempt: 1,
    metrics: {},
    attempts: [{ attempt: 1, startedAt: '2026-11-30T10:00:00.000Z', endedAt: '2026-11-30T10:00:01.000Z' }],
    startedAt: '2026-11-30T10:00:00.000Z',
    endedAt: '2026-11-30T10:00:01.000Z',
    manifestKey: 'runs/big-run/s1/manifest.json',
    cache: 'cache: off for this run (--no-cache)',
    result: {},
  };

  it('round-trips a plain succeeded stage and packs it to well under 200 bytes', () => {
    const packed = packStage(plain, ctx);
    assert.ok(JSON.stringify(packed).length < 200, JSON.stringify(packed));
    const back = unpackStage(packed, base('s1'), ctx);
    assert.deepEqual({ ...back, result: back.result ?? {} }, plain);
  });

  it("keeps what differs from the defaults: failures, metrics, a cache hit, another run's manifest", () => {
    const rich: StageStatus = {
      ...plain,
      state: 'cached',
      attempt: 0,
      metrics: { loss: 1.5 },
      attempts: [],
      cache: 'cache hit: outputs of run earlier',
      cachedFrom: 'earlier',
      manifestKey: 'runs/big-run/s1/manifest.json',
      result: { tokens: 3 },
    };
    assert.deepEqual(unpackStage(packStage(rich, ctx), base('s1'), ctx), rich);
    const retried: StageStatus = {
      ...plain,
      attempt: 2,
      attempts: [
        { attempt: 1, startedAt: plain.startedAt!, endedAt: plain.startedAt!, failure: 'StageCrashed: boom' },
        { attempt: 2, startedAt: plain.startedAt!, endedAt: plain.endedAt! },
      ],
      result: { x: 1 },
    };
    assert.deepEqual(unpackStage(packStage(retried, ctx), base('s1'), ctx), retried);
  });

  it('reads state carried in full by the first version', () => {
    const { id: _i, kind: _k, queue: _q, needs: _n, ...full } = plain;
    assert.deepEqual(unpackStage(full, base('s1'), ctx), plain);
  });

  it('5,000 plain stages carry in well under the 2 MB payload limit', () => {
    const all = Array.from({ length: 5000 }, (_, i) => packStage({ ...plain, id: `stage-${i}`, manifestKey: `runs/big-run/stage-${i}/manifest.json` }, ctx));
    const bytes = JSON.stringify(all).length;
    assert.ok(bytes < 800_000, `${bytes} bytes`);
  });
});

describe('payloads with stage results: within the 2 MB Temporal takes', () => {
  const stage = (id: string, bytes: number): { id: string; state: string; result: { text: string }; resultOmitted?: true } => ({
    id,
    state: 'succeeded',
    result: { text: 'x'.repeat(bytes) },
  });

  it('counts UTF-8 bytes as Buffer.byteLength does (Japanese, emoji, ASCII)', () => {
    for (const t of ['', 'abc', '鍛錬', 'loss が下がった 📉', '\u00e9\u0800\uffff']) assert.equal(utf8Bytes(t), Buffer.byteLength(t), t);
    assert.equal(jsonBytes({ a: '鍛錬' }), Buffer.byteLength(JSON.stringify({ a: '鍛錬' })));
  });

  it('sizes a plain value without writing its JSON: exact within the limit, over it past the limit, at once', () => {
    const values: unknown[] = [
      { a: [1, 2.5, null, true, 'x'], b: { c: '鍛錬 📉', d: undefined, e: [] }, '"q"': '\n\t\\' },
      [undefined, () => 1, 'é'],
      'lone \ud800',
      {},
      -0.000123,
    ];
    for (const v of values) assert.equal(jsonBytesUpTo(v, 1e9), jsonBytes(v), JSON.stringify(v));
    const huge = Array.from({ length: 30 }, () => 'x'.repeat(1_000_000));
    const t0 = performance.now();
    assert.ok(jsonBytesUpTo({ huge }, 1000) > 1000);
    assert.ok(performance.now() - t0 < 50, 'stops at the limit');
  });

  it('leaves a payload within the budget as it is', () => {
    const stages = [stage('a', 100), stage('b', 200)];
    const fit = fitResults(stages, (st) => ({ stages: st }));
    assert.equal(fit.omitted, 0);
    assert.deepEqual(fit.stages, stages);
  });

  it('leaves results out largest first until the payload fits, marks them, and changes nothing else', () => {
    const stages = [stage('a', 300_000), stage('b', 900_000), stage('c', 500_000), stage('d', 10)];
    const wrap = (st: readonly object[]) => ({ pipeline: 'p', stages: st });
    assert.ok(jsonBytes(wrap(stages)) > PAYLOAD_BUDGET_BYTES);
    const fit = fitResults(stages, wrap);
    // Without b (900 kB) the rest is 800 kB: within 1.5 MiB, so b alone goes.
    assert.equal(fit.omitted, 1);
    assert.deepEqual(fit.stages[1], { id: 'b', state: 'succeeded', resultOmitted: true });
    assert.equal(fit.stages[0], stages[0]);
    assert.ok(jsonBytes(wrap(fit.stages)) <= PAYLOAD_BUDGET_BYTES);
    assert.equal(stages[1].result.text.length, 900_000, 'the input is not changed');
  });

  it('5,000 stages with 1 KiB results each (5 MB): the payload ends within the budget and no more is left out than needed', () => {
    const stages = Array.from({ length: 5000 }, (_, i) => stage(`s${i}`, 1024));
    const fit = fitResults(stages, (st) => ({ stages: st }));
    const size = jsonBytes({ stages: fit.stages });
    // One more result kept (~1,030 bytes more) would not fit.
    assert.ok(size <= PAYLOAD_BUDGET_BYTES && size > PAYLOAD_BUDGET_BYTES - 1030, `${size} bytes`);
    assert.equal(fit.stages.filter((s) => s.resultOmitted).length, fit.omitted);
  });

  it('then cuts the texts that many failing stages pile up: reasons, messages, failures, attempts listed', () => {
    type Failing = WithResult & {
      id: string;
      state: string;
      attempt: number;
      reason: string;
      message: string;
      attempts: Array<{ attempt: number; failure?: string }>;
    };
    const failing: Failing[] = Array.from({ length: 2000 }, (_, i) => ({
      id: `s${i}`,
      state: 'failed',
      attempt: 5,
      reason: 'StageCrashed: '.padEnd(4000, 'e'),
      message: 'step 3'.padEnd(500, '.'),
      attempts: Array.from({ length: 5 }, (_, a) => ({ attempt: a + 1, startedAt: 't', failure: 'x'.repeat(1000) })),
    }));
    const size = (st: readonly object[]) => jsonBytes({ stages: st });
    assert.ok(size(failing) > 5 * PAYLOAD_BUDGET_BYTES);
    const fit = fitResults(failing, (st) => ({ stages: st }));
    assert.equal(fit.textsCut, true);
    assert.ok(size(fit.stages) <= PAYLOAD_BUDGET_BYTES, `${size(fit.stages)} bytes`);
    const one = fit.stages[0];
    assert.equal(one.attempt, 5, 'the attempts are still counted');
    assert.ok(one.reason.startsWith('StageCrashed: ') && one.reason.length <= 201);
    assert.equal(failing[0].reason.length, 4000, 'the input is not changed');
    // 300 such stages fit with their texts cut to 200 characters and their last 3 attempts.
    const some = fitResults(failing.slice(0, 300), (st) => ({ stages: st }));
    assert.equal(some.stages[0].attempts?.length, 3);
    assert.equal(some.stages[0].attempts?.[2].failure?.length, 201);
  });

  /**
   * What a run continues as new with (workflows/pipeline.ts: its spec, its options and its packed stages) at its
   * worst: the most stages, all failed with long texts, beside a spec of the largest size; with `sweeps`, four of the
   * stages are asha sweeps of 256 trials (the pipeline's most, 1,024), each trial failed with the longest reason
   * (500 characters, workflows/sweep.ts), a trial-rung at each of 8 rungs, and the most parameters the spec may give
   * them (MAX_PIPELINE_SWEEP_PARAMS_BYTES over 1,024 trials: 256 bytes each).
   */
  const worstRun = (sweeps: boolean) => {
    const at = '2026-12-01T10:00:00.000Z';
    const trialParams = { prompt: 'p'.repeat(MAX_PIPELINE_SWEEP_PARAMS_BYTES / MAX_PIPELINE_SWEEP_TRIALS - '{"prompt":""}'.length) };
    assert.equal(jsonBytes(trialParams), MAX_PIPELINE_SWEEP_PARAMS_BYTES / MAX_PIPELINE_SWEEP_TRIALS);
    const sweep = (s: number): SweepStatus => ({
      scheduler: 'asha',
      metric: 'loss',
      goal: 'min',
      rungs: Array.from({ length: MAX_SWEEP_RUNGS }, () => null),
      reason: 'no trial of the sweep finished: '.padEnd(500, 'r'),
      trials: Array.from({ length: MAX_PIPELINE_SWEEP_TRIALS / 4 }, (_, t) => ({
        trial: `train-${s}.trial-${String(t).padStart(3, '0')}`,
        params: trialParams,
        rung: MAX_SWEEP_RUNGS - 1,
        state: 'failed' as const,
        step: 123_456,
        reason: 'StageCrashed: '.padEnd(500, 'e'),
        runs: Array.from({ length: MAX_SWEEP_RUNGS }, (_, rung) => ({
          rung,
          startedAt: at,
          endedAt: at,
          attempt: 3,
          step: 123_456,
          resumedFrom: `runs/big-run/train-${s}/trial-${t}/ckpt-${rung}`,
        })),
      })),
    });
    const failed: StageStatus[] = Array.from({ length: MAX_STAGES }, (_, i) => ({
      ...base(`tokenize-shard-${String(i).padStart(4, '0')}`),
      state: 'failed',
      attempt: 3,
      startedAt: at,
      endedAt: at,
      step: 100,
      total: 1000,
      metrics: { loss: 1.2345 },
      reason: 'InvalidStageInput: '.padEnd(300, 'e'),
      message: 'reading shard '.padEnd(300, '.'),
      cache: 'cache miss: params changed: '.padEnd(100, 'p'),
      attempts: [1, 2, 3].map((attempt) => ({ attempt, startedAt: at, endedAt: at, failure: 'x'.repeat(300) })),
      ...(sweeps && i < 4 ? { sweep: sweep(i) } : {}),
    }));
    const packed = failed.map((st) => packStage(st, ctx));
    // A spec of the largest size validation lets through (schemas/validate.ts).
    const spec = { name: 'p', stages: failed.map((st) => ({ id: st.id, run: ['tok'] })) };
    spec.name = 'p'.repeat(MAX_SPEC_BYTES - jsonBytes(spec) + 1);
    assert.equal(jsonBytes(spec), MAX_SPEC_BYTES);
    const wrap = (stages: readonly object[]) => ({ spec, options: {}, carried: { stages } });
    return { packed, wrap };
  };

  it("at worst keeps only the failures' types: the most stages, all failed with long texts, beside the largest spec stay under 2 MiB", () => {
    const { packed, wrap } = worstRun(false);
    const fit = fitResults(packed, wrap);
    const bytes = jsonBytes(wrap(fit.stages));
    assert.ok(bytes < 2 * 1024 * 1024, `${bytes} bytes`);
    const one = unpackStage(fit.stages[0], base('tokenize-shard-0000'), ctx);
    assert.equal(one.reason, 'InvalidStageInput');
    assert.deepEqual([one.state, one.attempt, one.step, one.message, one.cache], ['failed', 3, 100, undefined, '']);
    // One level up (texts at 40 characters) would not have fitted.
    assert.ok(
      jsonBytes(
        wrap(
          packed.map((st) => ({
            ...st,
            reason: st.reason!.slice(0, 40),
            message: st.message!.slice(0, 40),
            cache: st.cache!.slice(0, 40),
            attempts: undefined,
          })),
        ),
      ) >
        2 * 1024 * 1024,
    );
  });

  it("and with the pipeline's most swept trials beside them, all failed: their reasons cut to the type, their trial-rungs not listed", () => {
    const { packed, wrap } = worstRun(true);
    assert.ok(jsonBytes(wrap(packed)) > 6 * 1024 * 1024, 'the sweeps alone add ~3.5 MB');
    const fit = fitResults(packed, wrap);
    const bytes = jsonBytes(wrap(fit.stages));
    assert.ok(bytes < 2 * 1024 * 1024, `${bytes} bytes`);
    const swept = unpackStage(fit.stages[0], base('tokenize-shard-0000'), ctx);
    assert.equal(swept.sweep!.trials.length, MAX_PIPELINE_SWEEP_TRIALS / 4);
    assert.deepEqual(swept.sweep!.trials[7], {
      ...(packed[0].sweep!.trials[7] as object),
      reason: 'StageCrashed',
      runs: [],
    });
    assert.equal(swept.sweep!.reason, 'no trial of the sweep finished');
    assert.equal((packed[0].sweep!.trials[7] as { runs: unknown[] }).runs.length, MAX_SWEEP_RUNGS, 'the input is not changed');
  });

  it("leaves this run's manifest keys out of a task's inputs past 1 MiB: the largest fan-in a spec allows, under the longest run id", () => {
    // A stage runs under a run id of at most 200 characters (activities/stage-runner/attempt-dir.ts). A fan-in of
    // 4,999 stages fits a spec of 640 KiB with ids of at most 51 characters ({"id":"<51>","run":["true"]} and the
    // fan-in's needs list).
    const runId = 'r'.repeat(200);
    const id = (i: number) => `shard-${String(i).padStart(4, '0')}`.padEnd(51, '-');
    const stages = Array.from({ length: MAX_STAGES - 1 }, (_, i) => ({ id: id(i), run: ['true'] }));
    const merge = { id: 'merge', run: ['true'], needs: stages.map((st) => st.id), with: {} };
    assert.ok(jsonBytes({ name: 'p', stages: [...stages, merge] }) <= MAX_SPEC_BYTES);
    const inputs = stages.map((st) => ({ stage: st.id, manifestKey: `runs/${runId}/${st.id}/manifest.json` }));
    // One reused from another run (`tanren submit --reuse`, a reset) keeps its key.
    inputs[7] = { ...inputs[7], manifestKey: `runs/earlier/${id(7)}/manifest.json` };
    // The task as the workflow sends it (activities/types.ts StageTask): 97 % of Temporal's 2 MiB with every key.
    const task = (ins: readonly object[]) => ({ runId, pipeline: 'p', stage: merge, queue: 'cpu', inputs: ins });
    assert.ok(jsonBytes(task(inputs)) > 0.95 * 2 * 1024 * 1024, `${jsonBytes(task(inputs))} bytes`);
    const fit = fitInputs(inputs, runId);
    // {"stage":"<51>"} is 1 + 8 + 53 + 1 = 63 bytes, and a comma.
    assert.equal(jsonBytes(fit), 2 + (MAX_STAGES - 1) * 64 - 1 + (jsonBytes(inputs[7]) - 63));
    assert.ok(jsonBytes(task(fit)) < 0.4 * 2 * 1024 * 1024, `${jsonBytes(task(fit))} bytes`);
    assert.deepEqual(fit[0], { stage: id(0) });
    assert.deepEqual(fit[7], inputs[7]);
    assert.equal(inputs[0].manifestKey.length, 271, 'the input is not changed');
    const few = inputs.slice(0, 10);
    assert.deepEqual(fitInputs(few, runId), few, 'within the budget the keys stay');
  });

  it("bounds a stage's result: each value, then the whole, in bytes (a Japanese string counts 3 per character)", () => {
    const same = (t: string) => t;
    const one = boundResult({ big: 'x'.repeat(MAX_RESULT_VALUE_BYTES + 1), ok: 1 }, same);
    assert.match(one.big as string, /too large for the run's history/);
    assert.equal(one.ok, 1);
    // 6,000 characters of Japanese are 18,000 bytes: over the per-value bound although under it in characters.
    assert.match(boundResult({ ja: '鍛'.repeat(6000) }, same).ja as string, /^\[18002 bytes: too large/);
    const many = Object.fromEntries(Array.from({ length: 20 }, (_, i) => [`k${i}`, 'y'.repeat(15_000)]));
    const bounded = boundResult(many, same);
    const kept = Object.values(bounded).filter((v) => (v as string).length === 15_000).length;
    assert.equal(kept, Math.floor(MAX_RESULT_BYTES / (15_002 + 3 + 4)));
    assert.match(bounded.k19 as string, /past the 131072 bytes of a result/);
    assert.ok(Buffer.byteLength(JSON.stringify(bounded)) < MAX_RESULT_BYTES + 20 * 200);
  });
});
