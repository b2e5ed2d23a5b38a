import { resolve } from 'node:path';
import { configFileFromArgs } from '../shared/config.ts';
import { handleShutdown, logConfigWarnings, runMain } from '../shared/lifecycle.ts';
import { createLogger } from '../shared/logger.ts';
import { loadWorkerConfig, readConfiguredFiles } from './config.ts';
import { startWorker } from './server.ts';

const logger = createLogger('worker');

// Exit codes (shared/lifecycle.ts): 2 for a configuration error, 1 for a transient failure.
await runMain(logger, async () => {
  const warn = logConfigWarnings(logger);
  const file = configFileFromArgs(process.argv, 'worker', process.env, warn);
  const config = loadWorkerConfig(file, process.env, warn);
  const files = readConfiguredFiles(config, file ? resolve(file) : '(defaults)');
  const worker = await startWorker(config, { logger, files });
  // The lifecycle timeout must outlast the worker's own grace period plus its abort step.
  handleShutdown(logger, [{ name: 'worker', stop: () => worker.stop() }], config.shutdownGraceMs + 10_000);
});
