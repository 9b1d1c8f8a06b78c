/**
 * pino logging for workers and the CLI, and the bridge that sends Temporal's
 * runtime and SDK logs to the same logger.
 */
import { DefaultLogger, Runtime, type LogLevel } from '@temporalio/worker';
import { pino, type Logger } from 'pino';

const LEVEL_NAMES: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO ', 40: 'WARN ', 50: 'ERROR', 60: 'FATAL' };

/** Formats one pino JSON line for a person: `12:03:04.123 INFO  message key=value …`. */
export function prettyLine(line: string): string {
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line;
  }
  const { time, level, msg, pid: _pid, hostname: _host, ...rest } = o;
  const when = typeof time === 'number' ? new Date(time).toISOString().slice(11, 23) : '';
  const fields = Object.entries(rest)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
    .join(' ');
  return `${when} ${LEVEL_NAMES[Number(level)] ?? level} ${typeof msg === 'string' ? msg : msg === undefined ? '' : JSON.stringify(msg)}${fields ? `  ${fields}` : ''}`;
}

/** A destination that writes pino's JSON lines as {@link prettyLine}s. */
function prettyDestination(out: NodeJS.WriteStream): { write(chunk: string): void } {
  return {
    write(chunk: string) {
      for (const line of chunk.split('\n')) if (line) out.write(`${prettyLine(line)}\n`);
    },
  };
}

/**
 * Creates the process logger, level from TANREN_LOG_LEVEL: JSON lines by
 * default (for log collectors), readable lines on a terminal.
 * `TANREN_LOG_FORMAT=json|pretty` overrides the choice.
 */
export function createLogger(level: string, bindings: Record<string, unknown> = {}): Logger {
  const format = process.env.TANREN_LOG_FORMAT ?? (process.stdout.isTTY ? 'pretty' : 'json');
  const options = { level, base: { pid: process.pid, ...bindings } };
  return format === 'pretty' ? pino(options, prettyDestination(process.stdout)) : pino(options);
}

const TO_PINO: Record<LogLevel, 'trace' | 'debug' | 'info' | 'warn' | 'error'> = {
  TRACE: 'trace',
  DEBUG: 'debug',
  INFO: 'info',
  WARN: 'warn',
  ERROR: 'error',
};

/** Installs the Temporal runtime once, with its logger writing to `logger`. */
export function installRuntimeLogger(logger: Logger): void {
  const level = (logger.level.toUpperCase() === 'FATAL' ? 'ERROR' : logger.level.toUpperCase()) as LogLevel;
  Runtime.install({
    logger: new DefaultLogger(level, (entry) => {
      // pino takes (meta, message); Temporal gives (message, meta).
      logger[TO_PINO[entry.level]]({ ...(entry.meta ?? {}) }, entry.message);
    }),
  });
}
