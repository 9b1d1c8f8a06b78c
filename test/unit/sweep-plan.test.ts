import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MAX_PIPELINE_SWEEP_PARAMS_BYTES, MAX_PIPELINE_SWEEP_TRIALS, MAX_SWEEP_TRIALS, type SweepSpec } from '../../schemas/pipeline.js';
import { formatProblems, maxTrialParamsBytes, validatePipelineSpec } from '../../schemas/validate.js';
import { expectedOutcome, gridSize, pickBest, planSweep, promote, rankScores, seededRandom, trialParams } from '../../workflows/sweep-plan.js';

const asha: SweepSpec = {
  scheduler: 'asha',
  space: { lr: { log_uniform: [1e-4, 1e-2] }, warmup_steps: [0, 2, 4] },
  metric: { name: 'loss' },
  budget: { trials: 8, steps: 4 },
  eta: 2,
  rungs: 3,
  seed: 7,
};

describe('sweep plan', () => {
  it('draws the same trials for the same seed, and others for another seed', () => {
    const a = planSweep('pretrain', asha);
    const b = planSweep('pretrain', asha);
    assert.deepEqual(a, b);
    const c = planSweep('pretrain', { ...asha, seed: 8 });
    assert.notDeepEqual(
      a.trials.map((t) => t.params),
      c.trials.map((t) => t.params),
    );
    assert.equal(a.trials.length, 8);
    assert.deepEqual(
      a.trials.map((t) => t.id),
      [
        'pretrain.trial-00',
        'pretrain.trial-01',
        'pretrain.trial-02',
        'pretrain.trial-03',
        'pretrain.trial-04',
        'pretrain.trial-05',
        'pretrain.trial-06',
        'pretrain.trial-07',
      ],
    );
    for (const t of a.trials) {
      const lr = t.params.lr as number;
      assert.ok(lr >= 1e-4 && lr <= 1e-2, `lr ${lr} in range`);
      assert.ok([0, 2, 4].includes(t.params.warmup_steps as number));
    }
    // Distinct draws, not one value repeated.
    assert.ok(new Set(a.trials.map((t) => t.params.lr)).size >= 7);
  });

  it('spreads log-uniform draws over the decades', () => {
    const plan = planSweep('s', { ...asha, budget: { trials: 200, steps: 1 } });
    const low = plan.trials.filter((t) => (t.params.lr as number) < 1e-3).length;
    // Half the draws in each decade, not nine in ten in the upper one as a uniform draw would give.
    assert.ok(low > 70 && low < 130, `${low} of 200 below 1e-3`);
  });

  it('the PRNG is uniform enough and in [0, 1)', () => {
    const r = seededRandom(1);
    let sum = 0;
    for (let i = 0; i < 10_000; i++) {
      const x = r();
      assert.ok(x >= 0 && x < 1);
      sum += x;
    }
    assert.ok(Math.abs(sum / 10_000 - 0.5) < 0.02);
  });

  it('rungs end at steps·eta^k; trials get the full length and a stop before the last rung', () => {
    const plan = planSweep('pretrain', asha);
    assert.deepEqual(plan.rungs, [4, 8, 16]);
    const t = plan.trials[3];
    assert.deepEqual(trialParams(plan, { max_tokens: 99, seq_len: 32 }, t, 0), { seq_len: 32, ...t.params, max_steps: 16, stop_at_step: 4 });
    assert.equal(trialParams(plan, {}, t, 1).stop_at_step, 8);
    assert.equal(trialParams(plan, {}, t, 2).stop_at_step, undefined);
    assert.equal(trialParams(plan, {}, t, 2).max_steps, 16);
  });

  it('grid runs every combination, the last parameter varying fastest', () => {
    const plan = planSweep('sft', { scheduler: 'grid', space: { lr: [1, 2], seed: [5, 6, 7] }, metric: { name: 'loss', goal: 'max' }, budget: {} });
    assert.equal(gridSize({ lr: [1, 2], seed: [5, 6, 7] }), 6);
    assert.deepEqual(
      plan.trials.map((t) => t.params),
      [
        { lr: 1, seed: 5 },
        { lr: 1, seed: 6 },
        { lr: 1, seed: 7 },
        { lr: 2, seed: 5 },
        { lr: 2, seed: 6 },
        { lr: 2, seed: 7 },
      ],
    );
    assert.deepEqual(plan.rungs, [undefined]);
    assert.deepEqual(trialParams(plan, { lr: 0, x: 1 }, plan.trials[4], 0), { lr: 2, seed: 6, x: 1 });
  });

  it('promotes the top 1/eta, best first, ties by trial index, failed trials never', () => {
    const scores = [
      { index: 0, metric: 3 },
      { index: 1, metric: 1 },
      { index: 2 },
      { index: 3, metric: 1 },
      { index: 4, metric: Number.NaN },
      { index: 5, metric: 2 },
      { index: 6, metric: 5 },
      { index: 7, metric: 4 },
    ];
    assert.deepEqual(promote(scores, 2, 'min'), [1, 3, 5, 0]);
    assert.deepEqual(promote(scores, 2, 'max'), [6, 7, 0, 5]);
    assert.deepEqual(promote(scores, 4, 'min'), [1, 3]);
    assert.deepEqual(promote([{ index: 0, metric: 1 }], 2, 'min'), [0], 'one trial always goes on');
    assert.deepEqual(promote([{ index: 0 }, { index: 1 }], 2, 'min'), []);
    assert.deepEqual(
      rankScores(scores, 'min').map((s) => s.index),
      [1, 3, 5, 0, 7, 6, 2, 4],
    );
  });

  it('picks the best trial with a reason', () => {
    const plan = planSweep('pretrain', asha);
    const best = pickBest(plan, [
      { index: 5, metric: 2.5 },
      { index: 2, metric: 2.25 },
    ]);
    assert.equal(best?.index, 2);
    assert.equal(best?.metric, 2.25);
    assert.match(best.reason, /lowest loss \(2\.25\) of the 2 trials that ran rung 3 to step 16 \(asha, eta 2, 8 trials\); runner-up trial-05 at 2\.5/);
    assert.match(
      pickBest(plan, [
        { index: 5, metric: 2 },
        { index: 2, metric: 2 },
      ])!.reason,
      /tie broken by trial index/,
    );
    assert.equal(
      pickBest(plan, [
        { index: 5, metric: 2 },
        { index: 2, metric: 2 },
      ])!.index,
      2,
    );
    assert.equal(pickBest(plan, [{ index: 1 }]), undefined);
  });

  it('counts what asha stops at each rung', () => {
    assert.deepEqual(expectedOutcome(8, 2, 3), { stoppedAtRung: [4, 2], finished: 2 });
    assert.deepEqual(expectedOutcome(9, 3, 3), { stoppedAtRung: [6, 2], finished: 1 });
    assert.deepEqual(expectedOutcome(3, 2, 4), { stoppedAtRung: [2, 0, 0], finished: 1 });
  });
});

describe('sweep validation', () => {
  const spec = (sweep: unknown, extra: Record<string, unknown> = {}) => ({
    name: 'p',
    stages: [{ id: 'pre', uses: 'pretrain', with: { seq_len: 32 }, sweep, ...extra }],
  });
  const problems = (raw: unknown) => {
    const v = validatePipelineSpec(raw);
    return v.ok ? '' : formatProblems(v.problems, 'x.yaml');
  };

  it('accepts a well-formed asha sweep', () => {
    assert.equal(problems(spec(asha)), '');
  });

  it('names file, stage and field of each problem', () => {
    assert.match(problems(spec({ ...asha, eta: 1 })), /x\.yaml: stage "pre": stages\[0\]\.sweep\.eta/);
    assert.match(
      problems(spec({ ...asha, space: { lr: [1], nonsense: [1, 2] } })),
      /x\.yaml: stage "pre": stages\[0\]\.sweep\.space\.nonsense: "nonsense" is not a parameter of this stage/,
    );
  });

  it('refuses budgets and schedulers that cannot work', () => {
    assert.match(problems(spec({ ...asha, budget: { trials: 8 } })), /sweep\.budget\.steps: asha needs budget\.steps/);
    assert.match(problems(spec({ ...asha, budget: { trials: 300, steps: 4 } })), /sweep\.budget\.trials/);
    assert.match(problems(spec({ ...asha, budget: { steps: 4 } })), /asha needs budget\.trials/);
    assert.match(problems(spec({ ...asha, space: { max_steps: [1, 2] } })), /"max_steps" is set by the sweep/);
    assert.match(problems(spec({ ...asha, metric: { name: '' } })), /sweep\.metric\.name/);
    assert.match(problems(spec({ ...asha, budget: { trials: 8, steps: 5_000_000 } })), /last rung would end after/);
    assert.match(problems({ name: 'p', stages: [{ id: 's', uses: 'sft', sweep: asha }] }), /kind "sft" cannot do/);
    assert.match(problems(spec({ scheduler: 'grid', space: { lr: { uniform: [0, 1] } }, metric: { name: 'loss' } })), /grid needs a list/);
    const big = Object.fromEntries(Array.from({ length: 9 }, (_, i) => [`p${i}`, [1, 2]]));
    assert.match(
      problems({
        name: 'p',
        stages: [
          {
            id: 'r',
            run: ['x'],
            with: Object.fromEntries(Object.keys(big).map((k) => [k, 0])),
            sweep: { scheduler: 'grid', space: big, metric: { name: 'loss' } },
          },
        ],
      }),
      /512 combinations/,
    );
    assert.match(
      problems(spec({ scheduler: 'random', space: { lr: [1] }, metric: { name: 'loss' }, budget: { trials: 2 }, eta: 3 })),
      /eta is for the asha scheduler/,
    );
  });

  it("bounds the trials of all the pipeline's sweeps together, naming the sweep that passes the limit", () => {
    const swept = (id: string, sweep: Record<string, unknown>) => ({ id, run: ['x'], with: { lr: 1 }, sweep: { metric: { name: 'loss' }, ...sweep } });
    const random = (id: string, trials: number) => swept(id, { scheduler: 'random', space: { lr: { uniform: [0, 1] } }, budget: { trials } });
    const full = Array.from({ length: MAX_PIPELINE_SWEEP_TRIALS / MAX_SWEEP_TRIALS }, (_, i) => random(`s${i}`, MAX_SWEEP_TRIALS));
    assert.equal(problems({ name: 'p', stages: full }), '', 'exactly the limit');
    // A grid's trials are its combinations.
    const grid = swept('g', { scheduler: 'grid', space: { lr: [1, 2, 3] } });
    assert.equal(
      problems({ name: 'p', stages: [...full, grid, random('after', 5)] }),
      `x.yaml: stage "g": stages[4].sweep.space: ${MAX_PIPELINE_SWEEP_TRIALS + 3} trials in all across the pipeline's sweeps ` +
        `(3 here, ${MAX_PIPELINE_SWEEP_TRIALS} before): a pipeline may run at most ${MAX_PIPELINE_SWEEP_TRIALS} ` +
        '(sweeps may run side by side in one history, and every trial travels with the run state); split the sweeps into pipelines of their own',
    );
    assert.match(
      problems({ name: 'p', stages: [...full.slice(1), random('x', 200), random('y', 57)] }),
      /^x\.yaml: stage "y": stages\[4\]\.sweep\.budget\.trials: 1025 trials/,
    );
    assert.ok(
      validatePipelineSpec({ name: 'p', stages: [...full, grid] }, { maxSweepTrials: Number.POSITIVE_INFINITY }).ok,
      'the limit can be lifted (old runs replay without it)',
    );
  });

  it("bounds the bytes of trial parameters of all the pipeline's sweeps together: trials times the largest trial", () => {
    // The largest trial's parameters, as JSON.stringify writes them (Japanese: 3 bytes a character in UTF-8).
    const space: SweepSpec['space'] = {
      prompt: ['短い', '鍛錬'.repeat(50), 'x'],
      lr: { log_uniform: [1e-5, 1e-2] },
      layers: { int_uniform: [-1000, 12] },
      on: [true, false],
    };
    const worst = { prompt: '鍛錬'.repeat(50), lr: -2.2250738585072014e-308, layers: -1000, on: false };
    assert.equal(maxTrialParamsBytes(space), Buffer.byteLength(JSON.stringify(worst)));
    // 256 trials of {"prompt":"<1,100 x>"}: 2 + 8 + 1 + 1,102 = 1,113 bytes each, 284,928 in all, over 262,144.
    const long = (id: string, trials: number, chars = 1100) => ({
      id,
      run: ['x'],
      with: { prompt: '' },
      sweep: { scheduler: 'random', space: { prompt: ['a', 'p'.repeat(chars)] }, metric: { name: 'loss' }, budget: { trials } },
    });
    assert.equal(
      problems({ name: 'p', stages: [long('a', 128), long('b', 128)] }),
      `x.yaml: stage "b": stages[1].sweep.space: 284928 bytes of trial parameters in all across the pipeline's sweeps ` +
        `(128 trials of up to 1113 bytes here, 142464 before): a pipeline's sweeps may carry at most ${MAX_PIPELINE_SWEEP_PARAMS_BYTES} ` +
        "(every trial's parameters travel with the run state, its status and its result); sweep shorter values (a long text goes in a file, and its path is swept) or fewer trials",
    );
    assert.equal(problems({ name: 'p', stages: [long('a', 128), long('b', 128, 900)] }), '', '(1,113 + 913) × 128 = 259,328: under');
    assert.ok(
      validatePipelineSpec({ name: 'p', stages: [long('a', 256)] }, { maxSweepParamsBytes: Number.POSITIVE_INFINITY }).ok,
      'the limit can be lifted (old runs replay without it)',
    );
  });

  it('lets a run stage sweep the parameters it sets', () => {
    assert.equal(
      problems({
        name: 'p',
        stages: [
          {
            id: 'r',
            run: ['x'],
            with: { a: 1 },
            sweep: { scheduler: 'random', space: { a: { int_uniform: [1, 4] } }, metric: { name: 'score', goal: 'max' }, budget: { trials: 3 } },
          },
        ],
      }),
      '',
    );
    assert.match(
      problems({
        name: 'p',
        stages: [{ id: 'r', run: ['x'], sweep: { scheduler: 'random', space: { lr: [1] }, metric: { name: 'm' }, budget: { trials: 3 } } }],
      }),
      /"lr" is not a parameter/,
    );
  });
});
