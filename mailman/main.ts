import { configFileFromArgs } from '../shared/config.ts';
import { handleShutdown, logConfigWarnings, runMain } from '../shared/lifecycle.ts';
import { createLogger } from '../shared/logger.ts';
import { loadMailmanConfig } from './config.ts';
import { startMailman } from './server.ts';

const logger = createLogger('mailman');

// Exit codes (shared/lifecycle.ts): 2 for a configuration error, 1 for a transient failure.
await runMain(logger, async () => {
  const warn = logConfigWarnings(logger);
  const config = loadMailmanConfig(configFileFromArgs(process.argv, 'mailman', process.env, warn), process.env, warn);
  const mailman = await startMailman(config, { logger });
  handleShutdown(logger, [{ name: 'mailman', stop: () => mailman.stop() }]);
  logger.info({ event: 'ready', port: mailman.port, opsPort: mailman.opsPort });
});
