import { pino, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

/**
 * One JSON line per event on stdout. Secrets are redacted by path as a second line of
 * defence: code must not log keys or message bodies in the first place.
 */
export function createLogger(tier: string, level: LevelWithSilent = 'info'): Logger {
  return pino({
    level: process.env.LOG_LEVEL ?? level,
    base: { tier, pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    redact: {
      paths: ['key', '*.key', 'config.*.key', 'headers["x-hedwig-signature"]', 'req.headers["x-hedwig-signature"]', 'data', '*.data'],
      censor: '[redacted]',
    },
  });
}
