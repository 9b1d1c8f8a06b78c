/**
 * Who a process is, beyond its pid: pids are reused, so a record of a running
 * stage (or of the worker that owns it) also keeps the process's start time
 * and the boot it belongs to. Linux /proc; elsewhere only the pid is known.
 */
import { readFileSync } from 'node:fs';

/** A process as recorded: pid, start time in clock ticks since boot, and the boot id. */
export interface ProcessIdentity {
  pid: number;
  startTicks?: number;
  bootId?: string;
}

function bootId(): string | undefined {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return undefined;
  }
}

function startTicks(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name may hold spaces and parentheses: fields are counted after its closing one.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const ticks = Number(fields[19]);
    return Number.isFinite(ticks) ? ticks : undefined;
  } catch {
    return undefined;
  }
}

/** The identity of a running process. */
export function identify(pid: number): ProcessIdentity {
  return { pid, startTicks: startTicks(pid), bootId: bootId() };
}

/** True when the very process of `id` is still running (not a later one that got its pid). */
export function stillRunning(id: ProcessIdentity): boolean {
  if (id.bootId && id.bootId !== bootId()) return false;
  const now = startTicks(id.pid);
  if (id.startTicks !== undefined) return now === id.startTicks;
  return pidInUse(id.pid);
}

/** True when some process has `pid` (ours to signal or not). */
export function pidInUse(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as { code?: string }).code === 'EPERM';
  }
}
