import { resolve } from 'node:path';
import { configFileFromArgs } from '../shared/config.ts';
import { handleShutdown, runMain } from '../shared/lifecycle.ts';
import { createLogger } from '../shared/logger.ts';
import { loadWorkerConfig, readConfiguredFiles } from './config.ts';
import { startWorker } from './server.ts';

const logger = createLogger('worker');

await runMain(logger, async () => {
  const file = configFileFromArgs(process.argv, 'WORKER');
  const config = loadWorkerConfig(file);
  const files = readConfiguredFiles(config, file ? resolve(file) : '(defaults)');
  const worker = await startWorker(config, { logger, files });
  // The lifecycle timeout must outlast the worker's own grace period plus its abort step.
  handleShutdown(logger, [{ name: 'worker', stop: () => worker.stop() }], config.shutdownGraceMs + 10_000);
});
