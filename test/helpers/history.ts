/** Reading a run's histories: every execution of a workflow id, following its continue-as-new chain. */
import { Client, Connection, type WorkflowHandle } from '@temporalio/client';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { startDevServer } from './servers.js';

type History = Awaited<ReturnType<WorkflowHandle['fetchHistory']>>;

/** One execution of a workflow id and the length of its history. */
export interface Execution {
  runId: string;
  events: number;
  status: string;
  /** Size of the input handed to the next execution (spec and carried state), when this one continued as new. */
  continuedWithBytes?: number;
  history: History;
}

/** Every execution of `workflowId`, first to last (continue-as-new makes several), with its history. */
export async function executions(client: Client, workflowId: string): Promise<Execution[]> {
  const out: Execution[] = [];
  const first = await client.workflow.getHandle(workflowId).describe();
  // Follow the chain from the first run: each continued run names the next in its last event.
  let runId: string | undefined = first.raw.workflowExecutionInfo?.firstRunId ?? first.runId;
  while (runId) {
    const handle: WorkflowHandle = client.workflow.getHandle(workflowId, runId, { followRuns: false });
    const history: History = await handle.fetchHistory();
    const d = await handle.describe();
    const continued = history.events?.at(-1)?.workflowExecutionContinuedAsNewEventAttributes;
    const continuedWithBytes = continued?.input?.payloads?.reduce((n, p) => n + (p.data?.length ?? 0), 0);
    out.push({ runId, events: history.events?.length ?? 0, status: d.status.name, ...(continued ? { continuedWithBytes } : {}), history });
    runId = continued?.newExecutionRunId ?? undefined;
  }
  return out;
}

/** A dev server of a test's own whose history limit is lowered, so a run that outgrows it is terminated (and the test fails). */
export async function startLimitedServer(historyLimit: number, ...dynamicConfig: string[]): Promise<TestWorkflowEnvironment> {
  return startDevServer(`limit.historyCount.error=${historyLimit}`, ...dynamicConfig);
}

/** Ids of the patches a history's `core_patch` markers name (a patch's marker holds its id in JSON). */
export function patchIds(history: History): string[] {
  return (history.events ?? [])
    .filter((e) => e.markerRecordedEventAttributes?.markerName === 'core_patch')
    .flatMap((e) =>
      Object.values(e.markerRecordedEventAttributes?.details ?? {}).flatMap((p) => (p.payloads ?? []).map((x) => Buffer.from(x.data ?? []).toString())),
    );
}

/**
 * A client of `env`'s server that takes replies up to 256 MiB: a history page of a run whose stages report large
 * results (a batch of them arriving together) passes gRPC's default 4 MB. `close` ends its connection.
 */
export async function largeMessageClient(env: TestWorkflowEnvironment): Promise<{ client: Client; close: () => Promise<void> }> {
  const connection = await Connection.connect({ address: env.address, channelArgs: { 'grpc.max_receive_message_length': 256 * 1024 * 1024 } });
  return { client: new Client({ connection, namespace: env.namespace ?? 'default' }), close: () => connection.close() };
}
