/**
 * The CLI's object store says what to fix when storage fails: an endpoint
 * nothing listens on is "cannot reach" (exit 69) after the `transient`
 * policy's tries, quickly; a missing object is still "absent" to the readers.
 * No services: the endpoint is a closed local port.
 */
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { describe, it } from 'node:test';
import { ObjectNotFoundError } from '../../activities/storage/errors.js';
import { CliError } from '../../cli/common.js';
import { ExitCodes } from '../../cli/output.js';
import { cliStore, readManifest } from '../../cli/storage.js';
import { EnvSchema } from '../../worker/config.js';

/** A local port nothing listens on (bound, then closed). */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as { port: number };
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}

const envAt = (endpoint: string) =>
  EnvSchema.parse({ TANREN_S3_ENDPOINT: endpoint, TANREN_S3_ACCESS_KEY: 'tanren-test', TANREN_S3_SECRET_KEY: 'not-a-secret', TANREN_BUCKET: 'tanren' });

describe('the CLI object store', () => {
  it('names the endpoint and the fix when nothing listens there, after a few quick tries', async () => {
    const endpoint = `http://127.0.0.1:${await closedPort()}`;
    const store = cliStore(envAt(endpoint));
    const started = Date.now();
    await assert.rejects(store.getText('runs/x/y/manifest.json'), (err: unknown) => {
      assert.ok(err instanceof CliError, String(err));
      assert.equal(err.exitCode, ExitCodes.unavailable);
      assert.match(err.message, new RegExp(`cannot reach object storage at ${endpoint.replace(/[.]/g, '\\.')}`));
      assert.match(err.message, /infra\/dev up|TANREN_S3_ENDPOINT/);
      return true;
    });
    assert.ok(Date.now() - started < 5000, 'the transient policy gives up within a second or so');
  });

  it('readManifest treats a missing object as no manifest, and passes other errors on', async () => {
    const missing = { getText: () => Promise.reject(new ObjectNotFoundError('The specified key does not exist.', { code: 'NoSuchKey' })) };
    assert.equal(await readManifest(missing as never, 'run', 'stage'), undefined);
    const refused = new CliError('cannot reach object storage', ExitCodes.unavailable);
    await assert.rejects(readManifest({ getText: () => Promise.reject(refused) } as never, 'run', 'stage'), (e) => e === refused);
  });
});
