/** Runs a program through the stage launcher or zygote to its end, for the tests of both. */
import { readFileSync } from 'node:fs';
import type { launch, LaunchedExit } from '../../activities/stage-runner/launcher-client.js';

/** What one launched program did. */
export interface Ran {
  pid?: number;
  identity?: { startTicks?: number };
  error?: string;
  lines: string[];
  exit: LaunchedExit;
}

/** Runs one program to its end through `start`, collecting what the listener heard. */
export async function ran(start: (l: Parameters<typeof launch>[1]) => ReturnType<typeof launch>, whileRunning?: (pid: number) => void): Promise<Ran> {
  const lines: string[] = [];
  let exit!: LaunchedExit;
  let ended!: () => void;
  let seen = 0;
  const done = new Promise<void>((r) => (ended = r));
  const s = await start({
    line: (stream, line) => lines.push(`${stream}: ${line}`),
    exit: (e) => {
      exit = e;
      if (++seen === 2) ended();
    },
    closed: () => {
      if (++seen === 2) ended();
    },
  });
  if (s.pid && whileRunning) whileRunning(s.pid);
  await done;
  return { ...s, lines, exit };
}

/** The command line of a process's parent. */
export const parentCommand = (pid: number) => {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  return readFileSync(`/proc/${ppid}/cmdline`, 'utf8').split('\0').join(' ');
};
