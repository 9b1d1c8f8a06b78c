/** Temporal servers of a test's own, and the `temporal` CLI's argument lists against a server. */
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { PIPELINE_WORKFLOW_TYPE } from '../../schemas/names.js';
import { searchAttributeKeys, temporalBin, testServerBin } from './env.js';

/**
 * A `temporal server start-dev` of the test's own (in-memory, a free port), with
 * the tanren search attributes; each `dynamicConfig` is a `key=value` of
 * `--dynamic-config-value` (e.g. `limit.historyCount.error=1000`).
 */
export function startDevServer(...dynamicConfig: string[]): Promise<TestWorkflowEnvironment> {
  return TestWorkflowEnvironment.createLocal({
    server: {
      executable: { type: 'existing-path', path: temporalBin() },
      searchAttributes: searchAttributeKeys,
      extraArgs: dynamicConfig.flatMap((v) => ['--dynamic-config-value', v]),
    },
  });
}

/** The Java time-skipping test server, for retries, backoff and timeouts without waiting. */
export function startTimeSkippingServer(): Promise<TestWorkflowEnvironment> {
  return TestWorkflowEnvironment.createTimeSkipping({ server: { executable: { type: 'existing-path', path: testServerBin() } } });
}

/** Where a `temporal` CLI command goes: the services' `TEMPORAL_ADDRESS` and `TEMPORAL_NAMESPACE`. */
export interface TemporalTarget {
  TEMPORAL_ADDRESS: string;
  TEMPORAL_NAMESPACE: string;
}

/** Argv (for {@link temporalBin}) of `temporal workflow <command>` against `target`, then `args`. */
export function temporalWorkflowArgv(command: string, target: TemporalTarget, ...args: string[]): string[] {
  return ['workflow', command, '--address', target.TEMPORAL_ADDRESS, '--namespace', target.TEMPORAL_NAMESPACE, ...args];
}

/** Argv of `temporal workflow start` of a pipeline run from raw JSON: how input arrives that no tanren code validated. */
export function startPipelineArgv(target: TemporalTarget, run: { taskQueue: string; workflowId: string; inputFile: string }): string[] {
  return temporalWorkflowArgv(
    'start',
    target,
    '--task-queue',
    run.taskQueue,
    '--type',
    PIPELINE_WORKFLOW_TYPE,
    '--workflow-id',
    run.workflowId,
    '--input-file',
    run.inputFile,
  );
}
