#!/usr/bin/env node
/** The `tanren` command. */
import { Command } from 'commander';
import { TANREN_VERSION } from './version.js';

type Configure = (program: Command) => void;

/**
 * Each command's module, loaded on demand: a command imports only what it uses (the Temporal worker's
 * bundler, the client, the S3 client), so `tanren logs` does not pay for loading `tanren worker`. The order
 * is the order of `tanren --help`, which loads them all.
 */
const COMMANDS: Record<string, () => Promise<Configure>> = {
  validate: async () => (await import('./commands/validate.js')).configureValidateCommand,
  render: async () => (await import('./commands/render.js')).configureRenderCommand,
  submit: async () => (await import('./commands/submit.js')).configureSubmitCommand,
  status: async () => (await import('./commands/status.js')).configureStatusCommand,
  watch: async () => (await import('./commands/watch.js')).configureWatchCommand,
  pause: async () => (await import('./commands/pause.js')).configurePauseCommand,
  resume: async () => (await import('./commands/resume.js')).configureResumeCommand,
  cancel: async () => (await import('./commands/cancel.js')).configureCancelCommand,
  retry: async () => (await import('./commands/retry.js')).configureRetryCommand,
  runs: async () => (await import('./commands/runs.js')).configureRunsCommand,
  logs: async () => (await import('./commands/logs.js')).configureLogsCommand,
  artifacts: async () => (await import('./commands/artifacts.js')).configureArtifactsCommand,
  get: async () => (await import('./commands/get.js')).configureGetCommand,
  report: async () => (await import('./commands/report.js')).configureReportCommand,
  serve: async () => (await import('./commands/serve.js')).configureServeCommand,
  compare: async () => (await import('./commands/compare.js')).configureCompareCommand,
  worker: async () => (await import('./commands/worker.js')).configureWorkerCommand,
};

const program = new Command('tanren')
  .description('declarative LLM training pipelines on Temporal')
  .version(TANREN_VERSION)
  .exitOverride((err) => {
    process.exit(err.exitCode === 0 ? 0 : 2);
  });

// The command is the first argument that is not an option (`tanren` has no options that take a value).
const named = process.argv.slice(2).find((a) => !a.startsWith('-'));
const wanted = named !== undefined && Object.hasOwn(COMMANDS, named) ? [named] : Object.keys(COMMANDS);
for (const configure of await Promise.all(wanted.map((name) => COMMANDS[name]()))) configure(program);

await program.parseAsync(process.argv);
