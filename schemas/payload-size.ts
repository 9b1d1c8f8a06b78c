/** Sizes of payloads as Temporal counts them (UTF-8 bytes of their JSON). Pure: the workflow uses it too. */

/** UTF-8 length of a string, counted without TextEncoder or Buffer (deterministic in the workflow sandbox). */
export function utf8Bytes(text: string): number {
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    // A surrogate pair is 4 bytes in UTF-8: 2 for each half.
    n += c < 0x80 ? 1 : c < 0x800 || (c >= 0xd800 && c < 0xe000) ? 2 : 3;
  }
  return n;
}

/** Size of `v` as the JSON payload it becomes. */
export function jsonBytes(v: unknown): number {
  return utf8Bytes(JSON.stringify(v) ?? '');
}

/**
 * {@link jsonBytes} of a plain JSON value (as YAML or JSON parsing makes them), without building its JSON: exact
 * up to `limit`, and past it some number over `limit`, found after reading little more than `limit` characters
 * (a spec of 30 one-million-character strings is refused at once, not after writing 180 MB of JSON).
 */
export function jsonBytesUpTo(v: unknown, limit: number): number {
  let total = 0;
  const over = () => total > limit;
  const walk = (x: unknown): void => {
    if (over()) return;
    if (typeof x === 'string') {
      // Every character takes at least one byte.
      total += x.length > limit ? limit + 1 : utf8Bytes(JSON.stringify(x));
    } else if (Array.isArray(x)) {
      total += 2 + Math.max(0, x.length - 1);
      for (const item of x) {
        // As JSON.stringify writes them: undefined and functions in arrays become null.
        if (item === undefined || typeof item === 'function') total += 4;
        else walk(item);
        if (over()) return;
      }
    } else if (x !== null && typeof x === 'object') {
      const entries = Object.entries(x).filter(([, val]) => val !== undefined && typeof val !== 'function');
      total += 2 + Math.max(0, entries.length - 1);
      for (const [k, val] of entries) {
        walk(k);
        total += 1;
        walk(val);
        if (over()) return;
      }
    } else {
      total += (JSON.stringify(x) ?? 'null').length;
    }
  };
  walk(v);
  return total;
}
