/**
 * Replays recorded histories of earlier runs against the current workflow
 * code: a change that would break runs already in flight fails here.
 * Re-record with `temporal workflow show --workflow-id <id> --output json`
 * only when a change is meant to be incompatible (and version it).
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { DefaultLogger, Runtime, Worker } from '@temporalio/worker';
import { workflowBundle } from '../worker/run-worker.js';
import { ROOT } from './helpers/env.js';

Runtime.install({ logger: new DefaultLogger('WARN') });

const dir = path.join(ROOT, 'test', 'histories');

describe('replay of recorded runs', () => {
  const files = readdirSync(dir).filter((f) => f.endsWith('.json'));
  it('has recorded histories to replay', () => {
    assert.ok(files.length >= 3, `only ${files.length} histories in test/histories`);
  });
  for (const file of files) {
    it(`replays ${file} without non-determinism`, async () => {
      const history = JSON.parse(readFileSync(path.join(dir, file), 'utf8'));
      await Worker.runReplayHistory({ workflowBundle: await workflowBundle() }, history, file.replace(/\.json$/, ''));
    });
  }
});
