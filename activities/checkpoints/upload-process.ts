/**
 * Checkpoint file transfers in a separate low-priority process, so that the
 * upload's reading, hashing and HTTP do not take CPU from the training stage.
 *
 * The worker ({@link runUploadProcess}) starts `upload-process-main.js`
 * per checkpoint, in its own session, under `nice -n 19` and `ionice -c2 -n7`
 * where those exist, and with its scheduler autogroup's nice raised to 19
 * (with autogroups on, plain nice only ranks threads within one session, and
 * stages run in sessions of their own). The job (connection settings with
 * credentials, the files and their keys, tuning) goes to the child on stdin,
 * never on argv or in the environment; the child answers with JSON lines on
 * stdout. The child exits when its stdin closes, so a worker that dies takes
 * its upload with it. The manifest, retention and cleanup stay with the
 * caller (./uploader.ts), which writes the manifest only after the
 * child reported every file.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { setAutogroupNice } from '../autogroup.js';
import type { ObjectStoreConfig } from '../storage/client.js';
import { createMultipartClient, defaultPartConcurrency, DEFAULT_PART_SIZE, type TransferRetryOptions } from '../storage/multipart.js';

/** One file of an upload job. */
export interface UploadJobFile {
  /** Object key. */
  key: string;
  /** Local path. */
  file: string;
}

/** What the upload process is asked to do (sent on its stdin as one JSON line). */
export interface UploadJob {
  s3: ObjectStoreConfig;
  files: UploadJobFile[];
  /** Files of at least this many bytes go as multipart uploads. */
  multipartThreshold: number;
  partSize: number;
  /** Parts in flight at once. */
  concurrency: number;
  retry?: TransferRetryOptions;
}

/** One uploaded file as the child reports it. */
export interface UploadedJobFile {
  key: string;
  size: number;
  sha256: string;
}

/** Resource use of one upload process, from its own `process.resourceUsage()`. */
export interface UploadProcessStats {
  /** User + system CPU seconds of the child, all threads. */
  cpuSeconds: number;
  /** Peak resident set, KiB. */
  maxRssKiB: number;
  /** Bytes uploaded. */
  bytes: number;
  /** Wall seconds inside the child (start-up excluded). */
  seconds: number;
}

/** The JSON lines the upload process writes on stdout. */
export type UploadMessage =
  | ({ event: 'file' } & UploadedJobFile)
  | { event: 'retry'; what: string; attempt: number; error: string }
  | ({ event: 'done' } & UploadProcessStats)
  | { event: 'error'; message: string; code?: string; name?: string };

/**
 * Uploads the files of `job` in this process (the child's side of the
 * protocol): small files in one PUT, large ones as multipart uploads with
 * `concurrency` parts in flight from a reused buffer pool, each hashed with
 * sha256 as it is read. Reports through `emit`.
 */
export async function runUploadJob(job: UploadJob, emit: (m: UploadMessage) => void): Promise<void> {
  const started = performance.now();
  const mp = createMultipartClient(job.s3);
  const onRetry = (what: string, attempt: number, err: unknown) => emit({ event: 'retry', what, attempt, error: (err as Error)?.message ?? String(err) });
  let bytes = 0;
  for (const f of job.files) {
    const size = (await stat(f.file)).size;
    const r =
      size >= job.multipartThreshold
        ? await mp.uploadFile(f.key, f.file, { partSize: job.partSize, concurrency: job.concurrency, retry: job.retry, onRetry })
        : await mp.putSmallFile(f.key, f.file, { retry: job.retry, onRetry });
    bytes += r.size;
    emit({ event: 'file', key: f.key, size: r.size, sha256: r.sha256 });
  }
  const ru = process.resourceUsage();
  emit({ event: 'done', cpuSeconds: (ru.userCPUTime + ru.systemCPUTime) / 1e6, maxRssKiB: ru.maxRSS, bytes, seconds: (performance.now() - started) / 1000 });
}

/** The compiled entry point of the upload process. */
export const UPLOAD_MAIN = fileURLToPath(new URL('./upload-process-main.js', import.meta.url));

function onPath(bin: string): string | undefined {
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(path.delimiter)) {
    const p = path.join(dir, bin);
    if (dir && existsSync(p)) return p;
  }
  return undefined;
}

let wrapper: string[] | undefined;
/** `nice -n 19` and `ionice -c2 -n7` where this host has them (ionice: best-effort lowest, not idle, which could starve behind a busy data loader). */
function lowPriorityPrefix(): string[] {
  if (wrapper) return wrapper;
  const nice = onPath('nice');
  const ionice = process.platform === 'linux' ? onPath('ionice') : undefined;
  wrapper = [...(nice ? [nice, '-n', '19'] : []), ...(ionice ? [ionice, '-c2', '-n7'] : [])];
  return wrapper;
}

/** Raises the calling process's scheduler autogroup nice to 19 (Linux with autogroups; ignored elsewhere: nice alone applies). */
export function lowerAutogroupPriority(): void {
  setAutogroupNice(19);
}

/** Options of {@link runUploadProcess}. */
export interface UploadProcessOptions {
  /** Kills the child (SIGKILL) and rejects when aborted. */
  signal?: AbortSignal;
  /** Called for each part or file retried inside the child. */
  onRetry?: (what: string, attempt: number, error: string) => void;
  /** Called with the child's pid once it is running (benchmarks sample it). */
  onSpawn?: (pid: number) => void;
  /** Run the child at normal priority (benchmarks compare). @default true */
  lowPriority?: boolean;
}

/** What {@link runUploadProcess} returns: every file in job order, and the child's resource use. */
export interface UploadProcessResult {
  files: UploadedJobFile[];
  stats: UploadProcessStats;
}

/** Default tuning of an upload job for this host. */
export function defaultUploadTuning(): Pick<UploadJob, 'partSize' | 'concurrency'> {
  return { partSize: DEFAULT_PART_SIZE, concurrency: defaultPartConcurrency(os.availableParallelism()) };
}

/**
 * Runs `job` in a low-priority child process and resolves with what it
 * uploaded. Rejects with the child's error (its `code` kept, so transient and
 * permanent failures stay distinguishable), or with an Error naming the exit
 * code or signal when the child dies without reporting one.
 */
export function runUploadProcess(job: UploadJob, opts: UploadProcessOptions = {}): Promise<UploadProcessResult> {
  return new Promise<UploadProcessResult>((resolve, reject) => {
    if (opts.signal?.aborted) {
      reject(Object.assign(new Error('checkpoint upload cancelled'), { name: 'AbortError', code: 'ABORT_ERR' }));
      return;
    }
    const prefix = opts.lowPriority === false ? [] : lowPriorityPrefix();
    const argv = [...prefix, process.execPath, UPLOAD_MAIN, ...(opts.lowPriority === false ? ['--normal-priority'] : [])];
    // Own session: a stage's process-group kill does not reach it, and it gets an autogroup of its own to deprioritise.
    const child = spawn(argv[0], argv.slice(1), { detached: true, stdio: ['pipe', 'pipe', 'pipe'] });
    const files: UploadedJobFile[] = [];
    let stats: UploadProcessStats | undefined;
    let failure: Error | undefined;
    const stderr: string[] = [];
    const onAbort = () => {
      failure ??= Object.assign(new Error('checkpoint upload cancelled'), { name: 'AbortError', code: 'ABORT_ERR' });
      child.kill('SIGKILL');
    };
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    child.on('spawn', () => {
      if (child.pid) opts.onSpawn?.(child.pid);
    });
    child.stdin.on('error', () => undefined); // the child may die before reading its job; its exit says why
    child.stdin.write(`${JSON.stringify(job)}\n`);
    // stdin stays open: its end tells the child that the worker is gone.
    createInterface({ input: child.stderr }).on('line', (l) => {
      stderr.push(l);
      if (stderr.length > 20) stderr.shift();
    });
    const lines = createInterface({ input: child.stdout });
    lines.on('line', (line) => {
      let m: UploadMessage;
      try {
        m = JSON.parse(line) as UploadMessage;
      } catch {
        stderr.push(line);
        return;
      }
      if (m.event === 'file') files.push({ key: m.key, size: m.size, sha256: m.sha256 });
      else if (m.event === 'retry') opts.onRetry?.(m.what, m.attempt, m.error);
      else if (m.event === 'done') stats = m;
      else if (m.event === 'error') failure ??= Object.assign(new Error(m.message), { code: m.code, name: m.name ?? 'Error' });
    });
    child.on('error', (err) => {
      failure ??= err;
    });
    child.on('close', (code, signal) => {
      opts.signal?.removeEventListener('abort', onAbort);
      child.stdin.destroy();
      if (failure) return reject(failure);
      if (code === 0 && stats && files.length === job.files.length) {
        // Job order, whatever order the child reported in.
        const byKey = new Map(files.map((f) => [f.key, f]));
        return resolve({ files: job.files.map((f) => byKey.get(f.key)!), stats });
      }
      reject(
        new Error(
          `checkpoint upload process ${signal ? `killed by ${signal}` : `exited with code ${code}`} after ${files.length} of ${job.files.length} files` +
            (stderr.length ? `: ${stderr.slice(-5).join(' | ')}` : ''),
        ),
      );
    });
  });
}
