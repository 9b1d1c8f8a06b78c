/**
 * The ready-stage planner: given the stage graph and each stage's state, says
 * which stages may start now and which can never run. A pure function; the
 * workflow only drives it.
 */

/** Life cycle of a stage inside one run. */
export type StageState = 'pending' | 'running' | 'retrying' | 'succeeded' | 'cached' | 'failed' | 'skipped' | 'cancelled';

/** States after which a stage never changes again. */
export const TERMINAL_STATES: ReadonlySet<StageState> = new Set(['succeeded', 'cached', 'failed', 'skipped', 'cancelled']);

/** States whose outputs downstream stages may use. */
export const DONE_STATES: ReadonlySet<StageState> = new Set(['succeeded', 'cached']);

/** What the planner needs to know of a stage. */
export interface PlannerStage {
  readonly id: string;
  readonly needs: readonly string[];
}

/** Result of {@link planStages}. */
export interface Plan {
  /** Pending stages whose needs are all done, in spec order. */
  ready: string[];
  /** Pending stages that can never run, with the need that failed. */
  skip: Array<{ id: string; because: string }>;
  /** True when every stage is in a terminal state (after applying `skip`). */
  finished: boolean;
}

/** Plans the next step of a run. Unknown stage ids in `needs` count as never done. */
export function planStages(stages: readonly PlannerStage[], states: Readonly<Record<string, StageState>>): Plan {
  const current: Record<string, StageState> = { ...states };
  const skip: Plan['skip'] = [];
  // Skips propagate down the graph: iterate until nothing changes.
  for (let changed = true; changed;) {
    changed = false;
    for (const stage of stages) {
      if ((current[stage.id] ?? 'pending') !== 'pending') continue;
      const blocker = stage.needs.find((n) => {
        const s = current[n];
        return s === 'failed' || s === 'skipped' || s === 'cancelled';
      });
      if (blocker) {
        current[stage.id] = 'skipped';
        skip.push({ id: stage.id, because: blocker });
        changed = true;
      }
    }
  }
  const ready = stages
    .filter((s) => (current[s.id] ?? 'pending') === 'pending')
    .filter((s) => s.needs.every((n) => DONE_STATES.has(current[n] ?? 'pending')))
    .map((s) => s.id);
  const finished = stages.every((s) => TERMINAL_STATES.has(current[s.id] ?? 'pending'));
  return { ready, skip, finished };
}
