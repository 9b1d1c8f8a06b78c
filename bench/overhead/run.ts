/**
 * bench/overhead: per-stage orchestration overhead of tanren.
 *
 * Starts a CPU worker (serving the control queue too) and a GPU worker in this
 * process on unique task queues, then runs pipelines of trivial `run: [true]`
 * stages through Temporal and compares their wall time with running the same
 * command N times without tanren:
 *
 *   chain-20, chain-200   N stages, each needing the previous one, run as
 *                         with `--no-cache` and again with the cache on
 *                         (`+cache`: every stage a miss, looked up and then
 *                         recorded; a fresh `version` per run keeps it a miss)
 *   fanout-200            200 independent stages, at the default CPU activity
 *                         concurrency (4) and at a higher one
 *
 * Every stage does what a real stage does besides its command: work directory
 * set-up, its log and its manifest written to object storage (MinIO), the
 * previous stage's manifest downloaded (chains), and with the cache on its
 * cache look-up and entry. So the overhead includes storage round trips.
 *
 * The phases of each stage are read back from the workflow history (schedule →
 * start → complete → next schedule), and micro-benchmarks time the parts a
 * stage activity is made of, so the report says where the time goes.
 *
 * Usage: node dist/bench/overhead/run.js [--quick] [--reps N] [--fanout-concurrency C] [--cases A,B] [--out FILE]
 * (`--cases chain-20,chain-20+cache`: only those, for interleaved before/after runs on a noisy host).
 * Results: bench/results/overhead-<date>.json (and a table on stdout).
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type { Client } from '@temporalio/client';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { execa } from 'execa';
import { createObjectStore } from '../../activities/storage/store.js';
import { loadEnv, objectStoreConfig } from '../../worker/config.js';
import { connectClient } from '../../worker/connection.js';
import { createLogger } from '../../worker/logger.js';
import { stageProgressSignal } from '../../workflows/pipeline.js';
import { unique } from '../../test/helpers/env.js';
import { startTestWorkers } from '../../test/helpers/workers.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const execFileP = promisify(execFile);

interface Args {
  quick: boolean;
  /** Only these cases (names as in the table, e.g. `chain-20+cache`); no micro-benchmarks then. */
  cases?: string[];
  reps: number;
  fanoutConcurrency: number;
  out?: string;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { quick: false, reps: 3, fanoutConcurrency: 16 };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    if (k === '--quick') a.quick = true;
    else if (k === '--cases') a.cases = argv[++i].split(',');
    else if (k === '--reps') a.reps = Number(argv[++i]);
    else if (k === '--fanout-concurrency') a.fanoutConcurrency = Number(argv[++i]);
    else if (k === '--out') a.out = argv[++i];
    else throw new Error(`unknown argument ${k}; usage: run.js [--quick] [--reps N] [--fanout-concurrency C] [--cases A,B] [--out FILE]`);
  }
  return a;
}

const median = (xs: number[]) => {
  if (!xs.length) return NaN;
  const s = [...xs].sort((x, y) => x - y);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const mean = (xs: number[]) => xs.reduce((n, x) => n + x, 0) / xs.length;
const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((x, y) => x - y);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};
const r1 = (x: number) => Math.round(x * 10) / 10;
const r2 = (x: number) => Math.round(x * 100) / 100;

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

/** Runs fn reps times, returning each wall time in ms. */
async function repeat(reps: number, fn: () => Promise<unknown>): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < reps; i++) out.push(await timed(fn));
  return out;
}

// ---------- baselines: the same command without tanren ----------

const TRUE_ARGV = ['true'];

async function execFileLoop(n: number): Promise<void> {
  for (let i = 0; i < n; i++) await execFileP(TRUE_ARGV[0], TRUE_ARGV.slice(1));
}

/** The way runStage spawns a stage (execa, own process group, streamed output). */
async function execaLoop(n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    await execa(TRUE_ARGV[0], TRUE_ARGV.slice(1), { detached: true, reject: false, stdin: 'ignore', buffer: false, cleanup: true });
  }
}

async function shellLoop(n: number, truePath: string): Promise<void> {
  // An absolute path, so the shell forks and execs it instead of using its `true` builtin.
  await execFileP('sh', ['-c', `i=0; while [ $i -lt ${n} ]; do ${truePath}; i=$((i+1)); done`]);
}

async function execFilePool(n: number, concurrency: number): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(concurrency, n) }, async () => {
      while (next < n) {
        next++;
        await execFileP(TRUE_ARGV[0], TRUE_ARGV.slice(1));
      }
    }),
  );
}

// ---------- tanren ----------

interface Workers {
  cpuQueue: string;
  gpuQueue: string;
  controlQueue: string;
  concurrency: number;
  stop: () => Promise<void>;
}

async function startWorkers(workDir: string, concurrency: number): Promise<Workers> {
  // The test helper's workers with production settings, not its test ones.
  const defaults = loadEnv({ ...process.env, TANREN_PROJECT_DIR: ROOT });
  const w = await startTestWorkers({
    prefix: 'bench',
    workRoot: workDir,
    logger: createLogger('warn', { bench: 'overhead' }),
    envOverrides: { TANREN_CPU_CONCURRENCY: concurrency, TANREN_KILL_GRACE_MS: 2000, TANREN_PROGRESS_INTERVAL_MS: defaults.TANREN_PROGRESS_INTERVAL_MS },
  });
  return { cpuQueue: w.queues.cpu, gpuQueue: w.queues.gpu, controlQueue: w.queues.control, concurrency, stop: w.stop };
}

type Shape = 'chain' | 'fanout';

/**
 * The pipeline of a case. Without the cache (`--no-cache`) it measures orchestration alone; with it, every
 * stage is a miss (a fresh `version` per run changes each cache key) that is looked up and then recorded.
 */
function pipelineInput(w: Workers, shape: Shape, n: number, cache: boolean, local: boolean) {
  const version = unique('v');
  const stages = Array.from({ length: n }, (_, i) => ({
    id: `s${String(i).padStart(4, '0')}`,
    run: TRUE_ARGV,
    ...(cache ? { version } : {}),
    ...(local ? { local: true } : {}),
    needs: shape === 'chain' && i > 0 ? [`s${String(i - 1).padStart(4, '0')}`] : [],
  }));
  return { spec: { name: `bench-${shape}-${n}`, queues: { cpu: w.cpuQueue, gpu: w.gpuQueue }, stages }, options: { noCache: !cache } };
}

interface Phases {
  /** ActivityTaskScheduled → ActivityTaskStarted (matching + worker poll). */
  dispatchMs: number[];
  /** ActivityTaskStarted → ActivityTaskCompleted (the runStage activity). */
  activityMs: number[];
  /** ActivityTaskCompleted → next stage's ActivityTaskScheduled (workflow task round trip; chains only). */
  handoffMs: number[];
  /** Local activities (stages with `local: true`): one `core_local_activity` marker each. */
  localActivities: number;
  /** Activity time by activity type (runStage, checkCache). */
  byType: Record<string, number[]>;
  /** First event → first ActivityTaskScheduled. */
  startupMs: number;
  /** Last ActivityTaskCompleted → WorkflowExecutionCompleted. */
  finishMs: number;
  events: number;
  workflowTasks: number;
  signals: number;
}

function tsMs(t: { seconds?: unknown; nanos?: number | null } | null | undefined): number {
  if (!t) return NaN;
  return Number(t.seconds ?? 0) * 1000 + (t.nanos ?? 0) / 1e6;
}

async function phasesOf(client: Client, workflowId: string): Promise<Phases> {
  const history = await client.workflow.getHandle(workflowId).fetchHistory();
  const events = history.events ?? [];
  const byId = new Map<number, number>();
  const sched: Array<{ id: number; t: number }> = [];
  const typeOf = new Map<number, string>();
  const started = new Map<number, number>();
  const completed: Array<{ sched: number; t: number }> = [];
  let localActivities = 0;
  let workflowTasks = 0;
  let signals = 0;
  for (const e of events) {
    const t = tsMs(e.eventTime);
    const id = Number(e.eventId);
    byId.set(id, t);
    if (e.activityTaskScheduledEventAttributes) {
      sched.push({ id, t });
      typeOf.set(id, e.activityTaskScheduledEventAttributes.activityType?.name ?? '?');
    }
    if (e.activityTaskStartedEventAttributes) started.set(Number(e.activityTaskStartedEventAttributes.scheduledEventId), t);
    if (e.activityTaskCompletedEventAttributes) completed.push({ sched: Number(e.activityTaskCompletedEventAttributes.scheduledEventId), t });
    // A local activity leaves only a marker: no dispatch, and its schedule and complete times in the marker
    // come from different clocks (complete before schedule by ~100 ms here), so they give no phases.
    if (e.markerRecordedEventAttributes?.markerName === 'core_local_activity') localActivities++;
    if (e.workflowTaskCompletedEventAttributes) workflowTasks++;
    if (e.workflowExecutionSignaledEventAttributes) signals++;
  }
  const schedT = new Map(sched.map((s) => [s.id, s.t]));
  const dispatchMs: number[] = [];
  const activityMs: number[] = [];
  const byType: Record<string, number[]> = {};
  for (const c of completed) {
    const s = schedT.get(c.sched)!;
    const st = started.get(c.sched)!;
    dispatchMs.push(st - s);
    activityMs.push(c.t - st);
    (byType[typeOf.get(c.sched)!] ??= []).push(c.t - st);
  }
  const handoffMs: number[] = [];
  const compSorted = [...completed].sort((a, b) => a.t - b.t);
  const schedSorted = [...sched].sort((a, b) => a.t - b.t);
  for (let i = 1; i < schedSorted.length; i++) {
    const prevDone = compSorted[i - 1];
    if (prevDone && schedSorted[i].t >= prevDone.t) handoffMs.push(schedSorted[i].t - prevDone.t);
  }
  const first = tsMs(events[0]?.eventTime);
  const last = tsMs(events.at(-1)?.eventTime);
  return {
    dispatchMs,
    activityMs,
    handoffMs,
    byType,
    startupMs: (schedSorted[0]?.t ?? NaN) - first,
    finishMs: last - (compSorted.at(-1)?.t ?? NaN),
    events: events.length,
    localActivities,
    workflowTasks,
    signals,
  };
}

async function runPipeline(client: Client, w: Workers, shape: Shape, n: number, cache = false, local = false): Promise<{ wallMs: number; workflowId: string }> {
  const workflowId = unique(`bench-${shape}-${n}`);
  const t0 = performance.now();
  const result = (await client.workflow.execute('pipelineWorkflow', {
    taskQueue: w.controlQueue,
    workflowId,
    args: [pipelineInput(w, shape, n, cache, local)],
  })) as { state: string };
  const wallMs = performance.now() - t0;
  if (result.state !== 'succeeded') throw new Error(`${workflowId}: ${result.state}`);
  return { wallMs, workflowId };
}

function summarise(xs: number[]) {
  return { n: xs.length, mean: r1(mean(xs)), median: r1(median(xs)), p90: r1(pct(xs, 90)), min: r1(Math.min(...xs)), max: r1(Math.max(...xs)) };
}

interface CaseResult {
  case: string;
  shape: Shape;
  stages: number;
  /** The cross-run cache on (each stage a miss, looked up and recorded) or off (`--no-cache`). */
  cache: boolean;
  /** Every stage `local: true` (a local activity of the workflow) instead of an activity on the CPU queue. */
  local: boolean;
  cpuConcurrency: number;
  tanrenWallMs: number[];
  tanrenWallMedianMs: number;
  baselines: Record<string, { wallMs: number[]; medianMs: number; overheadPerStageMs: number; ratio: number }>;
  primaryBaseline: string;
  overheadPerStageMs: number;
  ratio: number;
  phases: {
    dispatchMs: ReturnType<typeof summarise>;
    activityMs: ReturnType<typeof summarise>;
    handoffMs?: ReturnType<typeof summarise>;
    byActivityType: Record<string, ReturnType<typeof summarise>>;
    startupMs: number;
    finishMs: number;
    historyEvents: number;
    localActivities: number;
    workflowTasks: number;
    signals: number;
  };
}

async function benchCase(
  client: Client,
  w: Workers,
  shape: Shape,
  n: number,
  reps: number,
  baselineFns: Record<string, () => Promise<unknown>>,
  cache = false,
  local = false,
): Promise<CaseResult> {
  const name = `${shape}-${n}${shape === 'fanout' ? `@c${w.concurrency}` : ''}${cache ? '+cache' : ''}${local ? '+local' : ''}`;
  process.stderr.write(`[overhead] ${name}: tanren ×${reps} …\n`);
  const runs: Array<{ wallMs: number; workflowId: string }> = [];
  for (let i = 0; i < reps; i++) runs.push(await runPipeline(client, w, shape, n, cache, local));
  const walls = runs.map((r) => r.wallMs);
  const tanren = median(walls);
  // Phases from the run closest to the median.
  const rep = runs.reduce((a, b) => (Math.abs(b.wallMs - tanren) < Math.abs(a.wallMs - tanren) ? b : a));
  const ph = await phasesOf(client, rep.workflowId);
  const baselines: CaseResult['baselines'] = {};
  for (const [bname, fn] of Object.entries(baselineFns)) {
    process.stderr.write(`[overhead] ${name}: baseline ${bname} ×${reps} …\n`);
    const bw = await repeat(reps, fn);
    const b = median(bw);
    baselines[bname] = { wallMs: bw.map(r1), medianMs: r1(b), overheadPerStageMs: r2((tanren - b) / n), ratio: r1(tanren / b) };
  }
  const primaryBaseline = Object.keys(baselineFns)[0];
  return {
    case: name,
    shape,
    stages: n,
    cache,
    local,
    cpuConcurrency: w.concurrency,
    tanrenWallMs: walls.map(r1),
    tanrenWallMedianMs: r1(tanren),
    baselines,
    primaryBaseline,
    overheadPerStageMs: baselines[primaryBaseline].overheadPerStageMs,
    ratio: baselines[primaryBaseline].ratio,
    phases: {
      dispatchMs: summarise(ph.dispatchMs),
      activityMs: summarise(ph.activityMs),
      ...(shape === 'chain' ? { handoffMs: summarise(ph.handoffMs) } : {}),
      byActivityType: Object.fromEntries(Object.entries(ph.byType).map(([k, v]) => [k, summarise(v)])),
      startupMs: r1(ph.startupMs),
      finishMs: r1(ph.finishMs),
      historyEvents: ph.events,
      localActivities: ph.localActivities,
      workflowTasks: ph.workflowTasks,
      signals: ph.signals,
    },
  };
}

// ---------- micro-benchmarks of the parts of a stage activity ----------

async function microBenchmarks(client: Client, w: Workers, workDir: string, reps: number) {
  const env = loadEnv({ ...process.env, TANREN_PROJECT_DIR: ROOT });
  const storage = createObjectStore(objectStoreConfig(env));
  const prefix = `bench/overhead/${unique('micro')}/`;
  const empty = path.join(workDir, 'empty.log');
  writeFileSync(empty, '');
  const manifest = JSON.stringify({ runId: 'x', stage: 'y', attempt: 1, createdAt: new Date().toISOString(), prefix, files: [], result: {} }, null, 2);
  const keysWritten: string[] = [];
  let k = 0;
  const out: Record<string, ReturnType<typeof summarise>> = {};
  const stat = async (name: string, fn: () => Promise<unknown>) => {
    await fn(); // warm-up
    out[name] = summarise(await repeat(reps, fn));
  };
  await stat('spawn: execFile(true)', () => execFileP('true'));
  await stat('spawn: execa(true) as runStage does', () => execaLoop(1));
  await stat('minio: putText manifest.json', async () => {
    const key = `${prefix}m${k++}.json`;
    keysWritten.push(key);
    await storage.putText(key, manifest);
  });
  await stat('minio: putFile empty stage log', async () => {
    const key = `${prefix}l${k++}.log`;
    keysWritten.push(key);
    await storage.putFile(key, empty);
  });
  await stat('minio: getText manifest.json', () => storage.getText(keysWritten[0]));
  // Signals: to a running pipeline, naming a stage it does not have (the handler ignores it).
  const wf = await client.workflow.start('pipelineWorkflow', {
    taskQueue: w.controlQueue,
    workflowId: unique('bench-signal'),
    args: [{ spec: { name: 'bench-signal', queues: { cpu: w.cpuQueue, gpu: w.gpuQueue }, stages: [{ id: 'wait', run: ['sleep', '30'] }] }, options: {} }],
  });
  await stat('temporal: progress signal (client round trip)', () =>
    wf.signal(stageProgressSignal, { stage: '__bench__', attempt: 1, at: new Date().toISOString(), kind: 'progress' }),
  );
  await wf.cancel();
  try {
    await wf.result();
  } catch {
    // cancelled, as intended
  }
  await storage.remove(keysWritten);
  return out;
}

// ---------- main ----------

function table(rows: string[][]): string {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  const line = (r: string[]) => `| ${r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(' | ')} |`;
  return [line(rows[0]), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.slice(1).map(line)].join('\n');
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  // Quiet the Temporal runtime (its INFO logs would also cost time per activity).
  Runtime.install({ logger: new DefaultLogger('WARN') });
  const trueBin = ['/usr/bin/true', '/bin/true'].find((p) => existsSync(p)) ?? '/bin/true';
  const workDir = mkdtempSync(path.join(os.tmpdir(), 'tanren-bench-overhead-'));
  const env = loadEnv({ ...process.env, TANREN_PROJECT_DIR: ROOT });
  const client = await connectClient(env);
  const started = new Date();
  const chainSizes = args.quick ? [20] : [20, 200];
  const fanN = args.quick ? 40 : 200;
  const reps = args.quick ? 1 : args.reps;
  const cases: CaseResult[] = [];
  const want = (name: string) => !args.cases || args.cases.includes(name);
  let micro: Awaited<ReturnType<typeof microBenchmarks>> | undefined;
  const baselinesFor = (n: number, concurrency?: number) => ({
    'execFile loop': () => execFileLoop(n),
    'shell loop': () => shellLoop(n, trueBin),
    'execa loop': () => execaLoop(n),
    ...(concurrency ? { [`execFile pool c=${concurrency}`]: () => execFilePool(n, concurrency) } : {}),
  });

  const defaultConc = loadEnv({ ...process.env, TANREN_PROJECT_DIR: ROOT }).TANREN_CPU_CONCURRENCY;
  let w = await startWorkers(path.join(workDir, 'w1'), defaultConc);
  try {
    process.stderr.write('[overhead] warm-up …\n');
    await runPipeline(client, w, 'chain', 5);
    for (const local of [false, true]) {
      for (const n of chainSizes) {
        for (const cache of [false, true]) {
          const name = `chain-${n}${cache ? '+cache' : ''}${local ? '+local' : ''}`;
          if (want(name)) cases.push(await benchCase(client, w, 'chain', n, n >= 200 ? 1 : reps, baselinesFor(n), cache, local));
        }
      }
      if (want(`fanout-${fanN}@c${defaultConc}${local ? '+local' : ''}`)) {
        cases.push(await benchCase(client, w, 'fanout', fanN, 1, baselinesFor(fanN, defaultConc), false, local));
      }
    }
    if (!args.cases) micro = await microBenchmarks(client, w, workDir, args.quick ? 10 : 30);
  } finally {
    await w.stop();
  }
  const highConc = [false, true].filter((local) => want(`fanout-${fanN}@c${args.fanoutConcurrency}${local ? '+local' : ''}`));
  if (args.fanoutConcurrency !== defaultConc && highConc.length) {
    w = await startWorkers(path.join(workDir, 'w2'), args.fanoutConcurrency);
    try {
      await runPipeline(client, w, 'chain', 3);
      for (const local of highConc) {
        cases.push(await benchCase(client, w, 'fanout', fanN, 1, baselinesFor(fanN, args.fanoutConcurrency), false, local));
      }
    } finally {
      await w.stop();
    }
  }
  await client.connection.close();

  const cpus = os.cpus();
  const result = {
    benchmark: 'overhead',
    date: started.toISOString(),
    machine: {
      nproc: cpus.length,
      cpuModel: cpus[0]?.model,
      memoryGiB: r1(os.totalmem() / 2 ** 30),
      os: `${os.type()} ${os.release()}`,
      node: process.version,
    },
    notes: [
      'Stage command: run: [true]. Each stage also creates its work directory, writes its log (if any) and its manifest to MinIO; chain stages download the previous manifest; +cache cases also look the stage up in the cache (a miss) and record it. Overhead therefore includes object storage.',
      'Workers, client and baselines run in one Node process on the same host as the Temporal dev server and MinIO.',
      'overheadPerStageMs = (tanren wall − baseline wall) / N against the primary baseline (execFile loop); ratio = tanren / baseline.',
      'phases come from the workflow history of the median run: dispatch = ActivityTaskScheduled→Started, activity = Started→Completed, handoff = Completed→next Scheduled; local activities (+local) leave only a core_local_activity marker each (counted, no phases: its two times come from different clocks).',
    ],
    cases,
    microBenchmarksMs: micro,
  };
  const outFile = args.out ?? path.join(ROOT, 'bench', 'results', `overhead-${started.toISOString().slice(0, 10)}${args.quick ? '-quick' : ''}.json`);
  mkdirSync(path.dirname(outFile), { recursive: true });
  writeFileSync(outFile, `${JSON.stringify(result, null, 2)}\n`);
  rmSync(workDir, { recursive: true, force: true });

  const rows = [
    [
      'case',
      'conc',
      'tanren ms',
      'execFile ms',
      'shell ms',
      'execa ms',
      'overhead ms/stage',
      'ratio',
      'activity ms (med)',
      'dispatch ms (med)',
      'handoff ms (med)',
      'activities / stage',
    ],
  ];
  for (const c of cases) {
    rows.push([
      c.case,
      String(c.cpuConcurrency),
      String(c.tanrenWallMedianMs),
      String(c.baselines['execFile loop'].medianMs),
      String(c.baselines['shell loop'].medianMs),
      String(c.baselines['execa loop'].medianMs),
      String(c.overheadPerStageMs),
      `${c.ratio}×`,
      c.phases.activityMs.n ? String(c.phases.activityMs.median) : '-',
      c.phases.dispatchMs.n ? String(c.phases.dispatchMs.median) : '-',
      c.phases.handoffMs?.n ? String(c.phases.handoffMs.median) : '-',
      String(r2((c.phases.dispatchMs.n + c.phases.localActivities) / c.stages)),
    ]);
  }
  console.log(table(rows));
  if (micro) {
    console.log('');
    console.log(table([['part of a stage activity', 'median ms', 'p90 ms'], ...Object.entries(micro).map(([k, v]) => [k, String(v.median), String(v.p90)])]));
  }
  console.log(`\nwritten ${path.relative(ROOT, outFile)}`);
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
