import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { planStages, type StageState } from '../../workflows/planner.js';

const diamond = [
  { id: 'a', needs: [] },
  { id: 'b', needs: ['a'] },
  { id: 'c', needs: ['a'] },
  { id: 'd', needs: ['b', 'c'] },
];

describe('planStages', () => {
  it('starts the roots first', () => {
    assert.deepEqual(planStages(diamond, {}), { ready: ['a'], skip: [], finished: false });
  });

  it('releases independent stages together once their needs are done', () => {
    assert.deepEqual(planStages(diamond, { a: 'succeeded' }).ready, ['b', 'c']);
    assert.deepEqual(planStages(diamond, { a: 'cached' }).ready, ['b', 'c']);
  });

  it('waits for every need', () => {
    assert.deepEqual(planStages(diamond, { a: 'succeeded', b: 'succeeded', c: 'running' }).ready, []);
    assert.deepEqual(planStages(diamond, { a: 'succeeded', b: 'succeeded', c: 'retrying' }).ready, []);
  });

  it('never re-plans a stage that is not pending', () => {
    assert.deepEqual(planStages(diamond, { a: 'running' }).ready, []);
  });

  it('skips everything downstream of a failure, transitively, and keeps other branches going', () => {
    const graph = [...diamond, { id: 'e', needs: ['d'] }, { id: 'x', needs: [] }];
    const plan = planStages(graph, { a: 'succeeded', b: 'failed', c: 'running' });
    assert.deepEqual(plan.skip, [
      { id: 'd', because: 'b' },
      { id: 'e', because: 'd' },
    ]);
    assert.deepEqual(plan.ready, ['x']);
    assert.equal(plan.finished, false);
  });

  it('finishes when every stage is terminal', () => {
    const states: Record<string, StageState> = { a: 'succeeded', b: 'succeeded', c: 'cached', d: 'succeeded' };
    assert.equal(planStages(diamond, states).finished, true);
    assert.equal(planStages(diamond, { a: 'failed' }).finished, true);
    assert.equal(planStages(diamond, { a: 'cancelled' }).skip.length, 3);
  });
});
