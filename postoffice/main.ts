import { configFileFromArgs } from '../shared/config.ts';
import { handleShutdown, logConfigWarnings, runMain } from '../shared/lifecycle.ts';
import { createLogger } from '../shared/logger.ts';
import { loadPostofficeConfig } from './config.ts';
import { startPostoffice } from './server.ts';

const logger = createLogger('postoffice');

// Exit codes (shared/lifecycle.ts): 2 for a configuration error, 1 for a transient failure.
await runMain(logger, async () => {
  const warn = logConfigWarnings(logger);
  const config = loadPostofficeConfig(configFileFromArgs(process.argv, 'postoffice', process.env, warn), process.env, warn);
  const postoffice = await startPostoffice(config, { logger });
  handleShutdown(logger, [{ name: 'postoffice', stop: () => postoffice.stop() }]);
});
