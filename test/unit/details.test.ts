/**
 * The markdown stage table of Current Details (workflows/details.ts), as
 * text: its shape, the gap after every cell, the reason row, escaping, the
 * report line and the size cap. How the UI draws it: test/services/ui.test.ts.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CELL_GAP, MAX_DETAILS_ROWS, renderDetails } from '../../workflows/details.js';
import type { RunStatus, StageStatus } from '../../workflows/pipeline.js';

function stage(id: string, over: Partial<StageStatus> = {}): StageStatus {
  return { id, kind: 'run', queue: 'cpu', needs: [], state: 'succeeded', attempt: 1, metrics: {}, attempts: [], ...over };
}

function run(stages: StageStatus[], state: RunStatus['state'] = 'running'): RunStatus {
  return { pipeline: 'demo', state, stages, startedAt: '2026-01-01T00:00:00.000Z' };
}

/**
 * The table's rows, each split into its cells at the unescaped `|`s, cells as
 * written (escapes kept) less the ASCII spaces that markdown trims.
 */
function tableRows(md: string): string[][] {
  return md
    .split('\n')
    .filter((l) => l.startsWith('|'))
    .map((l) =>
      l
        .slice(1, -1)
        .split(/(?<!\\)\|/)
        .map((c) => c.replace(/^ +| +$/g, '')),
    );
}

/** A cell as the reader sees it: the gap removed, escapes undone. */
const text = (cell: string) => cell.replaceAll(CELL_GAP, '').replace(/\\(.)/g, '$1').trim();

describe('renderDetails', () => {
  const status = run([
    stage('shard', { metrics: { rows: 10 } }),
    stage('freq-0', { state: 'running', attempt: 2, step: 3, total: 4, metrics: { distinct_words: 63, words: 258, loss: 2.345678, extra: 1 } }),
    stage('merge', { state: 'pending', attempt: 0 }),
  ]);

  it('renders a left-aligned five-column table with a title line', () => {
    const md = renderDetails(status);
    assert.equal(md.split('\n')[0], '**demo** — running · 1 of 3 stages done');
    const rows = tableRows(md);
    assert.deepEqual(rows[0].map(text), ['stage', 'state', 'attempt', 'progress', 'last metrics']);
    assert.deepEqual(rows[1], [':--', ':--', ':--', ':--', ':--']);
    assert.deepEqual(
      rows.slice(2).map((r) => r.map(text)),
      [
        ['shard', 'succeeded', '1', '', 'rows=10'],
        ['freq-0', 'running', '2', '3/4', 'distinct_words=63 words=258 loss=2.346'],
        ['merge', 'pending', '', '', ''],
      ],
    );
  });

  it('ends every cell but the last of each row with no-break spaces, so columns never touch', () => {
    for (const r of tableRows(renderDetails(status)).filter((r) => !r[0].startsWith(':'))) {
      assert.equal(r.length, 5);
      r.slice(0, -1).forEach((cell) => assert.ok(cell.endsWith(CELL_GAP), `cell ${JSON.stringify(cell)} has no gap`));
      assert.ok(!r[4].includes(CELL_GAP));
    }
    assert.match(CELL_GAP, /^\u00a0+$/);
  });

  it('puts a reason in a row of its own under the state', () => {
    const rows = tableRows(
      renderDetails(
        run(
          [
            stage('check', { state: 'failed', reason: 'InvalidStageInput: stage "check" exited with code 2: bad row' }),
            stage('train', { state: 'skipped', attempt: 0, reason: 'needs "check", which did not succeed' }),
          ],
          'failed',
        ),
      ),
    ).slice(2);
    assert.deepEqual(
      rows.map((r) => r.map(text)),
      [
        ['check', 'failed', '1', '', ''],
        ['', '↳\u00a0InvalidStageInput: stage "check" exited with code 2: bad row', '', '', ''],
        ['train', 'skipped', '', '', ''],
        ['', '↳\u00a0needs "check", which did not succeed', '', '', ''],
      ],
    );
  });

  it('escapes markup in stage text and keeps a row on one line', () => {
    const reason = 'StageCrashed: a | b <script>x</script> *bold* `code` [l](u) ~~s~~ $m$ &amp; _e_ \\ end\nsecond line';
    const md = renderDetails(run([stage('s_1', { state: 'retrying', reason, metrics: { 'a|b': 1 } })]));
    const rows = tableRows(md).slice(2);
    assert.equal(rows.length, 2);
    assert.equal(rows[0].length, 5);
    assert.equal(text(rows[0][4]), 'a|b=1');
    assert.ok(reason.length < 100);
    assert.equal(text(rows[1][1]), `↳\u00a0${reason.replace('\n', ' ')}`);
    assert.ok(!/(?<!\\)[<|*`[~$&_]/.test(rows[1][1].replace(/\\\\/g, '')), `unescaped markup in ${rows[1][1]}`);
  });

  it('cuts a long reason', () => {
    const rows = tableRows(renderDetails(run([stage('a', { state: 'failed', reason: 'x'.repeat(500) })]))).slice(2);
    assert.equal(text(rows[1][1]), `↳\u00a0${'x'.repeat(99)}…`);
  });

  it('links the report when the run has one', () => {
    assert.doesNotMatch(renderDetails(status), /Report/);
    assert.equal(renderDetails(status, { reportKey: 'runs/demo-1/report/index.html' }).split('\n')[2], 'Report: `runs/demo-1/report/index.html`');
    assert.equal(
      renderDetails(status, { reportKey: 'runs/demo-1/report/index.html', reportUrl: 'http://127.0.0.1:9000/b/runs/demo-1/report/index.html?x=(1) 2' }).split(
        '\n',
      )[2],
      'Report: [runs/demo-1/report/index.html](http://127.0.0.1:9000/b/runs/demo-1/report/index.html?x=%281%29%202)',
    );
    assert.equal(renderDetails(status, { reportUrl: 'https://h/r.html' }).split('\n')[2], 'Report: [open](https://h/r.html)');
    // Not a web address: no link, the key as text.
    assert.equal(renderDetails(status, { reportKey: 'k', reportUrl: 'javascript:alert(1)' }).split('\n')[2], 'Report: `k`');
  });

  it('shows at most MAX_DETAILS_ROWS stages, active ones first, and counts the others', () => {
    const stages = Array.from({ length: 1000 }, (_, i) =>
      stage(`stage-${i}`, { state: i < 900 ? 'succeeded' : 'pending', reason: i === 999 ? 'y'.repeat(300) : undefined }),
    );
    stages[500] = stage('stage-500', { state: 'failed', reason: 'OutOfMemory: '.padEnd(400, 'z') });
    stages[950] = stage('stage-950', { state: 'running', metrics: { loss: 1.5, lr: 0.0003, tokens_per_s: 48211.7 } });
    const md = renderDetails(run(stages));
    const ids = tableRows(md)
      .slice(2)
      .map((r) => text(r[0]))
      .filter(Boolean);
    assert.equal(ids.length, MAX_DETAILS_ROWS);
    assert.ok(ids.includes('stage-500') && ids.includes('stage-950'));
    assert.deepEqual(
      ids,
      [...ids].sort((a, b) => Number(a.split('-')[1]) - Number(b.split('-')[1])),
      'rows in spec order',
    );
    assert.match(md, /\n…and 970 more stages: succeeded 871, pending 99$/);
    assert.ok(md.length < 8000, `${md.length} characters`);
  });

  it('is deterministic and renders a run without stages', () => {
    assert.equal(renderDetails(status), renderDetails(structuredClone(status)));
    assert.equal(renderDetails(run([], 'failed')), '**demo** — failed · 0 of 0 stages done');
  });

  it("shows a swept stage's trials as a table: params, rung, step, metric, state, and the best with its reason", () => {
    const trial = (n: number, state: string, rung: number, metric?: number) => ({
      trial: `pre.trial-0${n}`,
      params: { lr: 0.001234567, warmup_steps: n },
      rung,
      state: state as 'best',
      step: rung * 3,
      ...(metric !== undefined ? { metric } : {}),
      runs: [],
    });
    const md = renderDetails(
      run([
        stage('pre', {
          kind: 'pretrain',
          sweep: {
            scheduler: 'asha',
            metric: 'loss',
            goal: 'min',
            rungs: [3, 6],
            trials: [trial(0, 'stopped-early', 1, 5.5), trial(1, 'best', 2, 4.25), trial(2, 'running', 1)],
            best: 'pre.trial-01',
            reason: 'lowest loss | a pipe',
          },
        }),
      ]),
    );
    assert.match(md, /\*\*pre\*\* sweep — asha, 3 trials, loss \(min\)/);
    const rows = tableRows(md).map((r) => r.map(text));
    assert.deepEqual(rows.at(-5), ['trial', 'params', 'rung', 'step', 'metric', 'state']);
    assert.deepEqual(rows.at(-2), ['trial-01', 'lr=0.001235 warmup_steps=1', '2', '6', '4.25', 'best']);
    assert.deepEqual(rows.at(-1), ['trial-02', 'lr=0.001235 warmup_steps=2', '1', '3', '', 'running']);
    assert.match(md, /Best: pre\.trial-01 — lowest loss \\\| a pipe/);
  });
});
