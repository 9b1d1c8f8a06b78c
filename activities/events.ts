/**
 * Reads the JSON-lines events a stage appends to its events file
 * (docs/stage-protocol.md) while it runs.
 */
import { open } from 'node:fs/promises';

/** An event of the stage protocol. */
export type StageEvent =
  | { event: 'progress'; step: number; total?: number; message?: string }
  | { event: 'metric'; values: Record<string, number>; step?: number }
  | { event: 'checkpoint'; path: string; step?: number }
  | { event: 'artifact'; path: string; description?: string }
  | { event: 'result'; values: Record<string, unknown> }
  | { event: 'error'; type: string; message: string };

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
        try {
          const parsed = JSON.parse(line) as { event?: unknown };
          if (parsed && typeof parsed === 'object' && typeof parsed.event === 'string') events.push(parsed as StageEvent);
          else this.onBadLine(line, 'no "event" field');
        } catch {
          this.onBadLine(line, 'not JSON');
        }
      }
      return events;
    } finally {
      await handle.close();
    }
  }
}
