/**
 * Replays recorded histories of earlier runs against the current workflow
 * code: a change that would break runs already in flight fails here.
 * The `lean-` histories are runs of the `tanren-lean-progress-1` path
 * (progress in heartbeats, continue-as-new with carried state), recorded by
 * test/workflow/record-histories.ts; the others are older runs of the signal path.
 * Histories of megabytes (stage results past the payload budget) are kept gzipped (`.json.gz`).
 * Re-record only when a change is meant to be incompatible, and version it
 * with `patched()` first: see the header of test/workflow/record-histories.ts.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { describe, it } from 'node:test';
import { DefaultLogger, Runtime, Worker } from '@temporalio/worker';
import { workflowBundle } from '../../worker/run-worker.js';
import { LEAN_PROGRESS_PATCH, PAYLOAD_BUDGET_PATCH, SWEEP_PARAMS_PATCH, SWEEP_TRIALS_PATCH } from '../../workflows/pipeline.js';
import { ROOT } from '../helpers/env.js';

Runtime.install({ logger: new DefaultLogger('WARN') });

const dir = path.join(ROOT, 'test', 'histories');

/** Histories of the current (lean) path that test/workflow/record-histories.ts writes, one per behaviour of a run in flight. */
const LEAN_HISTORIES = [
  'cache-miss-then-run',
  'retry-after-crash',
  'oom-shrink',
  'pause-resume',
  'cancel',
  'reset',
  'continue-as-new-first',
  'continue-as-new-last',
  'failed',
  'one-activity',
  'local-stages',
  'stage-budget-first',
].map((s) => `lean-${s}.json`);
/** Gzipped histories of the lean path: runs whose payloads passed the budget (PAYLOAD_BUDGET_PATCH). */
const LEAN_BUDGET_HISTORIES = ['payload-budget-first', 'payload-budget-last'].map((s) => `lean-${s}.json.gz`);

/** Histories of specs refused at their start for a limit, each behind its patch (recorded without the `lean-` prefix). */
const REFUSED_HISTORIES: Record<string, string> = {
  'sweep-trials-refused.json': SWEEP_TRIALS_PATCH,
  'sweep-params-refused.json': SWEEP_PARAMS_PATCH,
};

/** A recorded history file, gzipped or not. */
function readHistory(file: string) {
  const raw = readFileSync(path.join(dir, file));
  return JSON.parse((file.endsWith('.gz') ? gunzipSync(raw) : raw).toString('utf8'));
}

/** Patch ids a recorded history's `core_patch` markers name. */
function patchesOf(history: {
  events: Array<{ markerRecordedEventAttributes?: { markerName?: string; details?: Record<string, { payloads?: Array<{ data?: string }> }> } }>;
}): string[] {
  return history.events.flatMap((e) => {
    const m = e.markerRecordedEventAttributes;
    if (m?.markerName !== 'core_patch') return [];
    return Object.values(m.details ?? {}).flatMap((p) =>
      (p.payloads ?? []).map((x) => (JSON.parse(Buffer.from(x.data ?? '', 'base64').toString()) as { id?: string }).id ?? ''),
    );
  });
}

describe('replay of recorded runs', () => {
  const files = readdirSync(dir).filter((f) => f.endsWith('.json') || f.endsWith('.json.gz'));
  it('has recorded histories to replay', () => {
    assert.ok(files.length >= 3, `only ${files.length} histories in test/histories`);
  });
  it('has histories of the lean path for each behaviour (test/workflow/record-histories.ts)', () => {
    const lean = files.filter((f) => f.startsWith('lean-'));
    assert.ok(lean.length >= LEAN_HISTORIES.length, `only ${lean.length} lean- histories in test/histories`);
    assert.deepEqual(
      [...LEAN_HISTORIES, ...LEAN_BUDGET_HISTORIES].filter((f) => !files.includes(f)),
      [],
      'missing: run `node dist/test/workflow/record-histories.js`',
    );
    for (const file of lean) {
      const history = readHistory(file);
      assert.ok(patchesOf(history).includes(LEAN_PROGRESS_PATCH), `${file} did not take the ${LEAN_PROGRESS_PATCH} path: recorded from older code`);
      if (LEAN_BUDGET_HISTORIES.includes(file))
        assert.ok(patchesOf(history).includes(PAYLOAD_BUDGET_PATCH), `${file} did not take the ${PAYLOAD_BUDGET_PATCH} path`);
    }
  });
  it('has a history of each limit a spec is refused for at its start, with its patch', () => {
    for (const [file, patch] of Object.entries(REFUSED_HISTORIES)) {
      assert.ok(files.includes(file), `missing ${file}: run \`node dist/test/workflow/record-histories.js\``);
      assert.ok(patchesOf(readHistory(file)).includes(patch), `${file} did not take the ${patch} path`);
    }
  });
  for (const file of files) {
    it(`replays ${file} without non-determinism`, async () => {
      await Worker.runReplayHistory({ workflowBundle: await workflowBundle() }, readHistory(file), file.replace(/\.json(\.gz)?$/, ''));
    });
  }
});
