/**
 * What `tanren report` and `tanren compare` read of a run: the small output
 * files of its stages (metric histories, eval scores; never weights or
 * datasets), downloaded in the stage protocol's TANREN_INPUTS layout, and the
 * run's workflow input (its resolved spec).
 */
import path from 'node:path';
import type { Client } from '@temporalio/client';
import { defaultPayloadConverter } from '@temporalio/client';
import { manifestFiles } from '../activities/storage/keys.js';
import type { OutputManifest } from '../activities/types.js';
import type { TanrenEnv } from '../worker/config.js';
import type { CliStore } from './storage.js';

/** Files a report or comparison reads (outputs/<dataset>.jsonl: llm-jp-eval's per-sample lines); model weights and datasets stay in storage. */
export const REPORT_INPUT = /(^|\/)(scores\.json|metrics\.jsonl|answers\.jsonl|judgments\.jsonl|stats\.json|report\.json|outputs\/[^/]+\.jsonl)$/;

/**
 * Downloads the report files of each stage into `<dir>/<stage>/…`; returns
 * how many files came and every stage's manifest `result`, by stage id.
 */
export async function downloadReportInputs(
  store: CliStore,
  find: (stage: string) => Promise<{ manifest: OutputManifest } | undefined>,
  stages: readonly string[],
  dir: string,
): Promise<{ files: number; results: Record<string, Record<string, unknown>> }> {
  let files = 0;
  const results: Record<string, Record<string, unknown>> = {};
  for (const stage of stages) {
    const found = await find(stage);
    if (!found) continue;
    results[stage] = found.manifest.result ?? {};
    for (const f of manifestFiles(found.manifest).filter((x) => REPORT_INPUT.test(x.path))) {
      await store.getFile(f.key, path.join(dir, stage, f.path));
      files++;
    }
  }
  return { files, results };
}

/** The input of a run's workflow (first execution), or undefined when Temporal no longer knows the run. */
export async function runInput(e: TanrenEnv, c: Client, run: string): Promise<unknown> {
  try {
    const history = await c.workflowService.getWorkflowExecutionHistory({
      namespace: e.TEMPORAL_NAMESPACE,
      execution: { workflowId: run },
      maximumPageSize: 1,
    });
    const payload = history.history?.events?.[0]?.workflowExecutionStartedEventAttributes?.input?.payloads?.[0];
    return payload ? defaultPayloadConverter.fromPayload(payload) : undefined;
  } catch {
    return undefined;
  }
}
