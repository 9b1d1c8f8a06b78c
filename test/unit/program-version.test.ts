/**
 * The program part of a cache key: what a stage runs, so that editing any of
 * it misses the cache. Built in temporary trees shaped like the project
 * (stages/tanren_stages/…) and like dist/ (stages/report/main.js importing its
 * siblings and ../../schemas/…), no services.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { programVersion } from '../../activities/cache.js';
import { tempTree, writeUnder } from '../helpers/tree.js';

const tree = (files: Record<string, string>) => tempTree('tanren-program', files);
describe('programVersion', () => {
  it('a Python kind changes with any file of the stages package, subpackages and data files included, not with byte-code', async () => {
    const root = tree({
      'stages/uv.lock': 'lock 1',
      'stages/tanren_stages/__init__.py': '',
      'stages/tanren_stages/sft.py': 'print(1)',
      'stages/tanren_stages/eval/jaster.py': 'X = 1',
      'stages/tanren_stages/eval/judge_prompts.jsonl': '{"name": "single-v1"}\n',
    });
    const stage = { id: 'sft', uses: 'sft', needs: [], with: {} };
    const v0 = await programVersion(stage, root, root);
    assert.match(v0, /^python:[0-9a-f]{64}$/);
    writeUnder(root, 'stages/tanren_stages/__pycache__/sft.cpython-311.pyc', 'bytes');
    writeUnder(root, 'stages/tanren_stages/eval/__pycache__/jaster.cpython-311.pyc', 'bytes');
    assert.equal(await programVersion(stage, root, root), v0, 'byte-code caches are not the program');
    writeUnder(root, 'stages/tanren_stages/eval/jaster.py', 'X = 2');
    const v1 = await programVersion(stage, root, root);
    assert.notEqual(v1, v0, 'a module in a subpackage');
    writeUnder(root, 'stages/tanren_stages/eval/judge_prompts.jsonl', '{"name": "single-v2"}\n');
    const v2 = await programVersion(stage, root, root);
    assert.notEqual(v2, v1, 'a data file');
    writeUnder(root, 'stages/uv.lock', 'lock 2');
    assert.notEqual(await programVersion(stage, root, root), v2, 'the lockfile');
  });

  it('a Node kind changes with its entry and every module it imports by a relative path, transitively', async () => {
    const dist = tree({
      'stages/report/main.js': "import { build } from './build-report.js';\nimport './side-effect.js';\nbuild();\n",
      'stages/report/build-report.js': "import { formatDuration } from '../../schemas/durations.js';\nexport const build = () => formatDuration(1);\n",
      'stages/report/side-effect.js': 'globalThis.x = 1;\n',
      'stages/report/unused.js': 'export const unused = 1;\n',
      'schemas/durations.js': 'export const formatDuration = (n) => `${n}s`;\n',
    });
    const stage = { id: 'report', uses: 'report', needs: [], with: {} };
    const v0 = await programVersion(stage, dist, dist);
    assert.match(v0, /^node:[0-9a-f]{64}$/);
    writeUnder(dist, 'stages/report/unused.js', 'export const unused = 2;\n');
    assert.equal(await programVersion(stage, dist, dist), v0, 'a file the program does not import');
    writeUnder(dist, 'schemas/durations.js', 'export const formatDuration = (n) => `${n} s`;\n');
    const v1 = await programVersion(stage, dist, dist);
    assert.notEqual(v1, v0, 'a module imported two levels down, outside the entry folder');
    writeUnder(dist, 'stages/report/side-effect.js', 'globalThis.x = 2;\n');
    const v2 = await programVersion(stage, dist, dist);
    assert.notEqual(v2, v1, 'a module imported for its side effects');
    writeUnder(dist, 'stages/report/main.js', "import { build } from './build-report.js';\nimport './side-effect.js';\nbuild(); build();\n");
    assert.notEqual(await programVersion(stage, dist, dist), v2, 'the entry');
  });
});
