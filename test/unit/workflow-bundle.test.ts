/**
 * The cached workflow bundle: its key follows the workflow modules and the
 * lockfile, a cached bundle is used without building, and the cache keeps the
 * most recently used ones. Temporary trees shaped like a checkout; no services,
 * no webpack.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, utimesSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { cachedWorkflowBundle, KEPT_WORKFLOW_BUNDLES, pruneBundles, workflowBundleKey } from '../../worker/workflow-bundle.js';
import { tempTree, writeUnder } from '../helpers/tree.js';

function checkout(): string {
  return tempTree('tanren-bundle', {
    'package-lock.json': '{"lock":1}',
    'node_modules/@temporalio/worker/package.json': '{"version":"1.0.0"}',
    'node_modules/@temporalio/workflow/package.json': '{"version":"1.0.0"}',
    'dist/workflows/index.js': "export * from './pipeline.js';\n",
    'dist/workflows/pipeline.js': "import { x } from '../schemas/names.js';\nexport const y = x;\n",
    'dist/schemas/names.js': 'export const x = 1;\n',
  });
}

describe('cached workflow bundle', () => {
  it('the key changes with a module the workflows import, the lockfile and the bundler, and with nothing else', async () => {
    const root = checkout();
    const entry = path.join(root, 'dist/workflows/index.js');
    const key = () => workflowBundleKey(entry, root);
    const first = await key();
    assert.equal(await key(), first);
    writeUnder(root, 'dist/activities/unrelated.js', 'export const z = 2;\n');
    assert.equal(await key(), first, 'a module the workflows do not import');
    const seen = new Set([first]);
    for (const [rel, text] of [
      ['dist/schemas/names.js', 'export const x = 2;\n'],
      ['package-lock.json', '{"lock":2}'],
      ['node_modules/@temporalio/worker/package.json', '{"version":"1.0.1"}'],
    ]) {
      writeUnder(root, rel, text);
      const k = await key();
      assert.ok(!seen.has(k), `${rel} changed the key`);
      seen.add(k);
    }
  });

  it('a bundle cached under the key is used as it is, without building', async () => {
    const root = checkout();
    const cacheDir = mkdtempSync(path.join(os.tmpdir(), 'tanren-bundle-cache-'));
    const workflowsPath = path.join(root, 'dist/workflows/index.js');
    const key = await workflowBundleKey(workflowsPath, root);
    // Not a bundle webpack could make from these modules: only a read of the cache returns it.
    writeUnder(cacheDir, `workflow-bundles/${key}.js`, '/* cached */');
    assert.deepEqual(await cachedWorkflowBundle({ workflowsPath, projectDir: root, cacheDir }), { code: '/* cached */' });
  });

  it(`the cache keeps the ${KEPT_WORKFLOW_BUNDLES} most recently used bundles and drops stale temporary files`, async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'tanren-bundle-prune-'));
    const now = Date.now() / 1000;
    for (let i = 0; i < KEPT_WORKFLOW_BUNDLES + 3; i++) {
      writeUnder(dir, `b${i}.js`, '');
      utimesSync(path.join(dir, `b${i}.js`), now - i * 60, now - i * 60);
    }
    writeUnder(dir, 'old.js.1.tmp', '');
    utimesSync(path.join(dir, 'old.js.1.tmp'), now - 7200, now - 7200);
    writeUnder(dir, 'new.js.2.tmp', '');
    await pruneBundles(dir);
    assert.deepEqual(readdirSync(dir).sort(), [...Array.from({ length: KEPT_WORKFLOW_BUNDLES }, (_, i) => `b${i}.js`), 'new.js.2.tmp'].sort());
  });
});
