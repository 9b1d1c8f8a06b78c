/** `tanren render <spec>`: prints the exact workflow input a `temporal`/`tctl` user passes. */
import { writeFileSync } from 'node:fs';
import type { Command } from 'commander';
import { z } from 'zod';
import { action, env, parseOptions } from '../common.js';
import { loadSpecFile, parseOverrides, renderRunInput } from '../spec-file.js';

const Options = z.object({ set: z.array(z.string()).default([]), output: z.string().optional(), noCache: z.boolean().default(false) });

/** Registers `render`. */
export function configureRenderCommand(program: Command): void {
  program
    .command('render')
    .description('print the workflow input JSON for a spec (what `temporal workflow start --input-file` takes)')
    .argument('<spec>', 'pipeline spec file')
    .option('--set <name=value>', 'override a parameter (repeatable)', (v: string, prev: string[] = []) => [...prev, v])
    .option('-o, --output <file>', 'write to a file instead of stdout')
    .option('--no-cache', 'ignore cached outputs of earlier runs')
    .action(
      action(async (file: string, raw: { cache?: boolean }) => {
        const opts = parseOptions(Options, { ...raw, noCache: raw.cache === false });
        const spec = loadSpecFile(file);
        const input = renderRunInput(spec, { file, overrides: parseOverrides(opts.set, file, spec), env: env(), noCache: opts.noCache });
        const text = `${JSON.stringify(input, null, 2)}\n`;
        if (opts.output) writeFileSync(opts.output, text);
        else process.stdout.write(text);
      }),
    );
}
