/**
 * The cross-run cache of stage outputs. A stage's cache key is the sha256 of
 * its kind or command, its resolved params, its program version and the
 * digests of its inputs' manifests. A hit is used only when every object of
 * the cached manifest still exists with its size and its sha256 (streamed
 * from the store); otherwise the stage runs and the status says why.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import type { StageSpec } from '../schemas/pipeline.js';
import { STAGE_KINDS, isStageKind } from '../schemas/stage-kinds.js';
import { sha256File } from './files.js';
import { cacheKeys, manifestFiles } from './storage/keys.js';
import { isNotFound } from './storage/errors.js';
import { sha256Object, type ObjectStore } from './storage/store.js';
import { settledWithin } from './time-limit.js';
import type { OutputManifest, StageInputRef } from './types.js';

/** What a cache key is made of; kept next to the entry so a miss can say what changed. */
export interface CacheKeyParts {
  kind: string;
  params: Record<string, unknown>;
  program: string;
  inputs: Record<string, string>;
}

/** A stored cache entry. */
export interface CacheEntry {
  key: string;
  parts: CacheKeyParts;
  manifestKey: string;
  /**
   * The manifest itself, with each object's exact key: a hit uses these objects even after the
   * producing run's `manifest.json` was replaced (a reset, `tanren submit --reuse`). Absent in older entries,
   * whose hits read `manifestKey`.
   */
  manifest?: OutputManifest;
  runId: string;
  stage: string;
  createdAt: string;
}

/** Answer of a cache look-up. */
export type CacheLookup =
  | { hit: true; key: string; manifestKey: string; fromRun: string; result: Record<string, unknown>; reason: string }
  | { hit: false; key: string; reason: string };

/**
 * What {@link lookupCache} finds: the key's parts (a miss records its outputs under them without computing
 * them again), and for a hit the verified manifest (never sent to the workflow: it can be large).
 */
export type CacheLookupWithManifest =
  | {
      hit: false;
      key: string;
      parts: CacheKeyParts;
      inputManifests: OutputManifest[];
      /**
       * Why it missed, compared with the stage's latest entry: read after the miss is known, so that it
       * overlaps the stage's run instead of delaying its start. Never rejects.
       */
      reason: Promise<string>;
    }
  | (Extract<CacheLookup, { hit: true }> & { parts: CacheKeyParts; manifest: OutputManifest & { cachedFrom?: string } });

function canonical(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(canonical);
  if (v && typeof v === 'object') {
    return Object.fromEntries(
      Object.keys(v)
        .sort()
        .map((k) => [k, canonical((v as Record<string, unknown>)[k])]),
    );
  }
  return v;
}

/** sha256 of a value's canonical JSON (sorted keys). */
export function digestJson(v: unknown): string {
  return createHash('sha256')
    .update(JSON.stringify(canonical(v)))
    .digest('hex');
}

/** Cache records this process is writing, by cache key: a look-up of the same key waits for its record. */
const recordsInFlight = new Map<string, Promise<void>>();

/** Program files hashed by this process, by path: reused while the file's size, times and inode stay the same. */
const programDigests = new Map<string, { stamp: string; sha256: string }>();

/**
 * sha256 of a program file, hashed again only when the file changed (by its
 * size, mtime, ctime and inode): every stage's cache key needs the stage
 * programs' digest, and `uv.lock` and the sources rarely change between stages.
 */
async function programFileDigest(p: string): Promise<string> {
  const st = await stat(p);
  const stamp = `${st.size}:${st.mtimeMs}:${st.ctimeMs}:${st.ino}`;
  const known = programDigests.get(p);
  if (known?.stamp === stamp) return known.sha256;
  const sha256 = await sha256File(p);
  programDigests.set(p, { stamp, sha256 });
  return sha256;
}

/** Files of a directory tree, relative and sorted, without Python's byte-code caches. */
async function treeFiles(dir: string, rel = ''): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(path.join(dir, rel), { withFileTypes: true })) {
    if (e.name === '__pycache__' || e.name.endsWith('.pyc')) continue;
    const p = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...(await treeFiles(dir, p)));
    else if (e.isFile()) out.push(p);
  }
  return out.sort();
}

/**
 * Digest of the stage programs: the stages package's lockfile and project
 * file, and every file of the package (its subpackages and data files such as
 * the judge prompts included).
 */
async function stagesProgramDigest(projectDir: string): Promise<string> {
  const hash = createHash('sha256');
  const dir = path.join(projectDir, 'stages');
  for (const f of ['pyproject.toml', 'uv.lock']) {
    const p = path.join(dir, f);
    if (existsSync(p)) hash.update(`${f}:${await programFileDigest(p)}\n`);
  }
  const pkg = path.join(dir, 'tanren_stages');
  if (existsSync(pkg)) {
    for (const f of await treeFiles(pkg)) hash.update(`${f}:${await programFileDigest(path.join(pkg, f))}\n`);
  }
  return hash.digest('hex');
}

/** Relative module specifiers of compiled JavaScript: static `from '…'`, bare `import '…'` and `import('…')`. */
const RELATIVE_IMPORT = /(?:\bfrom\s*|\bimport\s*\(?\s*)['"](\.{1,2}\/[^'"]+)['"]/g;

/**
 * Digest of a Node program: its entry file and every file it imports by a
 * relative path, transitively (a change to a module the entry imports is a
 * change of the program; packages under node_modules are pinned by the lockfile).
 */
export async function nodeProgramDigest(entry: string): Promise<string> {
  const seen = new Set<string>();
  const queue = [path.resolve(entry)];
  while (queue.length) {
    const file = queue.pop()!;
    if (seen.has(file) || !existsSync(file)) continue;
    seen.add(file);
    for (const m of (await readFile(file, 'utf8')).matchAll(RELATIVE_IMPORT)) queue.push(path.resolve(path.dirname(file), m[1]));
  }
  const root = path.dirname(path.resolve(entry));
  const hash = createHash('sha256');
  for (const f of [...seen].sort()) hash.update(`${path.relative(root, f)}:${await programFileDigest(f)}\n`);
  return hash.digest('hex');
}

/**
 * Version of the program a stage runs: for built-in kinds the stage programs'
 * digest (Node kinds: the compiled entry and the modules it imports); for `run:` stages the
 * argv, the declared `version`, and the digest of every argument that names a
 * file in the project (so editing a script is a change).
 */
export async function programVersion(stage: StageSpec, projectDir: string, distDir: string): Promise<string> {
  if (stage.uses && isStageKind(stage.uses)) {
    const info = STAGE_KINDS[stage.uses];
    if (info.runtime === 'node') return `node:${await nodeProgramDigest(path.join(distDir, info.module))}`;
    return `python:${await stagesProgramDigest(projectDir)}`;
  }
  const files: Record<string, string> = {};
  const root = path.resolve(projectDir);
  for (const arg of stage.run ?? []) {
    const p = path.resolve(root, arg);
    if (!arg.startsWith('-') && p.startsWith(root + path.sep) && existsSync(p)) {
      try {
        files[arg] = await programFileDigest(p);
      } catch {
        // a directory: argv alone identifies it
      }
    }
  }
  return `run:${digestJson({ argv: stage.run, version: stage.version ?? null, files })}`;
}

/** Describes what differs between two sets of key parts, for people: `params changed: lr, warmup`. */
export function explainChange(before: CacheKeyParts, now: CacheKeyParts): string {
  const reasons: string[] = [];
  if (before.kind !== now.kind) reasons.push(`kind changed: ${before.kind} → ${now.kind}`);
  const keys = new Set([...Object.keys(before.params), ...Object.keys(now.params)]);
  const changed = [...keys].filter((k) => digestJson(before.params[k] ?? null) !== digestJson(now.params[k] ?? null)).sort();
  if (changed.length) reasons.push(`params changed: ${changed.join(', ')}`);
  if (before.program !== now.program) reasons.push('program changed');
  const inputs = new Set([...Object.keys(before.inputs), ...Object.keys(now.inputs)]);
  const changedInputs = [...inputs].filter((k) => before.inputs[k] !== now.inputs[k]).sort();
  if (changedInputs.length) reasons.push(`inputs changed: ${changedInputs.join(', ')}`);
  return reasons.join('; ') || 'no earlier entry with this key';
}

/** Computes a stage's cache key from its spec and its inputs' manifests. */
export async function computeCacheKey(
  storage: ObjectStore,
  stage: StageSpec,
  inputs: readonly StageInputRef[],
  dirs: { projectDir: string; distDir: string },
): Promise<{ key: string; parts: CacheKeyParts; inputManifests: OutputManifest[] }> {
  const inputDigests: Record<string, string> = {};
  // One round trip of latency for all inputs; the digests keep the inputs' order.
  const manifests = await Promise.all(inputs.map(async (input) => input.manifest ?? (JSON.parse(await storage.getText(input.manifestKey)) as OutputManifest)));
  inputs.forEach((input, i) => {
    inputDigests[input.stage] = digestJson(manifests[i].files.map((f) => [f.path, f.size, f.sha256]));
  });
  const parts: CacheKeyParts = {
    kind: stage.uses ?? 'run',
    params: stage.with ?? {},
    program: await programVersion(stage, dirs.projectDir, dirs.distDir),
    inputs: inputDigests,
  };
  return { key: digestJson(parts), parts, inputManifests: manifests };
}

/** One GET; undefined when there is no such object. */
async function readJson<T>(storage: ObjectStore, key: string): Promise<T | undefined> {
  try {
    return JSON.parse(await storage.getText(key)) as T;
  } catch (err) {
    if (isNotFound(err)) return undefined;
    throw err;
  }
}

/** How many cached objects are hashed at once: hides the store's latency for many small files. */
const VERIFY_CONCURRENCY = 4;

/**
 * Checks that every object of a manifest is in the store with its size and
 * sha256; returns why not (the first problem in manifest order), or undefined.
 * Sizes are checked for all objects first (cheap), then digests are streamed
 * from the store, a few at a time; nothing is held in memory whole.
 */
export async function verifyManifestObjects(storage: ObjectStore, manifest: OutputManifest): Promise<string | undefined> {
  let files;
  try {
    files = manifestFiles(manifest);
  } catch (err) {
    return (err as Error).message;
  }
  for (const f of files) {
    const key = f.key;
    const found = await storage.stat(key);
    if (!found) return `object missing: ${key}`;
    if (found.size !== f.size) return `object ${key} has ${found.size} bytes, manifest says ${f.size}`;
  }
  const problems = new Array<string | undefined>(files.length);
  let next = 0;
  let failed = false;
  const worker = async () => {
    while (!failed && next < files.length) {
      const i = next++;
      const f = files[i];
      const key = f.key;
      const digest = await sha256Object(storage, key);
      if (digest === undefined) problems[i] = `object missing: ${key}`;
      else if (digest !== f.sha256) problems[i] = `digest mismatch: ${key} has sha256 ${digest}, manifest says ${f.sha256}`;
      if (problems[i]) failed = true;
    }
  };
  await Promise.all(Array.from({ length: Math.min(VERIFY_CONCURRENCY, files.length) }, worker));
  return problems.find((p) => p !== undefined);
}

/**
 * Looks a stage up in the cache and verifies that a hit's objects all still
 * exist with their sizes and sha256 digests; a hit that fails the check is a
 * miss whose reason says what was wrong (`cache hit rejected: digest mismatch: …`).
 */
export async function lookupCache(
  storage: ObjectStore,
  pipeline: string,
  stage: StageSpec,
  inputs: readonly StageInputRef[],
  dirs: { projectDir: string; distDir: string },
): Promise<CacheLookupWithManifest> {
  const { key, parts, inputManifests } = await computeCacheKey(storage, stage, inputs, dirs);
  // A record this worker is still writing (records are written behind the stage's result) is awaited first.
  await recordsInFlight.get(key);
  // A stat first: most look-ups are misses, and a missing object's stat costs half the CPU of a GET's error
  // (no error body to parse); a hit's extra round trip is small beside verifying each of its objects.
  const entryKey = cacheKeys.entry(key);
  const entry = (await storage.stat(entryKey)) ? await readJson<CacheEntry>(storage, entryKey) : undefined;
  if (!entry) {
    // The stage's latest entry is read only now, one request at a time: on two cores a second request alongside
    // delayed the entry's answer by 1.5 ms, and the stage can start before the reason is known.
    const reason = readJson<CacheEntry>(storage, cacheKeys.lastOfStage(pipeline, stage.id)).then(
      (last) => (last ? `cache miss: ${explainChange(last.parts, parts)}` : 'cache miss: no earlier run of this stage'),
      (err: unknown) => `cache miss (the stage's latest entry could not be read: ${String((err as Error)?.message ?? err).slice(0, 200)})`,
    );
    return { hit: false, key, parts, inputManifests, reason };
  }
  const manifest = entry.manifest ?? (await readJson<OutputManifest>(storage, entry.manifestKey));
  if (!manifest) return { hit: false, key, parts, inputManifests, reason: Promise.resolve(`cache hit rejected: manifest missing (${entry.manifestKey})`) };
  const problem = await verifyManifestObjects(storage, manifest);
  if (problem) return { hit: false, key, parts, inputManifests, reason: Promise.resolve(`cache hit rejected: ${problem}`) };
  return {
    hit: true,
    key,
    parts,
    manifestKey: entry.manifestKey,
    fromRun: entry.runId,
    result: manifest.result,
    manifest,
    reason: `cache hit: outputs of run ${entry.runId}`,
  };
}

/** Records a finished stage's outputs under its key (and as the stage's latest entry). */
export async function recordCache(storage: ObjectStore, pipeline: string, entry: CacheEntry): Promise<void> {
  const text = JSON.stringify(entry, null, 2);
  // Independent objects: written together, one round trip of latency instead of two.
  await Promise.all([storage.putText(cacheKeys.entry(entry.key), text), storage.putText(cacheKeys.lastOfStage(pipeline, entry.stage), text)]);
}

/**
 * Starts {@link recordCache} without waiting for it: a stage's result need not wait for its cache record (a
 * record that is late or lost costs a later run a hit, never a wrong result). A look-up of the same key in this
 * process waits for it, and {@link flushCacheRecords} waits for all (the worker calls it when it stops).
 * `onError` hears a failed write.
 */
export function recordCacheBehind(storage: ObjectStore, pipeline: string, entry: CacheEntry, onError: (err: unknown) => void): void {
  const writing = recordCache(storage, pipeline, entry)
    .catch(onError)
    .finally(() => {
      if (recordsInFlight.get(entry.key) === writing) recordsInFlight.delete(entry.key);
    });
  recordsInFlight.set(entry.key, writing);
}

/**
 * Waits for every cache record this process is still writing, at most `timeoutMs` (a store that hangs must not
 * hold up a worker's shutdown); returns how many were still pending when it gave up (0: all done).
 */
export async function flushCacheRecords(timeoutMs = 30_000): Promise<number> {
  // Again until none is left: a stage that finishes meanwhile starts another.
  const drain = async () => {
    while (recordsInFlight.size) await Promise.all([...recordsInFlight.values()]);
  };
  return (await settledWithin(drain(), timeoutMs)) ? 0 : recordsInFlight.size;
}
