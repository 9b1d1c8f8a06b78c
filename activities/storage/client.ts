/**
 * The one factory of MinIO/S3 clients: the worker, the CLI, the checkpoint
 * upload process, tests and benchmarks all build their clients here, from one
 * {@link ObjectStoreConfig}.
 */
import * as Minio from 'minio';

/** Connection settings of the object store. Credentials never enter workflow history. */
export interface ObjectStoreConfig {
  /** Endpoint URL, e.g. `http://127.0.0.1:9000` or `https://s3.example`. */
  endpoint: string;
  accessKey: string;
  secretKey: string;
  bucket: string;
  /** @default 'us-east-1' */
  region?: string;
}

/** Options of {@link createMinioClient}. */
export interface MinioClientOptions {
  /**
   * Send request bodies as UNSIGNED-PAYLOAD over plain http too, instead of
   * signing a sha256 of every payload (a full extra hash pass here and a
   * verification pass on the server). For transfers whose bytes a manifest's
   * sha256 checks end to end anyway (checkpoint parts). @default false
   */
  unsignedPayload?: boolean;
}

/** minio-js client options for an endpoint URL such as `https://s3.example:9000`. */
export function minioClientOptions(config: ObjectStoreConfig): Minio.ClientOptions {
  const url = new URL(config.endpoint);
  return {
    endPoint: url.hostname,
    port: url.port ? Number(url.port) : url.protocol === 'https:' ? 443 : 80,
    useSSL: url.protocol === 'https:',
    accessKey: config.accessKey,
    secretKey: config.secretKey,
    region: config.region ?? 'us-east-1',
    // Retries are ours (activities/storage/retry.ts): minio-js's own would retry
    // once more under ours and print to the console.
    retryOptions: { disableRetry: true },
  };
}

/** Creates a minio-js client for `config`; every client tanren uses comes from here. */
export function createMinioClient(config: ObjectStoreConfig, opts: MinioClientOptions = {}): Minio.Client {
  const client = new Minio.Client(minioClientOptions(config));
  // minio-js signs payloads over http only; over https it already sends UNSIGNED-PAYLOAD.
  if (opts.unsignedPayload) (client as unknown as { enableSHA256: boolean }).enableSHA256 = false;
  return client;
}
