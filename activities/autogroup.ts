/**
 * The nice of a process's scheduler autogroup (Linux with autogroups). With autogroups on, the kernel shares the
 * CPU between sessions before it shares it between the processes of one, so plain nice only ranks a session's own
 * processes; a process that starts a session of its own (a stage, the checkpoint upload process) has its weight
 * set here. Raising an autogroup's nice needs no privilege.
 */
import { writeFileSync } from 'node:fs';

/**
 * Sets the autogroup nice of `pid` (default this process) to `nice`; false where the host has no autogroups or
 * the process is gone (plain nice, inherited, is then all there is).
 */
export function setAutogroupNice(nice: number, pid: number | 'self' = 'self'): boolean {
  if (process.platform !== 'linux') return false;
  try {
    writeFileSync(`/proc/${pid}/autogroup`, String(nice));
    return true;
  } catch {
    return false;
  }
}
