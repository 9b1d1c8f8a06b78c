import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';
import { parseDuration } from '../../schemas/durations.js';
import { pipelineJsonSchema, runInputJsonSchema, schemaFileText, stageEventJsonSchema } from '../../schemas/json-schema.js';
import { findCycle, formatProblems, MAX_SPEC_BYTES, MAX_STAGES, resolveSpec, stageQueue, validatePipelineSpec } from '../../schemas/validate.js';

const root = fileURLToPath(new URL('../../../', import.meta.url));

function spec(stages: unknown[], extra: Record<string, unknown> = {}) {
  return { name: 'p', stages, ...extra };
}

function problemsOf(raw: unknown) {
  const r = validatePipelineSpec(raw);
  assert.equal(r.ok, false, 'expected the spec to be invalid');
  return (r as { problems: Array<{ path: string; stage?: string; message: string }> }).problems;
}

describe('pipeline spec validation', () => {
  it('accepts every committed pipeline', () => {
    for (const file of ['pipelines/demo.yaml']) {
      const r = validatePipelineSpec(parse(readFileSync(root + file, 'utf8')));
      assert.equal(r.ok, true, `${file}: ${r.ok ? '' : formatProblems(r.problems, file)}`);
    }
  });

  it('rejects hostile input with a named problem, never a crash (depth, size, inherited params, tiny timeouts, huge graphs)', () => {
    let deep: Record<string, unknown> = { leaf: 1 };
    for (let i = 0; i < 5000; i++) deep = { nest: deep };
    assert.deepEqual(problemsOf(spec([{ id: 'a', run: ['x'], with: deep }])), [
      { path: 'stages[0].with', stage: 'a', message: 'nested more than 32 levels deep' },
    ]);
    assert.match(problemsOf(spec([{ id: 'a', run: ['x'], with: { blob: 'x'.repeat(300_000) } }]))[0].message, /bytes as JSON: at most 262144/);
    const inherited = problemsOf(spec([{ id: 'a', run: ['echo', '${{ params.constructor }}'] }]));
    assert.match(inherited[0].message, /unknown parameter "constructor"/);
    assert.match(problemsOf(spec([{ id: 'a', run: ['x'], timeout: '0.4ms' }]))[0].message, /between 1s and 30d/);
    assert.match(problemsOf(spec([{ id: 'a', run: ['x'], stallTimeout: '31d' }]))[0].message, /between 1s and 30d/);
    // 3,000 stages each needing an unknown stage: every problem is found, the message lists 50 and counts the rest.
    const many = problemsOf(spec(Array.from({ length: 3000 }, (_, i) => ({ id: `s${i}`, run: ['x'], needs: ['ghost'] }))));
    assert.equal(many.length, 3000);
    assert.ok(many[0].message.length < 400, 'the known stages are not all listed in each problem');
    const text = formatProblems(many, 'big.json');
    assert.equal(text.split('\n').length, 51);
    assert.match(text, /… and 2950 more problems$/);
    // A 10,000-stage chain: the size limit answers first; the cycle search would not overflow the stack either.
    assert.match(
      problemsOf(spec(Array.from({ length: 10_000 }, (_, i) => ({ id: `s${i}`, run: ['x'], ...(i ? { needs: [`s${i - 1}`] } : {}) }))))[0].message,
      /at most 5000/,
    );
    const chain = Array.from({ length: 50_000 }, (_, i) => ({ id: `s${i}`, needs: i ? [`s${i - 1}`] : [`s${49_999}`] }));
    assert.equal(findCycle(chain)?.length, 50_001);
  });

  it('rejects duplicate stage ids, naming both', () => {
    const p = problemsOf(
      spec([
        { id: 'a', run: ['true'] },
        { id: 'a', run: ['true'] },
      ]),
    );
    assert.equal(p.length, 1);
    assert.equal(p[0].stage, 'a');
    assert.equal(p[0].path, 'stages[1].id');
    assert.match(p[0].message, /duplicate stage id "a" \(first used by stages\[0\]\)/);
  });

  it('rejects unknown needs with the known ids', () => {
    const p = problemsOf(
      spec([
        { id: 'a', run: ['true'] },
        { id: 'b', needs: ['c'], run: ['true'] },
      ]),
    );
    assert.deepEqual(
      p.map((x) => [x.stage, x.path]),
      [['b', 'stages[1].needs[0]']],
    );
    assert.match(p[0].message, /unknown stage "c" \(stages: a, b\)/);
  });

  it('names the cycle', () => {
    const p = problemsOf(
      spec([
        { id: 'a', needs: ['c'], run: ['true'] },
        { id: 'b', needs: ['a'], run: ['true'] },
        { id: 'c', needs: ['b'], run: ['true'] },
        { id: 'd', run: ['true'] },
      ]),
    );
    assert.equal(p.length, 1);
    assert.match(p[0].message, /cycle in needs: a → c → b → a/);
  });

  it('rejects a stage that needs itself', () => {
    const p = problemsOf(spec([{ id: 'a', needs: ['a'], run: ['true'] }]));
    assert.ok(p.some((x) => /cannot need itself/.test(x.message)));
  });

  it('rejects unknown kinds and queues, listing the allowed values', () => {
    const p = problemsOf(
      spec([
        { id: 'a', uses: 'pretrian' },
        { id: 'b', run: ['true'], queue: 'tpu' },
      ]),
    );
    assert.equal(p[0].path, 'stages[0].uses');
    assert.match(p[0].message, /unknown stage kind "pretrian" \(known: .*pretrain/);
    assert.equal(p[1].path, 'stages[1].queue');
    assert.match(p[1].message, /unknown queue "tpu" \(known: cpu, gpu\)/);
  });

  it('rejects bad durations with the stage and field', () => {
    const p = problemsOf(spec([{ id: 'train', run: ['true'], timeout: '10 minutes', retry: { initialInterval: 'soon' } }]));
    assert.deepEqual(p.map((x) => [x.stage, x.path]).sort(), [
      ['train', 'stages[0].retry.initialInterval'],
      ['train', 'stages[0].timeout'],
    ]);
    assert.match(p[0].message, /not a duration/);
  });

  it('rejects stages with neither or both of uses and run', () => {
    const p = problemsOf(spec([{ id: 'a' }, { id: 'b', uses: 'tokenize', run: ['x'] }]));
    assert.match(p[0].message, /either `uses`/);
    assert.match(p[1].message, /not both/);
  });

  it('rejects unknown fields and unknown parameters', () => {
    const p = problemsOf(spec([{ id: 'a', run: ['echo', '${{ params.nope }}'], neds: ['b'] }], { params: { x: 1 } }));
    assert.match(p[0].message, /unknown field\(s\): neds/);
    assert.equal(p[0].stage, 'a');
    const q = problemsOf(spec([{ id: 'a', run: ['echo', '${{ params.nope }}'] }], { params: { x: 1 } }));
    assert.equal(q[0].path, 'stages[0].run[1]');
    assert.match(q[0].message, /unknown parameter "nope" \(params: x\)/);
  });

  it('lists every problem at once, each line naming file, stage and field', () => {
    const p = problemsOf(
      spec([
        { id: 'a', needs: ['x'], run: ['true'] },
        { id: 'b', uses: 'nope', timeout: 'later' },
      ]),
    );
    const text = formatProblems(p, 'pipelines/bad.yaml');
    assert.equal(text.split('\n').length, 3);
    for (const line of text.split('\n')) assert.match(line, /^pipelines\/bad\.yaml: stage "[ab]": stages\[\d\]\./);
  });

  it('substitutes parameters, keeping the type of whole references', () => {
    const r = validatePipelineSpec(
      spec([{ id: 'a', run: ['echo', 'lr=${{ params.lr }}'], with: { lr: '${{ params.lr }}', nested: ['${{params.name}}'] } }], {
        params: { lr: 0.001, name: 'x' },
      }),
    );
    assert.ok(r.ok);
    const resolved = resolveSpec(r.spec, { lr: 0.5 });
    assert.deepEqual(resolved.stages[0].with, { lr: 0.5, nested: ['x'] });
    assert.deepEqual(resolved.stages[0].run, ['echo', 'lr=0.5']);
  });

  it('picks queues from kinds', () => {
    assert.equal(stageQueue({ uses: 'pretrain' }), 'gpu');
    assert.equal(stageQueue({ uses: 'tokenize' }), 'cpu');
    assert.equal(stageQueue({ uses: 'pretrain', queue: 'cpu' }), 'cpu');
    assert.equal(stageQueue({}), 'cpu');
  });

  it('accepts local on cpu-queue stages and names the field where it cannot be', () => {
    const problems = (stage: Record<string, unknown>) => {
      const v = validatePipelineSpec({ name: 'p', stages: [{ id: 's', ...stage }] });
      return v.ok ? [] : v.problems.map((p) => `${p.path}: ${p.message}`);
    };
    assert.deepEqual(problems({ run: ['x'], local: true }), []);
    assert.deepEqual(problems({ uses: 'tokenize', local: true }), []);
    assert.match(problems({ run: ['x'], queue: 'gpu', local: true }).join('\n'), /^stages\[0\]\.local: .*only a cpu-queue stage can be local/);
    assert.match(problems({ uses: 'sft', local: true }).join('\n'), /^stages\[0\]\.local: /);
    assert.match(problems({ run: ['x'], with: { lr: 1 }, local: true, sweep: { space: { lr: [1, 2] } } }).join('\n'), /local: a swept stage/);
    assert.match(problems({ run: ['x'], local: 'yes' }).join('\n'), /local/);
  });

  it('finds no cycle in a diamond', () => {
    assert.equal(
      findCycle([
        { id: 'a', needs: [] },
        { id: 'b', needs: ['a'] },
        { id: 'c', needs: ['a'] },
        { id: 'd', needs: ['b', 'c'] },
      ]),
      undefined,
    );
  });
});

describe('spec size: a spec travels with its run state in one 2 MB payload', () => {
  const spec = (stages: number, withBytes: number) => ({
    name: 'big',
    stages: Array.from({ length: stages }, (_, i) => ({ id: `s${i}`, run: ['true'], with: { text: 'x'.repeat(withBytes) } })),
  });

  it(`refuses a spec over ${MAX_SPEC_BYTES / 1024} KiB as JSON, naming the limit and what to do`, () => {
    const checked = validatePipelineSpec(spec(600, 1200));
    assert.equal(checked.ok, false);
    const text = formatProblems(checked.ok ? [] : checked.problems, 'big.yaml');
    assert.match(text, /^big\.yaml: \(the whole spec\): more than 640 KiB as JSON, the most a pipeline spec may have .*move large `with:` values into a file/);
  });

  it('counts UTF-8 bytes: 250,000 Japanese characters (under 640 K characters) are 750,000 bytes', () => {
    const ja = { name: 'ja', stages: [{ id: 'a', run: ['true'], with: { prompt: '鍛'.repeat(250_000) } }] };
    assert.equal(validatePipelineSpec(ja).ok, false);
  });

  it(`takes the largest plain pipeline: ${MAX_STAGES} stages with short params`, () => {
    assert.equal(validatePipelineSpec(spec(MAX_STAGES, 40)).ok, true);
  });
});

describe('durations', () => {
  it('parses units and compounds', () => {
    assert.equal(parseDuration('500ms'), 500);
    assert.equal(parseDuration('30s'), 30_000);
    assert.equal(parseDuration('1h30m'), 5_400_000);
    assert.equal(parseDuration('1.5s'), 1500);
    assert.equal(parseDuration('2d'), 172_800_000);
  });
  it('rejects what is not a duration', () => {
    for (const bad of ['', '10', 'm', '1 h', '-1s', '0s', 'soon']) assert.equal(parseDuration(bad), undefined, bad);
  });
});

describe('JSON Schema export', () => {
  it('matches the committed files (run `npm run schema:export` after changing schemas/)', () => {
    assert.equal(readFileSync(root + 'schemas/pipeline.schema.json', 'utf8'), schemaFileText(pipelineJsonSchema()));
    assert.equal(readFileSync(root + 'schemas/run-input.schema.json', 'utf8'), schemaFileText(runInputJsonSchema()));
    assert.equal(readFileSync(root + 'schemas/stage-event.schema.json', 'utf8'), schemaFileText(stageEventJsonSchema()));
  });
  it('describes stage fields', () => {
    const s = JSON.stringify(pipelineJsonSchema());
    assert.match(s, /Stages that must succeed first/);
  });
});
