/**
 * Reusing a run id. A run's objects live under `runs/<run>/`, named by the
 * workflow id, so a second execution with the same id would find the first
 * one's manifests, checkpoints (and resume from them) and logs. `tanren
 * submit` therefore refuses an id that a closed run (or objects in the
 * bucket) still holds, and `--reuse` first removes what a new execution could
 * mistake for its own: every object under the prefix except stage outputs.
 * Outputs stay: each attempt wrote them under a prefix of its own that no new
 * execution writes to, and other runs' cache hits may point at them.
 */
import { ExitCodes } from './output.js';
import { CliError } from './common.js';
import type { CliStore } from './storage.js';

/** Refusal to start a run whose id an earlier, closed run holds. */
export class RunIdInUseError extends CliError {
  override name = 'RunIdInUseError';
  constructor(
    readonly run: string,
    /** Temporal's status of the earlier execution (`COMPLETED`, `FAILED`, …), or `unknown to Temporal`. */
    readonly state: string,
    detail: string,
  ) {
    super(
      `run "${run}" already exists (${state}${detail ? `, ${detail}` : ''}) and its objects are under runs/${run}/: ` +
        `choose another --run-name, continue it with \`tanren retry ${run}\`, ` +
        `or pass --reuse to start it again from a clean prefix (removes its manifests, checkpoints and logs; keeps outputs)`,
      ExitCodes.failed,
    );
  }
}

/** True for keys of stage outputs: `runs/<run>/<stage>/attempts/<id>/outputs/…` and the older `runs/<run>/<stage>/outputs/…`. */
export function isOutputKey(run: string, key: string): boolean {
  const rest = key.startsWith(`runs/${run}/`) ? key.slice(`runs/${run}/`.length).split('/') : [];
  return (rest.length >= 3 && rest[1] === 'outputs') || (rest.length >= 5 && rest[1] === 'attempts' && rest[3] === 'outputs');
}

/** Objects under `runs/<run>/` a new execution could mistake for its own (everything but outputs). */
export async function staleObjects(store: CliStore, run: string): Promise<string[]> {
  return (await store.list(`runs/${run}/`)).map((o) => o.key).filter((k) => !isOutputKey(run, k));
}

/** Removes {@link staleObjects}, a thousand at a time; returns how many. */
export async function clearRunPrefix(store: CliStore, run: string): Promise<number> {
  const stale = await staleObjects(store, run);
  for (let i = 0; i < stale.length; i += 1000) await store.remove(stale.slice(i, i + 1000));
  return stale.length;
}
