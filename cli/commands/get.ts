/**
 * `tanren get <run> <stage> <path> <dest>`: downloads one output file, or
 * every file under a directory of the stage's outputs, verifying each against
 * the sha256 of the manifest. A file that does not match is deleted.
 */
import { existsSync, statSync } from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { z } from 'zod';
import { manifestFiles } from '../../activities/storage/keys.js';
import type { ManifestEntry } from '../../activities/types.js';
import { action, CliError, env, parseOptions } from '../common.js';
import { ExitCodes } from '../output.js';
import { cliStore, downloadVerified, formatBytes, manifestFinder, requireStage, runStages } from '../storage.js';

const Options = z.object({ json: z.boolean().default(false) });

/** The manifest entries `wanted` names, with the path each gets under `dest`. */
export function selectFiles<E extends ManifestEntry>(files: readonly E[], wanted: string, dest: string): Array<{ entry: E; target: string }> {
  const exact = files.find((f) => f.path === wanted);
  if (exact) {
    const intoDir = /[/\\]$/.test(dest) || (existsSync(dest) && statSync(dest).isDirectory());
    return [{ entry: exact, target: intoDir ? path.join(dest, path.posix.basename(exact.path)) : dest }];
  }
  const dir = wanted.replace(/\/+$/, '');
  const under = dir === '' || dir === '.' ? files : files.filter((f) => f.path.startsWith(`${dir}/`));
  const root = path.resolve(dest);
  return under.map((entry) => {
    const rel = dir === '' || dir === '.' ? entry.path : entry.path.slice(dir.length + 1);
    const target = path.resolve(root, ...rel.split('/'));
    if (target !== root && !target.startsWith(root + path.sep)) {
      throw new CliError(`manifest path "${entry.path}" leaves ${dest}; refusing to write it`, ExitCodes.failed);
    }
    return { entry, target };
  });
}

/** Registers `get`. */
export function configureGetCommand(program: Command): void {
  program
    .command('get')
    .description('download an output file (or a directory of outputs) of a stage, verifying its sha256')
    .argument('<run>', 'workflow id of the run')
    .argument('<stage>', 'stage id')
    .argument('<path>', 'output path as `tanren artifacts` lists it, or a directory of outputs')
    .argument('<dest>', 'file or directory to write to')
    .option('--json', 'print what was written as JSON')
    .action(
      action(async (run: string, stage: string, wanted: string, dest: string, raw: unknown) => {
        const opts = parseOptions(Options, raw);
        const e = env();
        const store = cliStore(e);
        const found = await manifestFinder(e, store, run)(stage);
        if (!found) {
          requireStage(await runStages(e, store, run), stage);
          throw new CliError(`stage "${stage}" of run ${run} has no outputs yet (not finished); see \`tanren status ${run}\``, ExitCodes.notFound);
        }
        const manifest = found.manifest;
        const chosen = selectFiles(manifestFiles(manifest), wanted, dest);
        if (!chosen.length) {
          const listed = manifest.files.slice(0, 10).map((f) => f.path);
          throw new CliError(
            `stage "${stage}" of run ${run} has no output "${wanted}" (outputs: ${listed.join(', ') || 'none'}${manifest.files.length > 10 ? ', …' : ''})`,
            ExitCodes.notFound,
          );
        }
        if (found.cachedFrom && !opts.json) process.stderr.write(`stage "${stage}" was a cache hit: outputs of run ${found.cachedFrom}\n`);
        const written: Array<{ path: string; dest: string; size: number; sha256: string }> = [];
        const problems: string[] = [];
        for (const { entry, target } of chosen) {
          const problem = await downloadVerified(store, entry.key, entry, target);
          if (problem) problems.push(problem);
          else written.push({ path: entry.path, dest: target, size: entry.size, sha256: entry.sha256 });
        }
        if (opts.json) {
          process.stdout.write(`${JSON.stringify({ run, stage, files: written, problems }, null, 2)}\n`);
        } else {
          for (const w of written) process.stdout.write(`${w.dest}  ${formatBytes(w.size)}  sha256 ${w.sha256.slice(0, 12)} ok\n`);
        }
        if (problems.length) throw new CliError(problems.join('\n'), ExitCodes.failed);
      }),
    );
}
