/**
 * Reads the JSON-lines events a stage appends to its events file
 * (docs/stage-protocol.md) while it runs, each line validated against
 * schemas/stage-events.ts.
 */
import { open } from 'node:fs/promises';
import { checkEventLine, type StageEvent } from '../schemas/stage-events.js';

export type { StageEvent } from '../schemas/stage-events.js';

/** Incremental reader of an append-only JSON-lines file. */
export class EventFileReader {
  private offset = 0;
  private partial = '';

  constructor(
    private readonly file: string,
    private readonly onBadLine: (line: string, reason: string) => void = () => {},
  ) {}

  /** Returns the complete events appended since the last call. */
  async poll(): Promise<StageEvent[]> {
    let handle;
    try {
      handle = await open(this.file, 'r');
    } catch {
      return [];
    }
    try {
      const { size } = await handle.stat();
      if (size <= this.offset) return [];
      const buf = Buffer.alloc(size - this.offset);
      await handle.read(buf, 0, buf.length, this.offset);
      this.offset = size;
      const text = this.partial + buf.toString('utf8');
      const lines = text.split('\n');
      this.partial = lines.pop() ?? '';
      const events: StageEvent[] = [];
      for (const line of lines) {
        if (!line.trim()) continue;
        const checked = checkEventLine(line);
        if (checked.ok) events.push(checked.event);
        else this.onBadLine(line, checked.reason);
      }
      return events;
    } finally {
      await handle.close();
    }
  }
}
