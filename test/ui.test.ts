/**
 * The Temporal Web UI shows tanren runs: a succeeded demo run and a failed run
 * go through real workers on the dev server, then Debian's headless chromium
 * (driven by playwright-core) finds them by the TanrenPipeline search attribute,
 * reads the stage table of "Current Details" and the failure type, and saves
 * screenshots to test-artifacts/ui-run.png and test-artifacts/ui-failed.png.
 * Needs /usr/bin/chromium (infra/install-browser); skipped without it.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Client, Connection, WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import { chromium, type Browser, type FrameLocator, type Page } from 'playwright-core';
import { loadSpecFile, renderRunInput } from '../cli/spec-file.js';
import { PIPELINE_WORKFLOW_TYPE, SEARCH_ATTRIBUTES } from '../schemas/names.js';
import type { PipelineRunInput, PipelineSpec } from '../schemas/pipeline.js';
import { ROOT, unique, waitFor } from './helpers/env.js';
import { startTestWorkers, type TestWorkers } from './helpers/workers.js';

const CHROMIUM = '/usr/bin/chromium';
const ARTIFACTS = path.join(ROOT, 'test-artifacts');
/** Each browser step may take long on a loaded machine. */
const STEP_MS = 60_000;

describe('Temporal UI', { skip: existsSync(CHROMIUM) ? false : `${CHROMIUM} is missing: run infra/install-browser` }, () => {
  let workers: TestWorkers;
  let client: Client;
  let browser: Browser;
  let page: Page;
  // One pipeline name per run of this file, so the visibility search finds only these runs.
  const okName = unique('ui-demo');
  const badName = unique('ui-bad');
  let okId: string;
  let badId: string;

  /** Starts a run the way `tanren submit` does (search attributes, static summary). */
  async function submit(input: PipelineRunInput): Promise<WorkflowHandle> {
    const spec = input.spec as PipelineSpec;
    spec.queues = { cpu: workers.queues.cpu, gpu: workers.queues.gpu };
    return client.workflow.start(PIPELINE_WORKFLOW_TYPE, {
      taskQueue: workers.queues.control,
      workflowId: `${spec.name}-ui`,
      args: [input],
      searchAttributes: { [SEARCH_ATTRIBUTES.pipeline]: [spec.name], [SEARCH_ATTRIBUTES.status]: ['running'] },
      staticSummary: `${spec.name}: ${spec.stages.length} stages`,
      staticDetails: spec.description,
    });
  }

  before(async () => {
    workers = await startTestWorkers({ prefix: 'ui' });
    client = new Client({ connection: await Connection.connect({ address: workers.env.TEMPORAL_ADDRESS }), namespace: workers.env.TEMPORAL_NAMESPACE });

    const demo = loadSpecFile(path.join(ROOT, 'pipelines', 'demo.yaml'));
    demo.name = okName;
    const ok = await submit(renderRunInput(demo, { file: 'pipelines/demo.yaml', env: workers.env, noCache: true }));
    const bad = await submit({
      spec: {
        name: badName,
        description: 'a stage that rejects its input',
        stages: [
          { id: 'check', run: ['python3', '-c', 'import sys; print("bad row", file=sys.stderr); sys.exit(2)'] },
          { id: 'train', needs: ['check'], run: ['true'] },
        ],
      },
      options: { noCache: true },
    } as unknown as PipelineRunInput);
    okId = ok.workflowId;
    badId = bad.workflowId;
    await ok.result();
    await assert.rejects(bad.result(), WorkflowFailedError);

    mkdirSync(ARTIFACTS, { recursive: true });
    // launch() gives every browser a new, empty temporary profile.
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    page.setDefaultTimeout(STEP_MS);
  });

  after(async () => {
    await browser?.close();
    await workers?.stop();
    await client?.connection.close();
  });

  /**
   * Opens the workflow list filtered by `TanrenPipeline="<pipeline>"` and then
   * the run; reloads until visibility (eventually consistent) lists it.
   */
  async function openRun(pipeline: string, workflowId: string): Promise<void> {
    const query = `${SEARCH_ATTRIBUTES.pipeline}="${pipeline}"`;
    const list = `${workers.env.TANREN_UI_URL}/namespaces/${workers.env.TEMPORAL_NAMESPACE}/workflows?query=${encodeURIComponent(query)}`;
    const link = page.getByRole('link', { name: workflowId, exact: true }).first();
    await waitFor(`${workflowId} in the UI's list for ${query}`, async () => {
      await page.goto(list);
      await link.waitFor({ timeout: 5_000 });
      return true;
    }, STEP_MS, 0);
    await link.click();
    await page.getByRole('heading', { name: workflowId }).waitFor();
  }

  /** The status badge beside the workflow id (the UI upper-cases it with CSS). */
  function statusBadge(status: 'Completed' | 'Failed') {
    return page.locator('main').getByText(status, { exact: true }).first();
  }

  /** The "Current Details" of the User Metadata tab: the workflow's stage table, rendered from markdown in an iframe. */
  async function currentDetails(): Promise<FrameLocator> {
    await page.getByRole('tab', { name: 'User Metadata' }).click();
    const details = page.frameLocator('#user-metadata-current-details');
    await details.getByRole('table').waitFor();
    return details;
  }

  /** The state cell of a stage's row in the stage table. */
  function stateOf(details: FrameLocator, stage: string) {
    return details.getByRole('row').filter({ has: details.getByRole('cell', { name: stage, exact: true }) }).getByRole('cell').nth(1);
  }

  it('lists the succeeded run under its pipeline and shows every stage succeeded', async () => {
    await openRun(okName, okId);
    await statusBadge('Completed').waitFor();
    const details = await currentDetails();
    for (const stage of ['count', 'shard', 'freq-0', 'freq-1', 'chars', 'merge']) {
      assert.equal((await stateOf(details, stage).innerText()).trim(), 'succeeded', `stage ${stage}`);
    }
    await page.screenshot({ path: path.join(ARTIFACTS, 'ui-run.png'), fullPage: true });
  });

  it('shows the failed run with its failure type InvalidStageInput', async () => {
    await openRun(badName, badId);
    await statusBadge('Failed').waitFor();
    await page.getByRole('tab', { name: /^Event History/ }).click();
    // The closing event of the history, and the stage table built from the activity failure's type.
    await page.getByRole('row').filter({ hasText: 'Workflow Execution Failed' }).filter({ hasText: 'InvalidStageInput' }).first().waitFor();
    const details = await currentDetails();
    assert.match(await stateOf(details, 'check').innerText(), /^failed \(InvalidStageInput: stage .check. exited with code 2: bad row/); // the markdown renders typographic quotes
    assert.match(await stateOf(details, 'train').innerText(), /^skipped/);
    await page.screenshot({ path: path.join(ARTIFACTS, 'ui-failed.png'), fullPage: true });
  });
});
