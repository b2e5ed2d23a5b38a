import { ConfigError, type ConfigWarning } from './config.ts';
import { errorCode, errorMessage, HedwigError, type ErrorCode } from './errors.ts';
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

/**
 * Exit codes a supervisor can act on (README "Exit codes"): systemd's
 * `RestartPreventExitStatus=2` and Docker's restart policy rely on them.
 */
export const EXIT_OK = 0;
/** Transient: a port taken (EADDRINUSE), not allowed yet (EACCES), an address or a dependency not up yet, a crash. Retry. */
export const EXIT_TRANSIENT = 1;
/** The configuration is wrong: retrying with the same configuration would fail the same way. Never retried. */
export const EXIT_CONFIG = 2;

/** Error codes that mean "the configuration is wrong"; every other start-up failure is transient. */
const CONFIGURATION_CODES: ReadonlySet<string> = new Set<ErrorCode>(['CONFIG_INVALID']);

export function startupExitCode(err: unknown): typeof EXIT_TRANSIENT | typeof EXIT_CONFIG {
  const code = errorCode(err);
  return code !== undefined && CONFIGURATION_CODES.has(code) ? EXIT_CONFIG : EXIT_TRANSIENT;
}

/** What start-up has started so far: on a failure, runMain stops it again, newest first. */
export class Started {
  readonly #components: Stoppable[] = [];
  add<T extends { stop(): Promise<void> }>(name: string, component: T): T {
    this.#components.push({ name, stop: () => component.stop() });
    return component;
  }
  async stopAll(logger: Logger): Promise<void> {
    for (const component of this.#components.splice(0).reverse()) {
      try {
        await component.stop();
        logger.info({ event: 'stopped', component: component.name });
      } catch (err) {
        logger.error({ event: 'stop_failed', component: component.name, err });
      }
    }
  }
}

/**
 * Entry-point wrapper. A start-up failure stops whatever `main` had registered in `started`
 * (local mode's beanstalkd, a tier already listening), is logged as one line (no stack for
 * errors we raised ourselves) and exits 2 for a configuration error, 1 for anything else.
 */
export async function runMain(logger: Logger, main: (started: Started) => Promise<void>): Promise<void> {
  const started = new Started();
  try {
    await main(started);
  } catch (err) {
    const exitCode = startupExitCode(err);
    const code = errorCode(err);
    if (err instanceof ConfigError) logger.fatal({ event: 'startup_failed', code, exitCode, errors: err.issues }, err.message);
    else if (err instanceof HedwigError) logger.fatal({ event: 'startup_failed', code, exitCode, cause: errorCode((err as { cause?: unknown }).cause) }, err.message);
    else logger.fatal({ event: 'startup_failed', code, exitCode, err }, `start-up failed: ${errorMessage(err)}`);
    await started.stopAll(logger);
    logger.flush?.();
    process.exitCode = exitCode;
    setTimeout(() => process.exit(exitCode), 100).unref();
  }
}

/** Config warnings (a deprecated variable, one for no known tier) as log lines. */
export function logConfigWarnings(logger: Logger): (warning: ConfigWarning) => void {
  return ({ event, variable, replacement, message }) => logger.warn({ event, variable, replacement }, message);
}
