/**
 * Connections to Temporal for workers (NativeConnection) and clients, with
 * mTLS when TEMPORAL_TLS_* name certificate files.
 */
import { readFileSync } from 'node:fs';
import { Client, Connection } from '@temporalio/client';
import type { NativeConnection } from '@temporalio/worker';
import type { TanrenEnv } from './config.js';

function tlsOptions(env: TanrenEnv) {
  if (!env.TEMPORAL_TLS_CERT && !env.TEMPORAL_TLS_CA) return undefined;
  return {
    ...(env.TEMPORAL_TLS_CA ? { serverRootCACertificate: readFileSync(env.TEMPORAL_TLS_CA) } : {}),
    ...(env.TEMPORAL_TLS_CERT && env.TEMPORAL_TLS_KEY
      ? { clientCertPair: { crt: readFileSync(env.TEMPORAL_TLS_CERT), key: readFileSync(env.TEMPORAL_TLS_KEY) } }
      : {}),
  };
}

/** Connects a client to the configured Temporal namespace. */
export async function connectClient(env: TanrenEnv): Promise<Client> {
  const connection = await Connection.connect({ address: env.TEMPORAL_ADDRESS, tls: tlsOptions(env), connectTimeout: '5s' });
  return new Client({ connection, namespace: env.TEMPORAL_NAMESPACE });
}

/** Connects a worker to Temporal. */
export async function connectWorker(env: TanrenEnv): Promise<NativeConnection> {
  // Loaded here, not at the top: the CLI imports this module for its client, and the worker SDK (native
  // bridge included) costs every `tanren` command ~0.5 s of CPU to load.
  const { NativeConnection } = await import('@temporalio/worker');
  return NativeConnection.connect({ address: env.TEMPORAL_ADDRESS, tls: tlsOptions(env) });
}
