/**
 * The Temporal Web UI shows tanren runs: a succeeded demo run and a failed run
 * go through real workers on the dev server, then Debian's headless chromium
 * (driven by playwright-core) finds them by the TanrenPipeline search attribute,
 * reads the stage table of "Current Details" (workflows/details.ts) and the
 * failure type, checks that the table's columns are drawn apart (the UI's
 * stylesheet gives table cells no padding), and saves screenshots to
 * test-artifacts/ui-run.png and test-artifacts/ui-failed.png.
 * Needs /usr/bin/chromium (infra/install-browser, which make test runs first).
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Client, Connection, WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import { chromium, type Browser, type FrameLocator, type Page } from 'playwright-core';
import { loadSpecFile, renderRunInput } from '../../cli/spec-file.js';
import { PIPELINE_WORKFLOW_TYPE, SEARCH_ATTRIBUTES } from '../../schemas/names.js';
import type { PipelineRunInput, PipelineSpec } from '../../schemas/pipeline.js';
import { ROOT, unique, waitFor } from '../helpers/env.js';
import { startTestWorkers, type TestWorkers } from '../helpers/workers.js';

const CHROMIUM = '/usr/bin/chromium';
const ARTIFACTS = path.join(ROOT, 'test-artifacts');
/** Each browser step may take long on a loaded machine. */
const STEP_MS = 60_000;

describe('Temporal UI', () => {
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
    assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: run infra/install-browser (make test does)`);
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
    });
    okId = ok.workflowId;
    badId = bad.workflowId;
    await ok.result();
    await assert.rejects(bad.result(), WorkflowFailedError);

    mkdirSync(ARTIFACTS, { recursive: true });
    // launch() gives every browser a new, empty temporary profile.
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
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
    await waitFor(
      `${workflowId} in the UI's list for ${query}`,
      async () => {
        await page.goto(list);
        await link.waitFor({ timeout: 5_000 });
        return true;
      },
      STEP_MS,
      0,
    );
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

  /** A stage's row in the stage table. */
  function rowOf(details: FrameLocator, stage: string) {
    return details.getByRole('row').filter({ has: details.getByRole('cell', { name: stage, exact: true }) });
  }

  /** The state cell of a stage's row in the stage table. */
  function stateOf(details: FrameLocator, stage: string) {
    return rowOf(details, stage).getByRole('cell').nth(1);
  }

  /** The state cell of the row under a stage's row: its failure, skip or retry reason. */
  function reasonOf(details: FrameLocator, stage: string) {
    return rowOf(details, stage).locator('xpath=following-sibling::tr[1]').getByRole('cell').nth(1);
  }

  /**
   * The narrowest horizontal gap, in CSS pixels, between the drawn characters
   * of two neighbouring non-empty cells of a row, over every row of the stage
   * table. Separate cells are not enough: the UI's markdown stylesheet zeroes
   * every element's padding, so cells touch (`succeeded1`) unless the text
   * itself keeps them apart.
   */
  async function narrowestColumnGap(details: FrameLocator): Promise<number> {
    return details.locator('table').evaluate((table: HTMLTableElement) => {
      const extent = (cell: HTMLTableCellElement) => {
        let left = Infinity;
        let right = -Infinity;
        const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
        for (let node = walker.nextNode(); node; node = walker.nextNode()) {
          const text = node.textContent ?? '';
          for (let i = 0; i < text.length; i++) {
            if (/\s/.test(text[i])) continue; // spaces, the no-break spaces of the gap included
            const range = document.createRange();
            range.setStart(node, i);
            range.setEnd(node, i + 1);
            const box = range.getBoundingClientRect();
            left = Math.min(left, box.left);
            right = Math.max(right, box.right);
          }
        }
        return left <= right ? { left, right } : undefined;
      };
      let narrowest = Infinity;
      for (const row of Array.from(table.rows)) {
        let previous: { left: number; right: number } | undefined;
        for (const cell of Array.from(row.cells)) {
          const e = extent(cell);
          if (!e) continue;
          if (previous) narrowest = Math.min(narrowest, e.left - previous.right);
          previous = e;
        }
      }
      return narrowest;
    });
  }

  /** Checks the stage table's header and that no two columns run together. */
  async function assertColumnsApart(details: FrameLocator): Promise<void> {
    const headers = (await details.getByRole('columnheader').allInnerTexts()).map((t) => t.trim());
    assert.deepEqual(headers, ['stage', 'state', 'attempt', 'progress', 'last metrics']);
    const gap = await narrowestColumnGap(details);
    assert.ok(gap >= 8, `columns of the stage table only ${gap.toFixed(1)} px apart`);
  }

  it('lists the succeeded run under its pipeline and shows every stage succeeded', async () => {
    await openRun(okName, okId);
    await statusBadge('Completed').waitFor();
    const details = await currentDetails();
    for (const stage of ['count', 'shard', 'freq-0', 'freq-1', 'chars', 'merge']) {
      assert.equal((await stateOf(details, stage).innerText()).trim(), 'succeeded', `stage ${stage}`);
      assert.equal((await rowOf(details, stage).getByRole('cell').nth(2).innerText()).trim(), '1', `attempt of ${stage}`);
    }
    await assertColumnsApart(details);
    await page.screenshot({ path: path.join(ARTIFACTS, 'ui-run.png'), fullPage: true });
  });

  it('shows the failed run with its failure type InvalidStageInput', async () => {
    await openRun(badName, badId);
    await statusBadge('Failed').waitFor();
    await page.getByRole('tab', { name: /^Event History/ }).click();
    // The closing event of the history, and the stage table built from the activity failure's type.
    await page.getByRole('row').filter({ hasText: 'Workflow Execution Failed' }).filter({ hasText: 'InvalidStageInput' }).first().waitFor();
    const details = await currentDetails();
    // The reason is in the row under the state; the markdown renders typographic quotes.
    assert.equal((await stateOf(details, 'check').innerText()).trim(), 'failed');
    assert.match(await reasonOf(details, 'check').innerText(), /^↳\s+InvalidStageInput: stage .check. exited with code 2: bad row/);
    assert.equal((await stateOf(details, 'train').innerText()).trim(), 'skipped');
    assert.match(await reasonOf(details, 'train').innerText(), /^↳\s+needs .check., which did not succeed/);
    await assertColumnsApart(details);
    await page.screenshot({ path: path.join(ARTIFACTS, 'ui-failed.png'), fullPage: true });
  });
});
