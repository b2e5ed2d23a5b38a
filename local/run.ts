/**
 * All-in-one local relay: beanstalkd (started from PATH, binlog under the data directory),
 * post office, one worker and mailman in one process, configured by local/*.yaml.
 * Production runs each tier as its own process (see docker-compose.yml); this is for
 * trying hedwig on one machine and for development.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { configFileVariable } from '../shared/config.ts';
import { formatHostPort } from '../shared/host-port.ts';
import { handleShutdown, logConfigWarnings, runMain } from '../shared/lifecycle.ts';
import { createLogger } from '../shared/logger.ts';
import { createRegistry } from '../shared/ops-server.ts';
import { loadMailmanConfig } from '../mailman/config.ts';
import { startMailman } from '../mailman/server.ts';
import { loadPostofficeConfig } from '../postoffice/config.ts';
import { beanstalkJobSizeFor, startPostoffice } from '../postoffice/server.ts';
import { loadWorkerConfig } from '../worker/config.ts';
import { startWorker } from '../worker/server.ts';
import { startBeanstalkd } from './beanstalkd.ts';

const here = dirname(new URL(import.meta.url).pathname);
const logger = createLogger('local');

function ensureHostKey(path: string): void {
  if (existsSync(path)) return;
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  writeFileSync(path, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600, flag: 'wx' });
  logger.info({ event: 'host_key_created', path }, 'created the local host key');
}

/** The tier's file from HEDWIG_<TIER>_CONFIG, else the local sample beside this script. */
function localConfigFile(tier: string): string {
  return process.env[configFileVariable(tier)] || `${here}/${tier}.yaml`;
}

await runMain(logger, async (started) => {
  // The sample configs refer to files under data/local (relative to the working directory).
  const dataDir = resolve('data/local');
  ensureHostKey(resolve(dataDir, 'host.key'));

  const warn = logConfigWarnings(logger);
  const postofficeConfig = loadPostofficeConfig(localConfigFile('postoffice'), process.env, warn);
  const workerConfig = loadWorkerConfig(localConfigFile('worker'), process.env, warn);
  const mailmanConfig = loadMailmanConfig(localConfigFile('mailman'), process.env, warn);

  // postoffice config parses servers into { host, port } already.
  const { host: beanstalkHost, port: beanstalkPort } = postofficeConfig.beanstalk.servers[0] ?? { host: '127.0.0.1', port: 11400 };
  // Everything started is registered, so a later failure (a port already taken) stops it again.
  const beanstalkd = started.add(
    'beanstalkd',
    await startBeanstalkd(
      {
        binary: process.env.BEANSTALKD_BIN ?? 'beanstalkd',
        host: beanstalkHost ?? '127.0.0.1',
        port: Number(beanstalkPort ?? 11400),
        binlogDir: resolve(dataDir, 'beanstalkd'),
        maxJobSize: beanstalkJobSizeFor(postofficeConfig),
        fsyncMs: 0,
      },
      logger,
    ),
  );

  const postoffice = started.add('postoffice', await startPostoffice(postofficeConfig, { logger: createLogger('postoffice'), registry: createRegistry('postoffice') }));
  const worker = started.add('worker', await startWorker(workerConfig, { logger: createLogger('worker'), registry: createRegistry('worker') }));
  const mailman = started.add('mailman', await startMailman(mailmanConfig, { logger: createLogger('mailman'), registry: createRegistry('mailman') }));

  handleShutdown(logger, [
    { name: 'mailman', stop: () => mailman.stop() },
    { name: 'postoffice', stop: () => postoffice.stop() },
    { name: 'worker', stop: () => worker.stop() },
    { name: 'beanstalkd', stop: () => beanstalkd.stop() },
  ]);
  logger.info(
    { event: 'ready', smtp: formatHostPort({ host: mailmanConfig.listen.host, port: mailman.port }), http: postoffice.url, dataDir },
    `hedwig is running: send with  msmtp --host=${mailmanConfig.listen.host} --port=${mailman.port} --from=you@example.com someone@example.org < message.eml`,
  );
});
