/** Temporary file trees for tests that need a project-shaped directory (no services). */
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** Writes `text` to `rel` under `root`, creating its folders. */
export function writeUnder(root: string, rel: string, text: string): void {
  mkdirSync(path.dirname(path.join(root, rel)), { recursive: true });
  writeFileSync(path.join(root, rel), text);
}

/** A new temporary directory (named after `prefix`) holding `files`, by relative path; returns its path. */
export function tempTree(prefix: string, files: Record<string, string>): string {
  const root = mkdtempSync(path.join(os.tmpdir(), `${prefix}-`));
  for (const [rel, text] of Object.entries(files)) writeUnder(root, rel, text);
  return root;
}
