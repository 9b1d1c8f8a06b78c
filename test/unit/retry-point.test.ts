/**
 * `tanren retry`'s reset point (cli/retry-point.ts) in a recorded history with local stages
 * (test/histories/lean-local-stages.json: `prep` and `train` local, `after` an activity).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { historyFromJSON } from '@temporalio/common/lib/proto-utils.js';
import { findRetryPoint, RetryPointError } from '../../cli/retry-point.js';
import { ROOT } from '../helpers/env.js';

const history = () => historyFromJSON(JSON.parse(readFileSync(path.join(ROOT, 'test', 'histories', 'lean-local-stages.json'), 'utf8')) as unknown);

describe('tanren retry with local stages', () => {
  it('finds a local stage by its marker: the workflow task it ran in', () => {
    const events = history().events ?? [];
    // Both local stages ran in the first workflow task (WorkflowTaskCompleted is event 4); `after` was scheduled by it too.
    assert.deepEqual(findRetryPoint(events, 'train'), { stage: 'train', workflowTaskFinishEventId: 4 });
    assert.deepEqual(findRetryPoint(events, 'prep'), { stage: 'prep', workflowTaskFinishEventId: 4 });
    assert.deepEqual(findRetryPoint(events, 'after'), { stage: 'after', workflowTaskFinishEventId: 4 });
    assert.throws(() => findRetryPoint(events), RetryPointError, 'nothing failed');
  });

  it('a local stage whose marker records a failure is where a retry starts', () => {
    const events = history().events ?? [];
    const train = events.find((e) => e.markerRecordedEventAttributes?.markerName === 'core_local_activity' && Number(e.eventId) === 15)!;
    train.markerRecordedEventAttributes!.failure = { message: 'StageCrashed: exit 1' };
    assert.deepEqual(findRetryPoint(events), { stage: 'train', workflowTaskFinishEventId: 4 });
  });
});
