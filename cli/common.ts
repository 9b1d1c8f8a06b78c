/**
 * What every sub-command shares: loading the environment, connecting to
 * Temporal, and turning errors into messages for people and exit codes.
 */
import type { Client } from '@temporalio/client';
import { z } from 'zod';
import { ConfigError, loadEnv, type TanrenEnv } from '../worker/config.js';
import { ExitCodes, colour } from './output.js';
import { SpecFileError } from './spec-file.js';

/** An error that ends the command with a given exit code and message. */
export class CliError extends Error {
  override name = 'CliError';
  constructor(
    message: string,
    readonly exitCode: number = ExitCodes.failed,
  ) {
    super(message);
  }
}

/** Parses commander options through a zod schema, naming the bad option. */
export function parseOptions<T extends z.ZodTypeAny>(schema: T, raw: unknown): z.infer<T> {
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    throw new CliError(parsed.error.issues.map((i) => `--${i.path.join('.')}: ${i.message}`).join('\n'), ExitCodes.usage);
  }
  return parsed.data;
}

/** Loads the environment once per command. */
export function env(): TanrenEnv & { projectDir: string } {
  return loadEnv();
}

/** Connects to Temporal, with a clear message when it cannot. */
export async function client(e: TanrenEnv): Promise<Client> {
  try {
    // Loaded on first use: commands that need no server (validate, render) skip loading the client.
    const { connectClient } = await import('../worker/connection.js');
    return await connectClient(e);
  } catch (err) {
    throw new CliError(
      `cannot reach Temporal at ${e.TEMPORAL_ADDRESS} (${(err as Error).message}); start it with \`infra/dev up\` or set TEMPORAL_ADDRESS`,
      ExitCodes.unavailable,
    );
  }
}

/** Wraps a command action: prints errors for people and sets the exit code. */
export function action<A extends unknown[]>(fn: (...args: A) => Promise<number | void>) {
  return async (...args: A): Promise<void> => {
    try {
      const code = await fn(...args);
      process.exitCode = code ?? ExitCodes.ok;
    } catch (err) {
      let code: number = ExitCodes.failed;
      let message = (err as Error).message ?? String(err);
      if (err instanceof CliError) code = err.exitCode;
      else if (err instanceof SpecFileError) code = ExitCodes.failed;
      else if (err instanceof ConfigError) code = ExitCodes.config;
      // By name, not instanceof: this module does not load the client (an error of that name can only come from it).
      else if ((err as Error)?.name === 'WorkflowNotFoundError') {
        code = ExitCodes.notFound;
        message = `no such run: ${message}`;
      }
      process.stderr.write(`${colour.red('error')}: ${message}\n`);
      process.exitCode = code;
    }
  };
}
