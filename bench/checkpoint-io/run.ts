/**
 * Checkpoint I/O benchmark: upload and download throughput of a ~1 GiB
 * multi-file checkpoint (1 × 600 MiB + 4 × 100 MiB + small files) to the
 * local MinIO with activities/checkpoints/, against the official MinIO
 * client `mc cp --recursive` on the same files, interleaved; and the delay a
 * CPU-bound "training step" loop in a child process suffers while a
 * checkpoint uploads in the background.
 *
 *   node dist/bench/checkpoint-io/run.js [--reps 3] [--scale 1] [--part-mib 32] [--concurrency 4] [--out file]
 *
 * `mc` comes from `infra/install-tools mc`. Its alias points at the local
 * endpoint with the credentials of TANREN_S3_CREDENTIALS_FILE, in a private
 * MC_CONFIG_DIR that is deleted afterwards; credentials are never printed.
 * Results: bench/results/checkpoint-io-<date>.json (and a table on stdout).
 * Every object and temporary file the benchmark made is removed at the end.
 */
import { fork } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { open, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { execa } from 'execa';
import type { CheckpointRef } from '../../activities/checkpoints/manifest.js';
import { downloadCheckpoint } from '../../activities/checkpoints/restore.js';
import { createCheckpointUploader } from '../../activities/checkpoints/uploader.js';
import { listFiles } from '../../activities/files.js';
import type { ObjectStoreConfig } from '../../activities/storage/client.js';
import { createObjectStore, type ObjectStore } from '../../activities/storage/store.js';
import { loadEnv, objectStoreConfig, readEnvFile } from '../../worker/config.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const MiB = 1024 * 1024;

const { values: args } = parseArgs({
  options: {
    reps: { type: 'string', default: '3' },
    scale: { type: 'string', default: '1' },
    'part-mib': { type: 'string', default: '32' },
    concurrency: { type: 'string', default: '4' },
    out: { type: 'string' },
  },
});
const reps = Number(args.reps);
const scale = Number(args.scale);
const partSize = Number(args['part-mib']) * MiB;
const concurrency = Number(args.concurrency);

function mcBin(): string {
  const versions = readEnvFile(path.join(ROOT, 'infra', 'versions.env'));
  const cache = process.env.TANREN_CACHE ?? path.join(os.homedir(), '.cache', 'tanren');
  const p = path.join(cache, 'tools', `mc-${versions.MC_VERSION}`, 'mc');
  if (!existsSync(p)) throw new Error(`mc not installed at ${p}: run infra/install-tools mc`);
  return p;
}

/** Writes random files: the checkpoint layout of the benchmark. */
async function makeCheckpoint(dir: string): Promise<{ files: number; bytes: number }> {
  const layout: Array<[string, number]> = [
    ['model/model-00001-of-00001.safetensors', Math.round(600 * MiB * scale)],
    ...[0, 1, 2, 3].map((i): [string, number] => [`optimizer/shard-${i}.pt`, Math.round(100 * MiB * scale)]),
    ['config.json', 2_000],
    ['generation_config.json', 300],
    ['tokenizer.json', 2 * MiB],
    ['tokenizer_config.json', 4_000],
    ['rng_state.pth', 15_000],
    ['scheduler.pt', 1_100],
    ['trainer_state.json', 40_000],
    ['training_args.bin', 5_500],
  ];
  let bytes = 0;
  const block = randomBytes(8 * MiB);
  for (const [rel, size] of layout) {
    const file = path.join(dir, rel);
    mkdirSync(path.dirname(file), { recursive: true });
    const fh = await open(file, 'w');
    // Random, and different per file and block (a counter mixed in), so nothing dedups or compresses.
    for (let off = 0, n = 0; off < size; off += block.length, n++) {
      block.writeUInt32LE(n, 0);
      block.write(rel.padEnd(64, '.'), 4);
      await fh.write(block, 0, Math.min(block.length, size - off));
    }
    await fh.close();
    bytes += size;
  }
  return { files: layout.length, bytes };
}

/** The CPU-bound "training step": fixed arithmetic, timed per step, in a child process. */
const TRAINER = `
const { performance } = require('node:perf_hooks');
const steps = [];
let stop = false;
process.on('message', (m) => { if (m === 'stop') stop = true; });
function step() {
  // ~50 ms of pure arithmetic on an idle core (no allocation, no I/O).
  let x = 0;
  for (let i = 1; i < 1.5e6; i++) x = (x + Math.sqrt(i) * 1.000001) % 1e9;
  return x;
}
const max = Number(process.argv[2] || 1e9);
(async () => {
  process.send({ ready: true });
  let sink = 0;
  while (!stop && steps.length < max) {
    const t = performance.now();
    sink += step();
    steps.push([t, performance.now() - t]);
    if (steps.length % 10 === 0) await new Promise((r) => setImmediate(r)); // let 'stop' in
  }
  process.send({ steps, origin: performance.timeOrigin, sink });
})();
`;

interface TrainRun {
  /** [start (epoch ms), duration ms] per step. */
  steps: Array<[number, number]>;
}

function startTrainer(dir: string, maxSteps?: number): { ready: Promise<void>; stop(): void; done: Promise<TrainRun> } {
  const file = path.join(dir, 'trainer.cjs');
  if (!existsSync(file)) writeFileSync(file, TRAINER);
  const child = fork(file, maxSteps ? [String(maxSteps)] : [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  let readyResolve!: () => void;
  const ready = new Promise<void>((r) => (readyResolve = r));
  const done = new Promise<TrainRun>((resolve, reject) => {
    child.on('message', (m: { ready?: boolean; steps?: Array<[number, number]>; origin?: number }) => {
      if (m.ready) readyResolve();
      else if (m.steps) {
        resolve({ steps: m.steps.map(([t, d]) => [m.origin! + t, d]) });
        child.disconnect();
      }
    });
    child.on('error', reject);
  });
  return { ready, stop: () => child.send('stop'), done };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const gbps = (bytes: number, s: number) => bytes / s / 1e9;

async function main() {
  const env = loadEnv({ ...process.env, TANREN_PROJECT_DIR: ROOT });
  const s3: ObjectStoreConfig = objectStoreConfig(env);
  const storage: ObjectStore = createObjectStore(s3);
  await storage.ensureBucket();
  const mc = mcBin();
  const started = new Date();
  const id = `bench-ckpt-${process.pid}-${Date.now().toString(36)}`;
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'tanren-ckpt-bench-'));
  const mcEnv = { MC_CONFIG_DIR: path.join(tmp, 'mc-config'), MC_DISABLE_PAGER: '1', NO_COLOR: '1' };
  const runMc = (argv: string[]) => execa(mc, ['--quiet', '--no-color', ...argv], { env: mcEnv, stdout: 'ignore', stderr: 'pipe' });
  const prefixes: string[] = [];

  try {
    // Credentials go to mc on its argv and into the private config dir only; mc's output is not shown.
    await runMc(['alias', 'set', 'tbench', s3.endpoint, s3.accessKey, s3.secretKey, '--api', 'S3v4']);

    const cpDir = path.join(tmp, 'checkpoints');
    const cpName = 'step-001000';
    const src = path.join(cpDir, cpName);
    const t0 = performance.now();
    const { files, bytes } = await makeCheckpoint(src);
    console.log(`checkpoint: ${files} files, ${(bytes / MiB).toFixed(0)} MiB (written in ${((performance.now() - t0) / 1000).toFixed(1)} s)`);

    const ours = { up: [] as number[], down: [] as number[] };
    const theirs = { up: [] as number[], down: [] as number[] };
    const uploadOurs = async (runId: string): Promise<{ seconds: number; ref: CheckpointRef }> => {
      prefixes.push(`runs/${runId}/`);
      const up = createCheckpointUploader({ storage, runId, stage: 'train', checkpointsDir: cpDir, keep: 1, s3, multipart: { partSize, concurrency } });
      const t = performance.now();
      up.announce({ path: cpName, step: 1000 });
      await up.flush();
      return { seconds: (performance.now() - t) / 1000, ref: up.latest()! };
    };

    for (let r = 1; r <= reps; r++) {
      // Interleaved so that load from other jobs on the host hits both alike.
      const runId = `${id}-r${r}`;
      const { seconds, ref } = await uploadOurs(runId);
      ours.up.push(seconds);
      const mcPrefix = `runs/${id}-mc-r${r}/`;
      prefixes.push(mcPrefix);
      let t = performance.now();
      await runMc(['cp', '--recursive', `${src}/`, `tbench/${s3.bucket}/${mcPrefix}${cpName}/`]);
      theirs.up.push((performance.now() - t) / 1000);

      const dlOurs = path.join(tmp, 'dl-ours');
      t = performance.now();
      await downloadCheckpoint(storage, ref, dlOurs, { s3 });
      ours.down.push((performance.now() - t) / 1000);
      await rm(dlOurs, { recursive: true, force: true });

      const dlMc = path.join(tmp, 'dl-mc');
      t = performance.now();
      await runMc(['cp', '--recursive', `tbench/${s3.bucket}/${mcPrefix}${cpName}/`, `${dlMc}/`]);
      theirs.down.push((performance.now() - t) / 1000);
      const got = await listFiles(dlMc);
      if (got.length !== files) throw new Error(`mc downloaded ${got.length} files, expected ${files}`);
      await rm(dlMc, { recursive: true, force: true });
      console.log(
        `rep ${r}: upload ours ${ours.up.at(-1)!.toFixed(2)} s, mc ${theirs.up.at(-1)!.toFixed(2)} s; ` +
          `download ours (verified) ${ours.down.at(-1)!.toFixed(2)} s, mc ${theirs.down.at(-1)!.toFixed(2)} s`,
      );
      await storage.remove((await storage.list(mcPrefix)).map((o) => o.key));
      await storage.remove((await storage.list(`runs/${runId}/`)).map((o) => o.key));
    }

    // Training-step delay: the same step loop alone, then while a checkpoint uploads
    // (with tanren, and with mc for reference: the server's share of the CPU is in both).
    const measureDelay = async (upload: () => Promise<number>) => {
      const base = startTrainer(tmp, 60);
      await base.ready;
      const baseMean = mean((await base.done).steps.slice(5).map(([, d]) => d)); // warm-up excluded
      const tr = startTrainer(tmp);
      await tr.ready;
      await new Promise((res) => setTimeout(res, 1000)); // warm-up steps before the upload starts
      const upStart = Date.now();
      const seconds = await upload();
      const upEnd = Date.now();
      tr.stop();
      const run = await tr.done;
      const during = run.steps.filter(([s, d]) => s + d > upStart && s < upEnd).map(([, d]) => d);
      const duringMean = mean(during);
      // Extra time the training loop spent in the steps that overlapped the upload.
      const delayMs = Math.max(
        0,
        during.reduce((a, d) => a + (d - baseMean), 0),
      );
      return {
        uploadSeconds: seconds,
        baselineStepMs: baseMean,
        stepMsDuringUpload: duringMean,
        stepsDuringUpload: during.length,
        slowdownDuringUpload: duringMean / baseMean,
        delayMs,
        delayOverUpload: delayMs / (seconds * 1000),
      };
    };
    const training: Array<Record<string, number>> = [];
    const trainingMc: Array<Record<string, number>> = [];
    for (let r = 1; r <= reps; r++) {
      const t = await measureDelay(async () => (await uploadOurs(`${id}-train-r${r}`)).seconds);
      training.push(t);
      await storage.remove((await storage.list(`runs/${id}-train-r${r}/`)).map((o) => o.key));
      const mcPrefix = `runs/${id}-mc-train-r${r}/`;
      prefixes.push(mcPrefix);
      const m = await measureDelay(async () => {
        const t0 = performance.now();
        await runMc(['cp', '--recursive', `${src}/`, `tbench/${s3.bucket}/${mcPrefix}${cpName}/`]);
        return (performance.now() - t0) / 1000;
      });
      trainingMc.push(m);
      await storage.remove((await storage.list(mcPrefix)).map((o) => o.key));
      for (const [who, x] of [
        ['tanren', t],
        ['mc', m],
      ] as const) {
        console.log(
          `training rep ${r} (${who}): step ${x.baselineStepMs.toFixed(1)} ms alone, ${x.stepMsDuringUpload.toFixed(1)} ms during a ${x.uploadSeconds.toFixed(2)} s upload ` +
            `→ delay ${(x.delayMs / 1000).toFixed(2)} s = ${(100 * x.delayOverUpload).toFixed(1)} % of the upload`,
        );
      }
    }

    const summary = {
      uploadOursGBps: gbps(bytes, median(ours.up)),
      uploadMcGBps: gbps(bytes, median(theirs.up)),
      uploadRatio: median(theirs.up) / median(ours.up),
      downloadOursGBps: gbps(bytes, median(ours.down)),
      downloadMcGBps: gbps(bytes, median(theirs.down)),
      downloadRatio: median(theirs.down) / median(ours.down),
      trainingDelayOverUpload: median(training.map((t) => t.delayOverUpload)),
      trainingSlowdownDuringUpload: median(training.map((t) => t.slowdownDuringUpload)),
      trainingDelayOverUploadMc: median(trainingMc.map((t) => t.delayOverUpload)),
      trainingSlowdownDuringUploadMc: median(trainingMc.map((t) => t.slowdownDuringUpload)),
    };
    const result = {
      benchmark: 'checkpoint-io',
      date: started.toISOString(),
      host: { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model, memGiB: os.totalmem() / 2 ** 30, loadavg: os.loadavg(), node: process.version },
      checkpoint: { files, bytes },
      settings: { reps, partSize, concurrency, multipartThreshold: 16 * MiB, endpoint: s3.endpoint },
      seconds: { ours, mc: theirs },
      training,
      trainingMc,
      summary,
    };
    const out = args.out ?? path.join(ROOT, 'bench', 'results', `checkpoint-io-${started.toISOString().slice(0, 10)}.json`);
    mkdirSync(path.dirname(out), { recursive: true });
    writeFileSync(out, `${JSON.stringify(result, null, 2)}\n`);

    const row = (name: string, o: number[], m: number[]) =>
      `| ${name} | ${median(o).toFixed(2)} s (${gbps(bytes, median(o)).toFixed(2)} GB/s) | ${median(m).toFixed(2)} s (${gbps(bytes, median(m)).toFixed(2)} GB/s) | **${(median(m) / median(o)).toFixed(2)}×** |`;
    console.log(`\n| transfer (${(bytes / MiB).toFixed(0)} MiB, ${files} files, median of ${reps}) | tanren checkpoints | mc cp --recursive | speed vs mc |`);
    console.log('|---|---|---|---|');
    console.log(row('upload', ours.up, theirs.up));
    console.log(row('download (tanren: + sha256 verify)', ours.down, theirs.down));
    console.log(
      `\ntraining-step delay during upload: median ${(100 * summary.trainingDelayOverUpload).toFixed(1)} % of the upload's duration with tanren, ` +
        `${(100 * summary.trainingDelayOverUploadMc).toFixed(1)} % with mc (target < 5 %)`,
    );
    console.log(`results: ${path.relative(ROOT, out)}`);
  } finally {
    for (const p of prefixes) {
      try {
        await storage.remove((await storage.list(p)).map((o) => o.key));
      } catch (err) {
        console.error(`cleanup of ${p} failed: ${(err as Error).message}`);
      }
    }
    await rm(tmp, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
