import { configFileFromArgs } from '../shared/config.ts';
import { handleShutdown, runMain } from '../shared/lifecycle.ts';
import { createLogger } from '../shared/logger.ts';
import { loadPostofficeConfig } from './config.ts';
import { startPostoffice } from './server.ts';

const logger = createLogger('postoffice');

await runMain(logger, async () => {
  const config = loadPostofficeConfig(configFileFromArgs(process.argv, 'POSTOFFICE'));
  const postoffice = await startPostoffice(config, { logger });
  handleShutdown(logger, [{ name: 'postoffice', stop: () => postoffice.stop() }]);
});
