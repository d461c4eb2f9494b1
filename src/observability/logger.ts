import pino, { type Logger } from 'pino';

export type { Logger };

/**
 * The process logger: JSON lines on stdout (what Kubernetes collects), level from
 * MIDDLEBOX_LOG_LEVEL. Each decision gets a cheap child() with its decision id.
 */
export function createLogger(opts: { level?: string; name?: string; destination?: string } = {}): Logger {
  const level = opts.level ?? process.env.MIDDLEBOX_LOG_LEVEL ?? 'info';
  const options = { name: opts.name ?? 'middlebox', level, base: { pid: process.pid } };
  if (opts.destination) return pino(options, pino.destination({ dest: opts.destination, sync: false }));
  // Written as they come: nothing is left to flush at exit, where a stdout that is gone (EPIPE)
  // made the exit's synchronous flush retry the write for ever (SIGTERM never ended the process).
  return pino(options, pino.destination({ dest: 1, sync: true }));
}

/** A logger that drops everything: for unit tests and offline commands. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
