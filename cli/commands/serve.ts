/**
 * `tanren serve <run> <stage>`: talk to what a run trained. Downloads the
 * stage's model (model/, and adapter/ + base/ of an unmerged LoRA) into the
 * per-user cache, each file checked against the manifest's sha256, and runs
 * `python -m tanren_stages.serve` on it: an OpenAI-compatible
 * `/v1/chat/completions` and `/v1/models` server. Prints the base URL once it
 * listens; runs until interrupted.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import type { Command } from 'commander';
import { z } from 'zod';
import { sha256File } from '../../activities/files.js';
import { manifestObjectKey } from '../../activities/storage/keys.js';
import { stageEnvironment } from '../../activities/stage-env.js';
import type { ManifestEntry } from '../../activities/types.js';
import { defaultCacheDir, findStagesPython } from '../../worker/stages-env.js';
import { action, CliError, env, parseOptions } from '../common.js';
import { colour, ExitCodes } from '../output.js';
import { cliStore, downloadVerified, manifestFinder, requireStage, runStages } from '../storage.js';

const Options = z.object({
  host: z.string().min(1).default('127.0.0.1'),
  port: z.coerce.number().int().min(0).max(65535).default(0),
  modelName: z.string().min(1).max(200).optional(),
  device: z.enum(['auto', 'cpu', 'cuda']).default('auto'),
  cacheDir: z.string().min(1).optional(),
  json: z.boolean().default(false),
});

/** Run and stage ids that may name directories of the cache. */
const SAFE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$/;

/** Output directories a served model may need: the weights, and an unmerged adapter with its base copy. */
const MODEL_DIRS = ['model/', 'adapter/', 'base/'];

/** The manifest entries a served model needs; a {@link CliError} when the stage has no model. */
export function modelFiles(files: readonly ManifestEntry[], run: string, stage: string): ManifestEntry[] {
  const wanted = files.filter((f) => MODEL_DIRS.some((d) => f.path.startsWith(d)));
  if (!wanted.some((f) => f.path === 'model/config.json' || f.path === 'model/base.json')) {
    const listed = files.slice(0, 8).map((f) => f.path);
    throw new CliError(
      `stage "${stage}" of run ${run} has no model: no model/config.json or model/base.json among its outputs ` +
        `(${listed.join(', ') || 'none'}${files.length > 8 ? ', …' : ''}); serve a training stage such as pretrain, sft or dpo`,
      ExitCodes.notFound,
    );
  }
  return wanted;
}

/** The URL clients use for a listening address (a wildcard address is reached on the loopback). */
export function baseUrl(host: string, port: number): string {
  const h = host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host;
  return `http://${h.includes(':') ? `[${h}]` : h}:${port}/v1`;
}

/** Registers `serve`. */
export function configureServeCommand(program: Command): void {
  program
    .command('serve')
    .description("serve a stage's trained model (or LoRA adapter) as an OpenAI-compatible chat API")
    .argument('<run>', 'workflow id of the run')
    .argument('<stage>', 'stage id of a training stage (pretrain, sft, dpo, …)')
    .option('--host <host>', 'address to listen on', '127.0.0.1')
    .option('--port <port>', 'port to listen on; 0 picks a free one (printed)', '0')
    .option('--model-name <name>', 'model id clients send and /v1/models lists (default: <run>/<stage>)')
    .option('--device <device>', 'auto | cpu | cuda', 'auto')
    .option('--cache-dir <dir>', 'where the model is downloaded (default: <tanren cache>/serve/<run>/<stage>)')
    .option('--json', 'print the listening address as one JSON line')
    .action(
      action(async (run: string, stage: string, raw: unknown) => {
        const opts = parseOptions(Options, raw);
        const e = env();
        const store = cliStore(e);
        const found = await manifestFinder(e, store, run)(stage);
        if (!found) {
          requireStage(await runStages(e, store, run), stage);
          throw new CliError(`stage "${stage}" of run ${run} has no outputs yet (not finished); see \`tanren status ${run}\``, ExitCodes.notFound);
        }
        const files = modelFiles(found.manifest.files, run, stage);
        const python = findStagesPython({ projectDir: e.projectDir, envPython: e.TANREN_PYTHON });
        if (!python.python) throw new CliError(python.source, ExitCodes.config);

        if (!opts.cacheDir && !(SAFE_NAME.test(run) && SAFE_NAME.test(stage))) {
          throw new CliError(`run "${run}" or stage "${stage}" cannot name a cache directory; give one with --cache-dir`, ExitCodes.usage);
        }
        const dir = path.resolve(opts.cacheDir ?? path.join(defaultCacheDir(), 'serve', run, stage));
        const problems: string[] = [];
        let fetched = 0;
        for (const entry of files) {
          const target = path.resolve(dir, ...entry.path.split('/'));
          if (!target.startsWith(dir + path.sep)) throw new CliError(`manifest path "${entry.path}" leaves ${dir}; refusing to write it`, ExitCodes.failed);
          if (existsSync(target) && (await sha256File(target)) === entry.sha256) continue; // cached and intact
          const problem = await downloadVerified(store, manifestObjectKey(found.manifest, entry), entry, target);
          if (problem) problems.push(problem);
          else fetched++;
        }
        if (problems.length) throw new CliError(problems.join('\n'), ExitCodes.failed);
        const name = opts.modelName ?? `${run}/${stage}`;
        process.stderr.write(
          colour.dim(
            `${stage} of ${run}${found.cachedFrom ? ` (outputs of run ${found.cachedFrom})` : ''}: ${files.length} files in ${dir} (${fetched} downloaded, sha256 checked)\n`,
          ),
        );

        const stagesDir = path.join(e.projectDir, 'stages');
        const child = spawn(
          python.python,
          ['-m', 'tanren_stages.serve', '--model', dir, '--host', opts.host, '--port', String(opts.port), '--model-name', name, '--device', opts.device],
          {
            cwd: e.projectDir,
            // What a stage would get: never the S3, Temporal or judge credentials of this shell.
            env: stageEnvironment(process.env, {
              PYTHONPATH: process.env.PYTHONPATH ? `${stagesDir}${path.delimiter}${process.env.PYTHONPATH}` : stagesDir,
              PYTHONUNBUFFERED: '1',
            }),
            stdio: ['ignore', 'pipe', 'inherit'],
          },
        );
        const forward = (signal: NodeJS.Signals) => () => child.kill(signal);
        process.on('SIGINT', forward('SIGINT'));
        process.on('SIGTERM', forward('SIGTERM'));
        let listening = false;
        createInterface({ input: child.stdout }).on('line', (line) => {
          let msg: { event?: string; host?: string; port?: number; device?: string } | undefined;
          try {
            msg = JSON.parse(line) as typeof msg;
          } catch {
            // not the server's announcement
          }
          if (!listening && msg?.event === 'listening' && typeof msg.port === 'number') {
            listening = true;
            const url = baseUrl(msg.host ?? opts.host, msg.port);
            if (opts.json) process.stdout.write(`${JSON.stringify({ base_url: url, model: name, host: msg.host, port: msg.port, device: msg.device, dir })}\n`);
            else {
              process.stdout.write(`base_url: ${url}\nmodel: ${name}\n`);
              process.stderr.write(
                colour.dim(
                  `try: curl ${url}/chat/completions -H 'Content-Type: application/json' -d '{"model": "${name}", "messages": [{"role": "user", "content": "こんにちは"}]}'\n`,
                ),
              );
            }
            return;
          }
          process.stderr.write(`${line}\n`);
        });
        const code = await new Promise<number>((resolve, reject) => {
          child.once('error', (err) => reject(new CliError(`cannot start ${python.python}: ${err.message}`, ExitCodes.config)));
          child.once('exit', (c, sig) => resolve(c ?? (sig ? 128 : 1)));
        });
        if (!listening)
          throw new CliError(
            `the model server for stage "${stage}" of run ${run} stopped before listening (exit ${code}); see its messages above`,
            ExitCodes.failed,
          );
        return code === 0 || code === 130 || code === 143 ? ExitCodes.ok : ExitCodes.failed;
      }),
    );
}
