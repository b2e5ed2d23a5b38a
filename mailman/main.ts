import { configFileFromArgs } from '../shared/config.ts';
import { handleShutdown, runMain } from '../shared/lifecycle.ts';
import { createLogger } from '../shared/logger.ts';
import { loadMailmanConfig } from './config.ts';
import { startMailman } from './server.ts';

const logger = createLogger('mailman');

await runMain(logger, async () => {
  const config = loadMailmanConfig(configFileFromArgs(process.argv, 'MAILMAN'));
  const mailman = await startMailman(config, { logger });
  handleShutdown(logger, [{ name: 'mailman', stop: () => mailman.stop() }]);
  logger.info({ event: 'ready', port: mailman.port, opsPort: mailman.opsPort });
});
