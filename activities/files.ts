/**
 * Local files on their way to or from object storage: sha256 digests,
 * directory scans that never follow links, and the manifest entries of an
 * output directory.
 */
import { createHash } from 'node:crypto';
import { constants, createReadStream, type Dirent } from 'node:fs';
import { open, readdir } from 'node:fs/promises';
import path from 'node:path';
import { FailureTypes } from '../schemas/names.js';
import { stageFailure } from './errors.js';
import type { ManifestEntry } from './types.js';

/** sha256 of a file, hex. */
export async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** What is at a path that is not a regular file or a directory, for people: `a symbolic link`, `a FIFO`… */
function irregularKind(e: Dirent): string {
  if (e.isSymbolicLink()) return 'symbolic link';
  if (e.isFIFO()) return 'FIFO';
  if (e.isSocket()) return 'socket';
  if (e.isBlockDevice() || e.isCharacterDevice()) return 'device';
  return 'special file';
}

/** A directory's contents: regular files, and everything else that is neither one nor a directory. */
export interface DirectoryScan {
  /** Regular files, relative with `/` separators, sorted. */
  files: string[];
  /** Symbolic links (to files or directories, or dangling) and special files, sorted by path; never followed. */
  irregular: Array<{ path: string; kind: string }>;
}

/** Walks `dir` without following symbolic links; see {@link DirectoryScan}. */
export async function scanDirectory(dir: string): Promise<DirectoryScan> {
  const files: string[] = [];
  const irregular: DirectoryScan['irregular'] = [];
  const walk = async (rel: string) => {
    const entries = await readdir(path.join(dir, rel), { withFileTypes: true });
    for (const e of entries) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) await walk(r);
      else if (e.isFile()) files.push(r);
      else irregular.push({ path: r, kind: irregularKind(e) });
    }
  };
  await walk('');
  return { files: files.sort(), irregular: irregular.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0)) };
}

/** Every regular file under `dir`, as paths relative to it with `/` separators, sorted (symbolic links and special files are left out). */
export async function listFiles(dir: string): Promise<string[]> {
  return (await scanDirectory(dir)).files;
}

/** Options of {@link describeFiles}. */
export interface DescribeFilesOptions {
  /** The stage whose outputs these are, named in the error. */
  stage?: string;
}

/** Names at most a few paths: `"a", "b", "c" and 4 more`. */
function namePaths(paths: string[], most = 5): string {
  const shown = paths
    .slice(0, most)
    .map((p) => JSON.stringify(p))
    .join(', ');
  return paths.length > most ? `${shown} and ${paths.length - most} more` : shown;
}

/**
 * The `InvalidStageOutput` failure for symbolic links or special files in an
 * output directory: `stage "x" wrote a symbolic link "path" in its outputs; write the file itself`.
 */
export function irregularOutputFailure(irregular: DirectoryScan['irregular'], where: DescribeFilesOptions & { dir: string }) {
  const links = irregular.filter((i) => i.kind === 'symbolic link').map((i) => i.path);
  const special = irregular.filter((i) => i.kind !== 'symbolic link');
  const parts: string[] = [];
  if (links.length === 1) parts.push(`a symbolic link ${namePaths(links)}`);
  else if (links.length) parts.push(`symbolic links ${namePaths(links)}`);
  if (special.length === 1) parts.push(`a ${special[0].kind} ${namePaths([special[0].path])}`);
  else if (special.length) parts.push(`special files ${namePaths(special.map((s) => s.path))}`);
  const what = parts.join(' and ');
  const fix = irregular.length === 1 ? 'write the file itself' : 'write the files themselves';
  const message =
    where.stage !== undefined ? `stage "${where.stage}" wrote ${what} in its outputs; ${fix}` : `output directory ${where.dir} has ${what}; ${fix}`;
  return stageFailure(FailureTypes.InvalidStageOutput, message, { irregular: irregular.slice(0, 50) });
}

/**
 * Builds manifest entries (size and sha256) for every file under `dir`.
 *
 * Outputs must be regular files: a symbolic link (or a FIFO, socket or device)
 * anywhere under `dir` fails with a non-retryable `InvalidStageOutput`
 * ApplicationFailure naming it, rather than being left out of the manifest.
 * Each file is opened without following links and sized and hashed through
 * that one descriptor, so a file swapped for a link after the walk fails too.
 */
export async function describeFiles(dir: string, opts: DescribeFilesOptions = {}): Promise<ManifestEntry[]> {
  const { files, irregular } = await scanDirectory(dir);
  if (irregular.length) throw irregularOutputFailure(irregular, { ...opts, dir });
  const entries: ManifestEntry[] = [];
  for (const rel of files) {
    let fh;
    try {
      fh = await open(path.join(dir, rel), constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
    } catch (err) {
      if ((err as { code?: string }).code === 'ELOOP') throw irregularOutputFailure([{ path: rel, kind: 'symbolic link' }], { ...opts, dir });
      throw err;
    }
    try {
      const s = await fh.stat();
      if (!s.isFile()) throw irregularOutputFailure([{ path: rel, kind: 'special file' }], { ...opts, dir });
      const hash = createHash('sha256');
      let size = 0;
      for await (const chunk of fh.createReadStream({ autoClose: false, start: 0 })) {
        hash.update(chunk as Buffer);
        size += (chunk as Buffer).length;
      }
      entries.push({ path: rel, size, sha256: hash.digest('hex') });
    } finally {
      await fh.close();
    }
  }
  return entries;
}
