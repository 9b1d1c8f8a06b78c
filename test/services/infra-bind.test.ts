/**
 * `infra/dev` bind settings against the real servers: services started in a
 * state directory of their own, on free ports, and what the kernel says they
 * listen on (/proc/net/tcp and tcp6). By default all four stay on loopback;
 * TANREN_TEMPORAL_BIND and TANREN_S3_BIND open gRPC and the S3 API while the
 * UI and the MinIO console stay on 127.0.0.1. `infra/dev status` prints them.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { ROOT } from '../helpers/env.js';

/** A port nothing listens on right now. */
async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise((r) => server.close(r));
  return port;
}

/** `a.b.c.d` or `[v6]` of a /proc/net/tcp{,6} address in hex (little-endian words). */
function procAddress(hex: string): string {
  if (hex.length === 8) return [3, 2, 1, 0].map((i) => parseInt(hex.slice(i * 2, i * 2 + 2), 16)).join('.');
  const words = hex.match(/.{8}/g)!.map((w) => w.match(/../g)!.reverse().join(''));
  const groups = words
    .join('')
    .match(/.{4}/g)!
    .map((g) => parseInt(g, 16).toString(16));
  const text = groups
    .join(':')
    .replace(/(^|:)0(:0)+(:|$)/, '::')
    .replace(/:{3,}/, '::');
  return `[${text}]`;
}

/** Local addresses with a listening TCP socket on `port`. */
function listeners(port: number): string[] {
  const out = new Set<string>();
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.trim().split('\n').slice(1)) {
      const [, local, , state] = line.trim().split(/\s+/);
      const [addr, p] = local.split(':');
      if (state === '0A' && parseInt(p, 16) === port) out.add(procAddress(addr));
    }
  }
  return [...out].sort();
}

const WILDCARD = new Set(['0.0.0.0', '[::]']);
const LOOPBACK = new Set(['127.0.0.1', '[::1]']);

describe('infra/dev bind settings', () => {
  const started: NodeJS.ProcessEnv[] = [];
  let env: NodeJS.ProcessEnv = {};
  const dev = (...args: string[]) => spawnSync(path.join(ROOT, 'infra', 'dev'), args, { cwd: ROOT, encoding: 'utf8', env, timeout: 180_000 });
  after(() => {
    for (const e of started) {
      env = e;
      dev('down');
      rmSync(e.TANREN_STATE_DIR!, { recursive: true, force: true });
    }
  });

  async function start(binds: Record<string, string>) {
    const state = mkdtempSync(path.join(os.tmpdir(), 'tanren-bind-'));
    const ports = { grpc: await freePort(), ui: await freePort(), s3: await freePort(), console: await freePort() };
    env = {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      TANREN_CACHE: process.env.TANREN_CACHE,
      TANREN_STATE_DIR: state,
      TANREN_SKIP_INSTALL: '1',
      TANREN_TEMPORAL_PORT: String(ports.grpc),
      TANREN_UI_PORT: String(ports.ui),
      TANREN_MINIO_PORT: String(ports.s3),
      TANREN_MINIO_CONSOLE_PORT: String(ports.console),
      ...binds,
    };
    started.push(env);
    const up = dev('up');
    assert.equal(up.status, 0, `infra/dev up: ${up.stderr}`);
    return ports;
  }

  it('by default every service listens on loopback only', async () => {
    const ports = await start({});
    for (const [name, port] of Object.entries(ports)) {
      const got = listeners(port);
      assert.ok(got.length, `${name} (port ${port}) listens`);
      assert.ok(
        got.every((a) => LOOPBACK.has(a)),
        `${name} (port ${port}) listens on loopback only: ${got.join(', ')}`,
      );
    }
    const status = dev('status');
    assert.equal(status.status, 0, status.stderr);
    assert.match(
      status.stdout,
      new RegExp(
        `^bind +temporal-grpc 127\\.0\\.0\\.1:${ports.grpc}  ui 127\\.0\\.0\\.1:${ports.ui}  s3 127\\.0\\.0\\.1:${ports.s3}  console 127\\.0\\.0\\.1:${ports.console}$`,
        'm',
      ),
    );
    assert.equal(dev('down').status, 0);
  });

  it('gRPC and S3 on every interface when asked; the UI and the console stay on 127.0.0.1', async () => {
    const ports = await start({ TANREN_TEMPORAL_BIND: '0.0.0.0', TANREN_S3_BIND: '0.0.0.0' });
    for (const name of ['grpc', 's3'] as const) {
      const got = listeners(ports[name]);
      assert.ok(
        got.some((a) => WILDCARD.has(a)),
        `${name} (port ${ports[name]}) listens on every interface: ${got.join(', ')}`,
      );
    }
    for (const name of ['ui', 'console'] as const) {
      assert.deepEqual(listeners(ports[name]), ['127.0.0.1'], `${name} (port ${ports[name]}) listens on 127.0.0.1 only`);
    }
    const status = dev('status');
    assert.equal(status.status, 0, status.stderr);
    assert.match(
      status.stdout,
      new RegExp(
        `^bind +temporal-grpc 0\\.0\\.0\\.0:${ports.grpc}  ui 127\\.0\\.0\\.1:${ports.ui}  s3 0\\.0\\.0\\.0:${ports.s3}  console 127\\.0\\.0\\.1:${ports.console}$`,
        'm',
      ),
    );
    // Clients on this host still reach the wildcard binds through loopback.
    assert.match(readFileSync(path.join(env.TANREN_STATE_DIR!, 'env'), 'utf8'), new RegExp(`^TEMPORAL_ADDRESS=127\\.0\\.0\\.1:${ports.grpc}$`, 'm'));
    assert.equal(dev('down').status, 0);
  });

  it('refuses a bind setting that is not an IP address, naming it', () => {
    env = {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      TANREN_STATE_DIR: mkdtempSync(path.join(os.tmpdir(), 'tanren-bind-')),
      TANREN_UI_BIND: 'example.com; rm -rf /',
    };
    started.push(env);
    const r = dev('status');
    assert.equal(r.status, 1);
    assert.match(r.stderr, /TANREN_UI_BIND=example\.com; rm -rf \/ is not an IP address/);
  });
});
