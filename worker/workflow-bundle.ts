/**
 * The workflow bundle, built once per version of the workflow code and kept
 * in the per-user cache (`<TANREN_CACHE>/workflow-bundles/`): webpack-bundling
 * the workflows costs a worker 3–4 s of CPU at every start, and a restarted
 * worker, or each of a test suite's workers, would pay it again for the same
 * code. Temporal's own advice for production workers is a prebuilt bundle;
 * this one rebuilds itself whenever its inputs change.
 */
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm, stat, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { bundleWorkflowCode, DefaultLogger, type WorkflowBundle } from '@temporalio/worker';
import { nodeProgramDigest } from '../activities/cache.js';

/** How many bundles the cache keeps (the most recently used): one per version of the code a checkout ran. */
export const KEPT_WORKFLOW_BUNDLES = 8;

/**
 * What a bundle is built from: the compiled workflow modules (the entry and every module it imports by a
 * relative path), the lockfile that pins the packages they import (`@temporalio/workflow`, zod), and the
 * version of the bundler.
 */
export async function workflowBundleKey(workflowsPath: string, projectDir: string): Promise<string> {
  const hash = createHash('sha256');
  hash.update(`workflows:${await nodeProgramDigest(workflowsPath)}\n`);
  for (const f of ['package-lock.json', 'node_modules/@temporalio/worker/package.json', 'node_modules/@temporalio/workflow/package.json']) {
    hash.update(
      `${f}:${createHash('sha256')
        .update(await readFile(path.join(projectDir, f)))
        .digest('hex')}\n`,
    );
  }
  return hash.digest('hex').slice(0, 32);
}

/**
 * The bundle of `workflowsPath`: read from the cache when one was built from the same inputs, else built
 * and stored (written to a temporary name and renamed, so a concurrent worker reads a whole file or none).
 * A cache that cannot be read or written only costs the build.
 */
export async function cachedWorkflowBundle(opts: { workflowsPath: string; projectDir: string; cacheDir: string }): Promise<WorkflowBundle> {
  const dir = path.join(opts.cacheDir, 'workflow-bundles');
  let file: string | undefined;
  try {
    file = path.join(dir, `${await workflowBundleKey(opts.workflowsPath, opts.projectDir)}.js`);
    const code = await readFile(file, 'utf8');
    const now = new Date();
    await utimes(file, now, now).catch(() => {}); // most recently used: kept by the pruning below
    return { code };
  } catch {
    // not cached yet (or the key's inputs are unreadable): build it
  }
  const built = await bundleWorkflowCode({ workflowsPath: opts.workflowsPath, logger: new DefaultLogger('WARN') });
  if (file) {
    try {
      await mkdir(dir, { recursive: true });
      const tmp = `${file}.${process.pid}.tmp`;
      await writeFile(tmp, built.code);
      await rename(tmp, file);
      await pruneBundles(dir);
    } catch {
      // a read-only or full cache: the next start builds again
    }
  }
  return { code: built.code };
}

/** Removes all but the {@link KEPT_WORKFLOW_BUNDLES} most recently used bundles (and stale temporary files). */
export async function pruneBundles(dir: string): Promise<void> {
  const names = (await readdir(dir)).filter((n) => n.endsWith('.js') || n.endsWith('.tmp'));
  const files = await Promise.all(names.map(async (n) => ({ n, mtime: (await stat(path.join(dir, n)).catch(() => undefined))?.mtimeMs ?? 0 })));
  const hour = Date.now() - 3600_000;
  const bundles = files.filter((f) => f.n.endsWith('.js')).sort((a, b) => b.mtime - a.mtime);
  const doomed = [...bundles.slice(KEPT_WORKFLOW_BUNDLES), ...files.filter((f) => f.n.endsWith('.tmp') && f.mtime < hour)];
  await Promise.all(doomed.map((f) => rm(path.join(dir, f.n), { force: true })));
}
