/** `tanren artifacts <run> [stage]`: the outputs of a run's stages, from their manifests. */
import type { Command } from 'commander';
import { z } from 'zod';
import { manifestFiles } from '../../activities/storage/keys.js';
import { action, env, parseOptions } from '../common.js';
import { colour, table } from '../output.js';
import { cliStore, formatBytes, manifestFinder, requireStage, runStages } from '../storage.js';

const Options = z.object({ json: z.boolean().default(false) });

/** One stage in `artifacts --json`. */
export interface StageArtifacts {
  stage: string;
  /** false while the stage has no manifest (not finished, failed or skipped). */
  finished: boolean;
  attempt?: number;
  createdAt?: string;
  /** Key of the manifest: the run's own, or the producing run's for a cache hit. */
  manifestKey?: string;
  /** The run whose outputs a cached stage reused. */
  cachedFrom?: string;
  /** What the stage's program reported (`result` events), from its manifest: also for a large run, whose state leaves results out. */
  result?: Record<string, unknown>;
  files: Array<{ path: string; key: string; size: number; sha256: string }>;
}

/** Registers `artifacts`. */
export function configureArtifactsCommand(program: Command): void {
  program
    .command('artifacts')
    .description("list the outputs of a run's stages (size and sha256 from their manifests)")
    .argument('<run>', 'workflow id of the run')
    .argument('[stage]', 'only this stage')
    .option('--json', 'print the outputs as JSON (full sha256)')
    .action(
      action(async (run: string, stage: string | undefined, raw: unknown) => {
        const opts = parseOptions(Options, raw);
        const e = env();
        const store = cliStore(e);
        const known = await runStages(e, store, run);
        if (stage) requireStage(known, stage);
        const stages = stage ? [stage] : known.stages;
        const find = manifestFinder(e, store, run);
        const out: StageArtifacts[] = [];
        for (const id of stages) {
          const found = await find(id);
          const m = found?.manifest;
          out.push({
            stage: id,
            finished: Boolean(m),
            ...(found ? { attempt: found.manifest.attempt, createdAt: found.manifest.createdAt, manifestKey: found.key } : {}),
            ...(found?.cachedFrom ? { cachedFrom: found.cachedFrom } : {}),
            ...(m?.result ? { result: m.result } : {}),
            files: (m ? manifestFiles(m) : []).map((f) => ({ path: f.path, key: f.key, size: f.size, sha256: f.sha256 })),
          });
        }
        if (opts.json) {
          process.stdout.write(`${JSON.stringify({ run, bucket: store.bucket, stages: out }, null, 2)}\n`);
          return;
        }
        const rows: string[][] = [];
        for (const s of out) {
          if (!s.finished) rows.push([s.stage, colour.dim('no outputs (not finished)'), '', '']);
          else if (!s.files.length) rows.push([s.stage, colour.dim('(no files)'), '', '']);
          else
            for (const f of s.files)
              rows.push([s.stage, f.path, formatBytes(f.size), f.sha256.slice(0, 12), s.cachedFrom ? colour.dim(`cached: ${s.cachedFrom}`) : '']);
        }
        process.stdout.write(`${table(['STAGE', 'PATH', 'SIZE', 'SHA256', ''], rows)}\n`);
        process.stdout.write(
          colour.dim(`\nobject keys: s3://${store.bucket}/runs/${run}/<stage>/manifest.json (or --json)  —  tanren get ${run} <stage> <path> <dest>\n`),
        );
      }),
    );
}
