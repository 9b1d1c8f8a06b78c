/**
 * pino logging for workers and the CLI, and the bridge that sends Temporal's
 * runtime and SDK logs to the same logger.
 */
import { DefaultLogger, Runtime, type LogLevel } from '@temporalio/worker';
import { pino, type Logger } from 'pino';

/** Creates the process logger: JSON lines, level from TANREN_LOG_LEVEL. */
export function createLogger(level: string, bindings: Record<string, unknown> = {}): Logger {
  return pino({ level, base: { pid: process.pid, ...bindings } });
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
