/**
 * Configuration of workers and the CLI: one zod schema over the environment,
 * parsed once at start-up. Values missing from the environment are taken from
 * the `.tanren/env` file that `infra/dev up` writes, so a local setup needs no
 * exports. Secrets are read from files or env vars and never logged.
 */
import { existsSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import type { ObjectStoreConfig } from '../activities/storage/client.js';
import { CONTROL_TASK_QUEUE, DEFAULT_CPU_TASK_QUEUE, gpuHostQueue, gpuPoolQueue } from '../schemas/names.js';

/** The environment variables tanren reads. */
export const EnvSchema = z.object({
  TEMPORAL_ADDRESS: z.string().default('127.0.0.1:7233').describe('Temporal frontend host:port'),
  TEMPORAL_NAMESPACE: z.string().default('default'),
  TEMPORAL_TLS_CERT: z.string().optional().describe('Path of the client certificate (mTLS)'),
  TEMPORAL_TLS_KEY: z.string().optional().describe('Path of the client key (mTLS)'),
  TEMPORAL_TLS_CA: z.string().optional().describe('Path of the server CA certificate'),
  TANREN_UI_URL: z.string().default('http://127.0.0.1:8233').describe('Base URL of the Temporal UI'),
  TANREN_S3_ENDPOINT: z.string().default('http://127.0.0.1:9000'),
  TANREN_S3_REGION: z.string().optional(),
  TANREN_S3_ACCESS_KEY: z.string().optional(),
  TANREN_S3_SECRET_KEY: z.string().optional(),
  TANREN_S3_CREDENTIALS_FILE: z.string().optional().describe('File with TANREN_S3_ACCESS_KEY=… and TANREN_S3_SECRET_KEY=… lines'),
  TANREN_BUCKET: z.string().default('tanren'),
  TANREN_WORK_DIR: z.string().optional().describe('Where stage attempts get their work directories'),
  TANREN_PROJECT_DIR: z.string().optional().describe('Current directory of stage processes'),
  TANREN_PYTHON: z.string().optional().describe('Python of the stages environment'),
  TANREN_CONTROL_QUEUE: z.string().default(CONTROL_TASK_QUEUE).describe('Task queue of pipeline workflows'),
  TANREN_CPU_QUEUE: z.string().default(DEFAULT_CPU_TASK_QUEUE),
  TANREN_GPU_QUEUE: z.string().optional().describe('@default tanren-gpu-<host>'),
  TANREN_GPU_DEVICES: z.string().default('0').describe('GPUs of the GPU worker (CUDA_VISIBLE_DEVICES style), one stage slot each'),
  TANREN_GPU_HOST: z
    .string()
    .regex(/^[a-z0-9][a-z0-9-]{0,62}$/, 'lower-case letters, digits and "-"')
    .optional()
    .describe("Name of this GPU host: its queue is tanren-gpu-<host>. @default the machine's host name"),
  TANREN_GPU_POOL: z
    .string()
    .regex(/^[a-z0-9][a-z0-9-]{0,62}$/, 'lower-case letters, digits and "-"')
    .optional()
    .describe('GPU pool this host joins: it also serves tanren-gpu-pool-<pool>; `tanren submit` sends GPU stages there'),
  TANREN_INPUT_CACHE_GIB: z.coerce.number().min(0).default(50).describe("Size bound of the worker's local cache of stage inputs (LRU), GiB; 0 turns it off"),
  TANREN_CPU_CONCURRENCY: z.coerce.number().int().min(1).default(4),
  TANREN_LOG_LEVEL: z.enum(['trace', 'debug', 'info', 'warn', 'error']).default('info'),
  TANREN_KILL_GRACE_MS: z.coerce.number().int().min(0).default(30_000),
  TANREN_PROGRESS_INTERVAL_MS: z.coerce
    .number()
    .int()
    .min(0)
    .default(10_000)
    .describe("Most often a running stage's progress (a heartbeat) reaches the server, ms"),
  TANREN_STAGE_ENV: z
    .string()
    .optional()
    .describe(
      'Comma-separated names of further worker variables every stage program may see (they get an allowlist: PATH, HOME, locale, CUDA/HF/torch, and the TANREN_JUDGE_* key their judge.api_key_env names)',
    ),
  TANREN_JUDGE_BASE_URLS: z.string().optional().describe('Comma-separated URL prefixes the MT-Bench judge may be called at. @default local addresses only'),
  TANREN_LOG_UPLOAD_INTERVAL_MS: z.coerce.number().int().min(100).default(5000).describe("How often a running stage's log is copied to object storage"),
  TANREN_KEEP_WORK_DIRS: z
    .enum(['0', '1'])
    .default('0')
    .describe("Keep every stage attempt's work directory for inspection (1), marked `.tanren-kept`; delete them by hand. 0: removed when the attempt ends"),
  TANREN_PREFORK: z
    .enum(['0', '1'])
    .default('1')
    .describe(
      'Start built-in Python kinds forked from a pre-forked Python that has imported torch and transformers once (1), or each with `python -m` (0); a worker with a GPU always uses `python -m`',
    ),
});

/** Parsed environment. */
export type TanrenEnv = z.infer<typeof EnvSchema>;

/** Reads `KEY=VALUE` lines (comments and blank lines ignored, optional quotes). */
export function readEnvFile(file: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const raw of readFileSync(file, 'utf8').split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const m = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (!m) continue;
    out[m[1]] = m[2].replace(/^(['"])(.*)\1$/, '$2');
  }
  return out;
}

/** Finds the project root: the nearest directory above `from` holding `.tanren/env` or package.json of tanren. */
export function findProjectDir(from = process.cwd()): string {
  for (let dir = path.resolve(from); ; dir = path.dirname(dir)) {
    if (existsSync(path.join(dir, '.tanren', 'env'))) return dir;
    if (path.dirname(dir) === dir) return path.resolve(from);
  }
}

/** Loads the environment: process env first, then `<project>/.tanren/env`. Fails fast with the bad variable named. */
export function loadEnv(source: NodeJS.ProcessEnv = process.env): TanrenEnv & { projectDir: string } {
  const projectDir = path.resolve(source.TANREN_PROJECT_DIR ?? findProjectDir());
  const fileVars = path.join(source.TANREN_STATE_DIR ?? path.join(projectDir, '.tanren'), 'env');
  const merged: Record<string, string | undefined> = {};
  if (existsSync(fileVars)) Object.assign(merged, readEnvFile(fileVars));
  for (const [k, v] of Object.entries(source)) if (v !== undefined && v !== '') merged[k] = v;
  const parsed = EnvSchema.safeParse(merged);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `  ${i.path.join('.')}: ${i.message}`);
    throw new ConfigError(`invalid tanren environment:\n${lines.join('\n')}`);
  }
  return { ...parsed.data, projectDir };
}

/** A configuration problem a person must fix (exit code 78 in the CLI). */
export class ConfigError extends Error {
  override name = 'ConfigError';
}

/** S3 credentials from env vars or the credentials file. */
export function s3Credentials(env: TanrenEnv): { accessKey: string; secretKey: string } {
  let accessKey = env.TANREN_S3_ACCESS_KEY;
  let secretKey = env.TANREN_S3_SECRET_KEY;
  if ((!accessKey || !secretKey) && env.TANREN_S3_CREDENTIALS_FILE) {
    if (!existsSync(env.TANREN_S3_CREDENTIALS_FILE)) {
      throw new ConfigError(`TANREN_S3_CREDENTIALS_FILE: ${env.TANREN_S3_CREDENTIALS_FILE} does not exist (run \`infra/dev up\`?)`);
    }
    const vars = readEnvFile(env.TANREN_S3_CREDENTIALS_FILE);
    accessKey ??= vars.TANREN_S3_ACCESS_KEY;
    secretKey ??= vars.TANREN_S3_SECRET_KEY;
  }
  if (!accessKey || !secretKey) {
    throw new ConfigError(
      'no object-storage credentials: set TANREN_S3_ACCESS_KEY and TANREN_S3_SECRET_KEY, or TANREN_S3_CREDENTIALS_FILE (`infra/dev up` writes one)',
    );
  }
  return { accessKey, secretKey };
}

/** Connection settings of the object store of the environment (credentials from env vars or the credentials file). */
export function objectStoreConfig(env: TanrenEnv): ObjectStoreConfig {
  return { endpoint: env.TANREN_S3_ENDPOINT, bucket: env.TANREN_BUCKET, region: env.TANREN_S3_REGION, ...s3Credentials(env) };
}

/** This GPU host's name: TANREN_GPU_HOST, else the machine's host name (lower-case, other characters as "-"). */
export function gpuHostName(env: Pick<TanrenEnv, 'TANREN_GPU_HOST'>): string {
  return (
    env.TANREN_GPU_HOST ??
    os
      .hostname()
      .toLowerCase()
      .replace(/[^a-z0-9-]/g, '-')
  );
}

/** GPU task queue of this host: TANREN_GPU_QUEUE or `tanren-gpu-<host>`. */
export function gpuQueueName(env: Pick<TanrenEnv, 'TANREN_GPU_QUEUE' | 'TANREN_GPU_HOST'>): string {
  return env.TANREN_GPU_QUEUE ?? gpuHostQueue(gpuHostName(env));
}

/**
 * The GPU queue `tanren render`/`submit` fill in when a spec sets none: the
 * pool's (TANREN_GPU_POOL) when the submitter names one, else this host's.
 */
export function defaultGpuQueue(env: Pick<TanrenEnv, 'TANREN_GPU_QUEUE' | 'TANREN_GPU_HOST' | 'TANREN_GPU_POOL'>): string {
  return env.TANREN_GPU_POOL ? gpuPoolQueue(env.TANREN_GPU_POOL) : gpuQueueName(env);
}

/** Splits a comma-separated setting into its trimmed, non-empty parts. */
export function listSetting(value: string | undefined): string[] | undefined {
  const parts = (value ?? '')
    .split(',')
    .map((p) => p.trim())
    .filter(Boolean);
  return parts.length ? parts : undefined;
}
