/** `tanren validate <spec>`: checks a spec file and lists every problem. */
import type { Command } from 'commander';
import { z } from 'zod';
import { stageQueue } from '../../schemas/validate.js';
import { action, parseOptions } from '../common.js';
import { ExitCodes } from '../output.js';
import { loadSpecFile, SpecFileError } from '../spec-file.js';

const Options = z.object({ json: z.boolean().default(false) });

/** Registers `validate`. */
export function configureValidateCommand(program: Command): void {
  program
    .command('validate')
    .description('check a pipeline spec (YAML or JSON) and list every problem')
    .argument('<spec>', 'pipeline spec file')
    .option('--json', 'print the result as JSON')
    .action(
      action(async (file: string, raw: unknown) => {
        const opts = parseOptions(Options, raw);
        try {
          const spec = loadSpecFile(file);
          if (opts.json) {
            process.stdout.write(`${JSON.stringify({ ok: true, name: spec.name, stages: spec.stages.map((s) => s.id) })}\n`);
          } else {
            const gpu = spec.stages.filter((s) => stageQueue(s) === 'gpu').length;
            process.stdout.write(`${file}: ok — pipeline "${spec.name}", ${spec.stages.length} stages (${gpu} on the GPU queue)\n`);
          }
          return ExitCodes.ok;
        } catch (err) {
          if (opts.json && err instanceof SpecFileError) {
            process.stdout.write(`${JSON.stringify({ ok: false, file, problems: err.problems, message: err.message })}\n`);
            return ExitCodes.failed;
          }
          throw err;
        }
      }),
    );
}
