import { configFileFromArgs } from '../shared/config.ts';
import { handleShutdown, runMain } from '../shared/lifecycle.ts';
import { createLogger } from '../shared/logger.ts';
import { loadWorkerConfig } from './config.ts';
import { startWorker } from './server.ts';

const logger = createLogger('worker');

await runMain(logger, async () => {
  const config = loadWorkerConfig(configFileFromArgs(process.argv, 'WORKER'));
  const worker = await startWorker(config, { logger });
  // The lifecycle timeout must outlast the worker's own grace period plus its abort step.
  handleShutdown(logger, [{ name: 'worker', stop: () => worker.stop() }], config.shutdownGraceMs + 10_000);
});
