import type { Logger } from './logger.ts';

export interface Stoppable {
  name: string;
  stop(): Promise<void>;
}

/**
 * SIGTERM/SIGINT: stop components in the order given (listeners first, queues last),
 * then exit 0. If stopping takes longer than `timeoutMs` the process exits 1 so an
 * orchestrator never waits forever; work not finished by then is still safe because
 * every tier only hands a message over once the next hop holds it durably.
 */
export function handleShutdown(logger: Logger, components: Stoppable[], timeoutMs = 30_000): (signal: string) => Promise<void> {
  let stopping = false;
  const shutdown = async (signal: string): Promise<void> => {
    if (stopping) return;
    stopping = true;
    logger.info({ event: 'shutdown', signal, timeoutMs }, 'shutting down');
    const timer = setTimeout(() => {
      logger.error({ event: 'shutdown_timeout', timeoutMs }, 'graceful shutdown timed out');
      process.exit(1);
    }, timeoutMs);
    timer.unref();
    for (const component of components) {
      try {
        await component.stop();
        logger.info({ event: 'stopped', component: component.name });
      } catch (err) {
        logger.error({ event: 'stop_failed', component: component.name, err });
      }
    }
    clearTimeout(timer);
    logger.flush?.();
    process.exit(0);
  };
  process.once('SIGTERM', () => void shutdown('SIGTERM'));
  process.once('SIGINT', () => void shutdown('SIGINT'));
  return shutdown;
}

/** Entry-point wrapper: a start-up failure is logged as one line (no stack for config errors) and exits 2. */
export async function runMain(logger: Logger, main: () => Promise<void>): Promise<void> {
  try {
    await main();
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === 'CONFIG_INVALID' || code === 'STARTUP_FAILED') logger.fatal({ event: 'startup_failed', code }, (err as Error).message);
    else logger.fatal({ event: 'startup_failed', err }, 'start-up failed');
    process.exitCode = 2;
    setTimeout(() => process.exit(2), 100).unref();
  }
}
