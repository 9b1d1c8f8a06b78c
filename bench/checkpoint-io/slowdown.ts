/**
 * Training-step delay of checkpoint uploads, measured in one run: a torch
 * trainer (bench/checkpoint-io/trainer.py, fixed-size matmul steps, in its own
 * session like a stage) runs throughout, while this script alternates windows
 * without an upload and windows during which one uploader sends a checkpoint
 * over and over (at least `--window-s` seconds, whole uploads):
 *
 *   - `child`: the real uploader (createCheckpointUploader with `s3`: the
 *     low-priority upload process of activities/checkpoints/upload-process.ts);
 *   - `inproc`: the previous uploader, in this (worker-like) process, 4 parts in flight;
 *   - `mc`: `mc cp --recursive` of the same directory, at normal priority.
 *
 * Per window type: mean step time, delay % = (with − without) / without
 * (without = the idle windows), the trainer's run-queue wait per step (sum of
 * /proc/<pid>/task/* /schedstat over its threads), uploader CPU-seconds per
 * GiB (child: its own resourceUsage, cross-checked by this process's reaped-
 * children CPU; inproc: this process's CPU; mc: reaped-children CPU), the
 * MinIO server's CPU-seconds per GiB when its pid file is found (it shares
 * the host here; it would not in production), and throughput. Before the
 * windows, upload throughput without the trainer: child vs inproc vs mc,
 * interleaved (the ≥ 0.9× mc target). With `--separate-minio-cpu`, that
 * comparison is repeated with MinIO pinned to one CPU and this process (so
 * every uploader it starts) to the others, as with MinIO on a host of its own:
 * on a shared CPU the niced upload process yields to MinIO itself. With
 * `--training-layout minio-apart`, the training windows run that way too: MinIO
 * on the last CPU, the trainer, this process and every uploader on the others,
 * so a window's delay is what the uploader itself costs the trainer on the CPUs
 * they share (in production MinIO runs on a host of its own; here its CPU per
 * GiB, more than the uploader's, lands on the trainer's CPUs otherwise).
 *
 *   node dist/bench/checkpoint-io/slowdown.js [--quick] [--mib 1024] [--rounds 3] [--window-s 5]
 *        [--trainer-threads 1] [--throughput-reps 3] [--modes child,inproc,mc] [--separate-minio-cpu] [--training-layout shared|minio-apart]
 *        [--label text] [--out file]
 *
 * Needs the services (`infra/dev up`; TANREN_STATE_DIR selects them), `mc`
 * (`infra/install-tools mc`) and the stages venv (`infra/install-stages`).
 * Results: bench/results/checkpoint-slowdown-<date>[-quick].json and a table on stdout.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { open, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { execa } from 'execa';
import { defaultUploadTuning } from '../../activities/checkpoints/upload-process.js';
import { createCheckpointUploader } from '../../activities/checkpoints/uploader.js';
import type { ObjectStoreConfig } from '../../activities/storage/client.js';
import { createObjectStore, type ObjectStore } from '../../activities/storage/store.js';
import { loadEnv, objectStoreConfig, readEnvFile } from '../../worker/config.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    mib: { type: 'string' },
    rounds: { type: 'string' },
    'window-s': { type: 'string' },
    'trainer-threads': { type: 'string', default: '1' },
    'throughput-reps': { type: 'string' },
    'separate-minio-cpu': { type: 'boolean', default: false },
    'training-layout': { type: 'string', default: 'shared' },
    modes: { type: 'string', default: 'child,inproc,mc' },
    label: { type: 'string' },
    out: { type: 'string' },
  },
});
const quick = args.quick;
const sizeMiB = Number(args.mib ?? (quick ? 256 : 1024));
const rounds = Number(args.rounds ?? (quick ? 2 : 3));
const windowS = Number(args['window-s'] ?? (quick ? 3 : 5));
const trainerThreads = Number(args['trainer-threads']);
const throughputReps = Number(args['throughput-reps'] ?? (quick ? 2 : 3));
const modes = args.modes.split(',').map((m) => m.trim()) as Mode[];
type Mode = 'child' | 'inproc' | 'mc';
const trainingLayout = args['training-layout'];
if (trainingLayout !== 'shared' && trainingLayout !== 'minio-apart') {
  throw new Error(`--training-layout: unknown layout "${trainingLayout}" (shared, minio-apart)`);
}
for (const m of modes) if (!['child', 'inproc', 'mc'].includes(m)) throw new Error(`--modes: unknown mode "${m}" (child, inproc, mc)`);

const CLK_TCK = 100; // USER_HZ on Linux
/** utime+stime and cutime+cstime (reaped children) of a process, seconds; undefined when it is gone. */
function procCpu(pid: number | 'self'): { self: number; children: number } | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s
      .slice(s.lastIndexOf(')') + 2)
      .split(' ')
      .map(Number);
    // Fields 14–17 of proc(5), counted from 3 after the command.
    return { self: (f[11] + f[12]) / CLK_TCK, children: (f[13] + f[14]) / CLK_TCK };
  } catch {
    return undefined;
  }
}

function mcBin(): string {
  const versions = readEnvFile(path.join(ROOT, 'infra', 'versions.env'));
  const cache = process.env.TANREN_CACHE ?? path.join(os.homedir(), '.cache', 'tanren');
  const p = path.join(cache, 'tools', `mc-${versions.MC_VERSION}`, 'mc');
  if (!existsSync(p)) throw new Error(`mc not installed at ${p}: run infra/install-tools mc`);
  return p;
}

/** A checkpoint of about `mib` MiB: 60 % one model file, 40 % four optimizer shards, a few small files; random bytes. */
async function makeCheckpoint(dir: string, mib: number): Promise<{ files: number; bytes: number }> {
  const layout: Array<[string, number]> = [
    ['model/model-00001-of-00001.safetensors', Math.round(0.6 * mib * MiB)],
    ...[0, 1, 2, 3].map((i): [string, number] => [`optimizer/shard-${i}.pt`, Math.round(0.1 * mib * MiB)]),
    ['config.json', 2_000],
    ['tokenizer.json', 2 * MiB],
    ['rng_state.pth', 15_000],
    ['trainer_state.json', 40_000],
  ];
  let bytes = 0;
  const block = randomBytes(8 * MiB);
  for (const [rel, size] of layout) {
    const file = path.join(dir, rel);
    mkdirSync(path.dirname(file), { recursive: true });
    const fh = await open(file, 'w');
    for (let off = 0, n = 0; off < size; off += block.length, n++) {
      block.writeUInt32LE(n, 0); // different per block and file: nothing dedups
      block.write(rel.padEnd(64, '.'), 4);
      await fh.write(block, 0, Math.min(block.length, size - off));
    }
    await fh.close();
    bytes += size;
  }
  return { files: layout.length, bytes };
}

interface Step {
  t: number;
  ms: number;
  rq_ns: number;
  cpu_ns: number;
}

/** Starts the torch trainer in its own session (as run-stage starts a stage) and collects its steps. */
async function startTrainer(python: string): Promise<{ pid: number; steps: Step[]; stop(): Promise<void>; child: ChildProcess }> {
  const child = spawn(python, [path.join(ROOT, 'bench', 'checkpoint-io', 'trainer.py'), '--threads', String(trainerThreads)], {
    detached: true,
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const steps: Step[] = [];
  let pid = 0;
  const ready = new Promise<void>((resolve, reject) => {
    child.on('error', reject);
    child.on('exit', (code) => reject(new Error(`trainer exited with code ${code} before it was ready`)));
    createInterface({ input: child.stdout }).on('line', (line) => {
      const m = JSON.parse(line) as Step & { ready?: boolean; pid?: number };
      if (m.ready) {
        pid = m.pid!;
        resolve();
      } else steps.push(m);
    });
  });
  await ready;
  const exited = new Promise<void>((r) => child.on('exit', () => r()));
  return {
    pid,
    steps,
    child,
    stop: async () => {
      child.stdin.end('stop\n');
      await exited;
    },
  };
}

const mean = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN);
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Window {
  kind: 'idle' | Mode;
  round: number;
  start: number;
  end: number;
  uploads?: number;
  uploadSeconds?: number[];
  bytes?: number;
  /** Uploader CPU seconds, by the method of its mode. */
  uploaderCpuSeconds?: number;
  /** The upload process's own figure (child mode). */
  childReportedCpuSeconds?: number;
  minioCpuSeconds?: number;
}

async function main() {
  const env = loadEnv({ ...process.env, TANREN_PROJECT_DIR: ROOT });
  const s3: ObjectStoreConfig = objectStoreConfig(env);
  const storage: ObjectStore = createObjectStore(s3);
  await storage.ensureBucket();
  const mc = mcBin();
  const python =
    process.env.TANREN_PYTHON ?? (await execa(path.join(ROOT, 'infra', 'install-stages'), { stderr: 'inherit' })).stdout.trim().split('\n').at(-1)!;
  const statePids = path.join(process.env.TANREN_STATE_DIR ?? path.join(ROOT, '.tanren'), 'pids', 'minio.pid');
  const minioPid = existsSync(statePids) ? Number(readFileSync(statePids, 'utf8').trim()) : undefined;
  const minioCpu = () => (minioPid ? procCpu(minioPid)?.self : undefined);
  // MinIO's CPU priority (`TANREN_MINIO_NICE` of infra/dev): its autogroup's nice, e.g. "/autogroup-6 nice 19".
  const minioAutogroup = minioPid && existsSync(`/proc/${minioPid}/autogroup`) ? readFileSync(`/proc/${minioPid}/autogroup`, 'utf8').trim() : undefined;

  const tuning = defaultUploadTuning();
  const started = new Date();
  const loadavgAtStart = os.loadavg();
  const id = `bench-slowdown-${process.pid}-${Date.now().toString(36)}`;
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'tanren-slowdown-'));
  const mcEnv = { MC_CONFIG_DIR: path.join(tmp, 'mc-config'), MC_DISABLE_PAGER: '1', NO_COLOR: '1' };
  const runMc = (argv: string[]) => execa(mc, ['--quiet', '--no-color', ...argv], { env: mcEnv, stdout: 'ignore', stderr: 'pipe' });
  let trainer: Awaited<ReturnType<typeof startTrainer>> | undefined;
  let seq = 0;
  const removePrefix = async (prefix: string) => {
    const keys = (await storage.list(prefix)).map((o) => o.key);
    for (let i = 0; i < keys.length; i += 1000) await storage.remove(keys.slice(i, i + 1000));
  };

  try {
    await runMc(['alias', 'set', 'tbench', s3.endpoint, s3.accessKey, s3.secretKey, '--api', 'S3v4']);
    const cpDir = path.join(tmp, 'checkpoints');
    const cpName = 'step-001000';
    const src = path.join(cpDir, cpName);
    const { files, bytes } = await makeCheckpoint(src, sizeMiB);
    console.log(`checkpoint: ${files} files, ${(bytes / MiB).toFixed(0)} MiB; trainer threads ${trainerThreads}; modes ${modes.join(', ')}`);

    /** One upload with `mode`; returns its seconds and the child's own CPU figure. */
    const uploadOnce = async (mode: Mode): Promise<{ seconds: number; childCpu?: number }> => {
      const prefix = `runs/${id}-${++seq}/`;
      const t = performance.now();
      let childCpu: number | undefined;
      if (mode === 'mc') {
        await runMc(['cp', '--recursive', `${src}/`, `tbench/${s3.bucket}/${prefix}${cpName}/`]);
      } else {
        const up = createCheckpointUploader({
          storage,
          runId: prefix.slice('runs/'.length, -1),
          stage: 'train',
          checkpointsDir: cpDir,
          keep: 1,
          s3,
          uploadProcess: mode === 'child',
          processThreshold: 0,
          // The previous uploader's settings: 4 parts in flight in the worker. The child's are the host's
          // defaults, taken before any pinning (they follow the CPUs this process may use).
          multipart: mode === 'inproc' ? { concurrency: 4 } : tuning,
          onUploadStats: (st) => (childCpu = (childCpu ?? 0) + st.cpuSeconds),
        });
        up.announce({ path: cpName, step: 1000 });
        await up.flush();
      }
      const seconds = (performance.now() - t) / 1000;
      await removePrefix(prefix);
      return { seconds, childCpu };
    };

    // 1. Throughput without the trainer, interleaved.
    const throughput: Record<Mode, number[]> = { child: [], inproc: [], mc: [] };
    await uploadOnce('child'); // warm-up: page cache, connections, MinIO
    for (let r = 1; r <= throughputReps; r++) {
      for (const m of modes) throughput[m].push((await uploadOnce(m)).seconds);
      console.log(`throughput rep ${r}: ${modes.map((m) => `${m} ${throughput[m].at(-1)!.toFixed(2)} s`).join(', ')}`);
    }

    // 1b. The same with MinIO on a CPU of its own (a stand-in for MinIO on another host): affinity is inherited,
    // so this process pinned to the other CPUs pins the upload process and mc too.
    const separate: Record<Mode, number[]> = { child: [], inproc: [], mc: [] };
    const cpus = os.cpus().length;
    const others = cpus === 2 ? '0' : `0-${cpus - 2}`;
    /**
     * Runs `fn` with MinIO pinned to the last CPU and this process (so every process it starts from now on) to
     * the others; both are unpinned after it, also on Ctrl-C or SIGTERM (only a SIGKILL leaves MinIO on one
     * CPU, until `infra/dev down` and `up`, or `taskset -a -p -c 0-<n-1> <pid>`).
     */
    const withMinioApart = async <T>(fn: () => Promise<T>): Promise<T> => {
      if (!minioPid || cpus < 2) throw new Error('MinIO on a CPU of its own needs the MinIO pid file and at least 2 CPUs');
      const unpinOnSignal = (signal: NodeJS.Signals) => {
        try {
          execFileSync('taskset', ['-a', '-p', '-c', `0-${cpus - 1}`, String(minioPid)], { stdio: 'ignore' });
        } finally {
          process.exit(signal === 'SIGINT' ? 130 : 143);
        }
      };
      process.once('SIGINT', unpinOnSignal);
      process.once('SIGTERM', unpinOnSignal);
      await execa('taskset', ['-a', '-p', '-c', String(cpus - 1), String(minioPid)], { stdout: 'ignore' });
      await execa('taskset', ['-a', '-p', '-c', others, String(process.pid)], { stdout: 'ignore' });
      try {
        return await fn();
      } finally {
        await execa('taskset', ['-a', '-p', '-c', `0-${cpus - 1}`, String(minioPid)], { stdout: 'ignore' });
        await execa('taskset', ['-a', '-p', '-c', `0-${cpus - 1}`, String(process.pid)], { stdout: 'ignore' });
        process.removeListener('SIGINT', unpinOnSignal);
        process.removeListener('SIGTERM', unpinOnSignal);
      }
    };
    if (args['separate-minio-cpu']) {
      await withMinioApart(async () => {
        await uploadOnce('child');
        for (let r = 1; r <= throughputReps; r++) {
          for (const m of modes) separate[m].push((await uploadOnce(m)).seconds);
          console.log(`MinIO on CPU ${cpus - 1}, uploaders on ${others}, rep ${r}: ${modes.map((m) => `${m} ${separate[m].at(-1)!.toFixed(2)} s`).join(', ')}`);
        }
      });
    }

    // 2. Alternating windows with the trainer running (started after the pinning, so it inherits it).
    const windows: Window[] = [];
    const trainingWindows = async () => {
      trainer = await startTrainer(python);
      await sleep(1000); // its first steps settle
      const idleWindow = async (round: number) => {
        const start = Date.now();
        await sleep(windowS * 1000);
        windows.push({ kind: 'idle', round, start, end: Date.now() });
      };
      for (let round = 1; round <= rounds; round++) {
        for (const m of modes) {
          await idleWindow(round);
          const w: Window = { kind: m, round, start: Date.now(), end: 0, uploads: 0, uploadSeconds: [], bytes: 0, uploaderCpuSeconds: 0 };
          const self0 = procCpu('self')!;
          const mio0 = minioCpu();
          let childCpu = 0;
          const t0 = Date.now();
          // Whole uploads until the window has lasted windowS (the objects are removed in between, outside MinIO's CPU figure only approximately).
          do {
            const u = await uploadOnce(m);
            w.uploads!++;
            w.uploadSeconds!.push(u.seconds);
            w.bytes! += bytes;
            childCpu += u.childCpu ?? 0;
          } while (Date.now() - t0 < windowS * 1000);
          w.end = Date.now();
          const self1 = procCpu('self')!;
          const mio1 = minioCpu();
          w.uploaderCpuSeconds = m === 'inproc' ? self1.self - self0.self : self1.children - self0.children;
          if (m === 'child') w.childReportedCpuSeconds = childCpu;
          if (mio0 !== undefined && mio1 !== undefined) w.minioCpuSeconds = mio1 - mio0;
          windows.push(w);
          console.log(
            `round ${round} ${m}: ${w.uploads} upload(s) in ${((w.end - w.start) / 1000).toFixed(1)} s, uploader ${w.uploaderCpuSeconds.toFixed(2)} CPU-s` +
              (w.childReportedCpuSeconds !== undefined ? ` (child says ${w.childReportedCpuSeconds.toFixed(2)})` : ''),
          );
          await sleep(300); // let the deletes and the last part settle before the next idle window
        }
      }
      await idleWindow(rounds + 1);
      await trainer.stop();
    };
    if (trainingLayout === 'minio-apart') {
      console.log(`training windows: MinIO on CPU ${cpus - 1}; the trainer and the uploaders on ${others}`);
      await withMinioApart(trainingWindows);
    } else await trainingWindows();
    const steps = trainer!.steps;

    const inWindow = (w: Window) => steps.filter((s) => s.t >= w.start && s.t + s.ms <= w.end);
    const stepsOf = (kind: Window['kind']) => windows.filter((w) => w.kind === kind).flatMap(inWindow);
    const idle = stepsOf('idle');
    const idleMs = mean(idle.map((s) => s.ms));
    const summary: Record<string, Record<string, number | undefined>> = {
      idle: {
        steps: idle.length,
        stepMs: idleMs,
        runQueueWaitMsPerStep: mean(idle.map((s) => s.rq_ns / 1e6)),
        cpuMsPerStep: mean(idle.map((s) => s.cpu_ns / 1e6)),
      },
    };
    for (const m of modes) {
      const ws = windows.filter((w) => w.kind === m);
      const st = stepsOf(m);
      const gib = ws.reduce((a, w) => a + w.bytes!, 0) / GiB;
      const upSecs = ws.flatMap((w) => w.uploadSeconds!);
      // Per round: against the idle window just before it (drift in host load cancels out).
      const paired = ws.map((w) => {
        const before = windows[windows.indexOf(w) - 1];
        const a = mean(inWindow(before).map((s) => s.ms));
        return (mean(inWindow(w).map((s) => s.ms)) - a) / a;
      });
      summary[m] = {
        steps: st.length,
        stepMs: mean(st.map((s) => s.ms)),
        delayPct: (100 * (mean(st.map((s) => s.ms)) - idleMs)) / idleMs,
        delayPctPairedMedian: 100 * median(paired),
        runQueueWaitMsPerStep: mean(st.map((s) => s.rq_ns / 1e6)),
        cpuMsPerStep: mean(st.map((s) => s.cpu_ns / 1e6)),
        uploaderCpuSecondsPerGiB: ws.reduce((a, w) => a + w.uploaderCpuSeconds!, 0) / gib,
        childReportedCpuSecondsPerGiB: m === 'child' ? ws.reduce((a, w) => a + (w.childReportedCpuSeconds ?? 0), 0) / gib : undefined,
        minioCpuSecondsPerGiB: ws.every((w) => w.minioCpuSeconds !== undefined) ? ws.reduce((a, w) => a + w.minioCpuSeconds!, 0) / gib : undefined,
        uploadSecondsMedianDuringTraining: median(upSecs),
        uploadGBpsDuringTraining: bytes / median(upSecs) / 1e9,
        uploadSecondsMedianAlone: throughput[m].length ? median(throughput[m]) : undefined,
        uploadGBpsAlone: throughput[m].length ? bytes / median(throughput[m]) / 1e9 : undefined,
      };
    }
    const ratio = (m: Mode) => (throughput.mc.length && throughput[m].length ? median(throughput.mc) / median(throughput[m]) : undefined);
    const result = {
      benchmark: 'checkpoint-slowdown',
      label: args.label ?? (quick ? 'quick' : undefined),
      date: started.toISOString(),
      host: { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model, memGiB: os.totalmem() / GiB, loadavgAtStart, node: process.version },
      checkpoint: { files, bytes },
      settings: {
        quick,
        rounds,
        windowS,
        trainerThreads,
        throughputReps,
        modes,
        trainingLayout,
        childTuning: tuning,
        minioPidFound: !!minioPid,
        minioAutogroup,
      },
      throughputSeconds: throughput,
      throughputVsMc: { child: ratio('child'), inproc: ratio('inproc') },
      ...(separate.mc.length
        ? {
            separateMinioCpu: {
              throughputSeconds: separate,
              throughputVsMc: Object.fromEntries(modes.filter((m) => m !== 'mc').map((m) => [m, median(separate.mc) / median(separate[m])])),
            },
          }
        : {}),
      summary,
      windows: windows.map((w) => ({ ...w, steps: inWindow(w).length, stepMs: mean(inWindow(w).map((s) => s.ms)) })),
      loadavgAtEnd: os.loadavg(),
    };
    const out = args.out ?? path.join(ROOT, 'bench', 'results', `checkpoint-slowdown-${started.toISOString().slice(0, 10)}${quick ? '-quick' : ''}.json`);
    mkdirSync(path.dirname(out), { recursive: true });
    writeFileSync(out, `${JSON.stringify(result, null, 2)}\n`);

    const f = (x: number | undefined, d = 2) => (x === undefined || Number.isNaN(x) ? '—' : x.toFixed(d));
    console.log(
      `\n| window (${(bytes / MiB).toFixed(0)} MiB checkpoint) | steps | step ms | delay % (all idle / paired median) | run-queue wait ms/step | uploader CPU-s/GiB | MinIO CPU-s/GiB | upload GB/s during / alone | throughput vs mc |`,
    );
    console.log('|---|---|---|---|---|---|---|---|---|');
    console.log(`| no upload | ${summary.idle.steps} | ${f(idleMs)} | — | ${f(summary.idle.runQueueWaitMsPerStep)} | — | — | — | — |`);
    for (const m of modes) {
      const s = summary[m];
      console.log(
        `| ${m} | ${s.steps} | ${f(s.stepMs)} | **${f(s.delayPct, 1)}** / ${f(s.delayPctPairedMedian, 1)} | ${f(s.runQueueWaitMsPerStep)} | ${f(s.uploaderCpuSecondsPerGiB)}` +
          `${s.childReportedCpuSecondsPerGiB !== undefined ? ` (child: ${f(s.childReportedCpuSecondsPerGiB)})` : ''} | ${f(s.minioCpuSecondsPerGiB)} | ` +
          `${f(s.uploadGBpsDuringTraining, 3)} / ${f(s.uploadGBpsAlone, 3)} | ${m === 'mc' ? '1.00×' : `${f(ratio(m))}×`} |`,
      );
    }
    if (separate.mc.length) {
      console.log(
        `MinIO on a CPU of its own, upload alone (median of ${throughputReps}): ${modes
          .map((m) => `${m} ${f(median(separate[m]))} s${m === 'mc' ? '' : ` (${f(median(separate.mc) / median(separate[m]))}× mc)`}`)
          .join(', ')}`,
      );
    }
    console.log(
      `load average ${result.host.loadavgAtStart.map((x) => x.toFixed(1)).join(' ')} at the start, ${os
        .loadavg()
        .map((x) => x.toFixed(1))
        .join(' ')} at the end; MinIO's autogroup: ${minioAutogroup ?? 'unknown'}; results: ${path.relative(ROOT, out)}`,
    );
  } finally {
    if (trainer && trainer.child.exitCode === null) trainer.child.kill('SIGKILL');
    try {
      await removePrefix(`runs/${id}-`);
    } catch (err) {
      console.error(`cleanup failed: ${(err as Error).message}`);
    }
    await rm(tmp, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
