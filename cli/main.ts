#!/usr/bin/env node
/** The `tanren` command. */
import { Command } from 'commander';
import { configureArtifactsCommand } from './commands/artifacts.js';
import { configureCancelCommand } from './commands/cancel.js';
import { configureCompareCommand } from './commands/compare.js';
import { configureGetCommand } from './commands/get.js';
import { configureReportCommand } from './commands/report.js';
import { configureLogsCommand } from './commands/logs.js';
import { configurePauseCommand } from './commands/pause.js';
import { configureRenderCommand } from './commands/render.js';
import { configureResumeCommand } from './commands/resume.js';
import { configureRetryCommand } from './commands/retry.js';
import { configureRunsCommand } from './commands/runs.js';
import { configureServeCommand } from './commands/serve.js';
import { configureStatusCommand } from './commands/status.js';
import { configureSubmitCommand } from './commands/submit.js';
import { configureValidateCommand } from './commands/validate.js';
import { configureWatchCommand } from './commands/watch.js';
import { configureWorkerCommand } from './commands/worker.js';
import { TANREN_VERSION } from './version.js';

const program = new Command('tanren')
  .description('declarative LLM training pipelines on Temporal')
  .version(TANREN_VERSION)
  .exitOverride((err) => {
    process.exit(err.exitCode === 0 ? 0 : 2);
  });

for (const configure of [
  configureValidateCommand,
  configureRenderCommand,
  configureSubmitCommand,
  configureStatusCommand,
  configureWatchCommand,
  configurePauseCommand,
  configureResumeCommand,
  configureCancelCommand,
  configureRetryCommand,
  configureRunsCommand,
  configureLogsCommand,
  configureArtifactsCommand,
  configureGetCommand,
  configureReportCommand,
  configureServeCommand,
  configureCompareCommand,
  configureWorkerCommand,
]) {
  configure(program);
}

await program.parseAsync(process.argv);
