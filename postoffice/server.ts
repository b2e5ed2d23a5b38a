import { readFileSync } from 'node:fs';
import { isIP, type AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import { BeanstalkClient } from '../shared/beanstalk.ts';
import { errorCode, errorMessage, HedwigError } from '../shared/errors.ts';
import { formatHostPort } from '../shared/host-port.ts';
import type { Logger } from '../shared/logger.ts';
import { createRegistry } from '../shared/ops-server.ts';
import { buildApp, DEFAULT_CLAIM_STALE_MS } from './app.ts';
import { jobSizeFor } from '../shared/job.ts';
import type { PostofficeConfig } from './config.ts';
import { RoundRobinQueue } from './queue.ts';
import { jobStateVia, runStatusConsumer } from './status.ts';
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { redactedUrl } from '../shared/store/config.ts';
import { StoreHealth } from '../shared/store/health.ts';
import { openStore, type Store } from '../shared/store/open.ts';
import { createSuppressionEvents } from './suppression.ts';

/** How often the store is pruned: once a minute, or every store.historySeconds when that is shorter (history goes at most that late). */
const PRUNE_INTERVAL_MS = 60_000;
/** BeanstalkClient's default command timeout (shared/beanstalk.ts). */
const BEANSTALK_COMMAND_TIMEOUT_MS = 10_000;

export interface RunningPostoffice {
  port: number;
  url: string;
  /** Stops accepting, lets in-flight requests finish (each waits for its put), then closes the queue. */
  stop(): Promise<void>;
}

export function isLoopbackHost(host: string): boolean {
  if (host === 'localhost') return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  return host === '::1';
}

function readTls(tls: NonNullable<PostofficeConfig['tls']>): { cert: Buffer; key: Buffer } {
  const read = (path: string, key: string): Buffer => {
    try {
      return readFileSync(path);
    } catch (err) {
      throw new HedwigError('CONFIG_INVALID', `cannot read tls.${key} ${path}: ${errorCode(err) ?? errorMessage(err)}`);
    }
  };
  return { cert: read(tls.cert, 'cert'), key: read(tls.key, 'key') };
}

function createClient(address: { host: string; port: number }, logger: Logger): BeanstalkClient {
  const client = new BeanstalkClient(address);
  const server = client.server;
  client.on('connect', () => logger.info({ event: 'beanstalk_connected', server }));
  client.on('disconnect', (err: unknown, how?: { requested: boolean }) =>
    // A connection closed on purpose (shutting down) is no cause for an operator to look.
    how?.requested ? logger.info({ event: 'beanstalk_closed', server }) : logger.warn({ event: 'beanstalk_disconnected', server, error: err ? errorMessage(err) : undefined }),
  );
  return client;
}

/**
 * beanstalkd refuses jobs above its -z size (65,535 bytes by default): every larger
 * message would get 503 until an operator notices, so say so at start-up.
 */
/** The beanstalkd `-z` this post office's jobs need (local mode starts its beanstalkd with it). */
export function beanstalkJobSizeFor(config: Pick<PostofficeConfig, 'limits' | 'clients'>): number {
  // Every job carries its host's senderDomains (shared/job.ts) on top of what jobSizeFor counts.
  const longestDomainList = Math.max(0, ...Object.values(config.clients).map((client) => JSON.stringify(client.senderDomains).length));
  return jobSizeFor(config.limits.maxMessageBytes, config.limits.maxRecipients) + longestDomainList;
}

async function warnIfJobSizeTooSmall(client: BeanstalkClient, needed: number, logger: Logger): Promise<void> {
  const maxJobSize = Number((await client.stats())['max-job-size']);
  if (Number.isFinite(maxJobSize) && maxJobSize < needed) {
    logger.warn(
      { event: 'beanstalk_job_size_too_small', server: client.server, maxJobSize, needed },
      `beanstalkd max-job-size is below what limits.maxMessageBytes needs: start it with -z ${needed} or more`,
    );
  }
}

/**
 * Starts the post office. beanstalkd being down at start-up is not fatal: the clients
 * keep reconnecting, /readyz says 503 and submissions get 503 until one is back.
 */
export async function startPostoffice(config: PostofficeConfig, options: { logger: Logger; registry?: Registry }): Promise<RunningPostoffice> {
  const { logger } = options;
  const registry = options.registry ?? createRegistry('postoffice');
  const https = config.tls ? readTls(config.tls) : undefined;
  const { tube, ttrSeconds } = config.beanstalk;

  const clients = config.beanstalk.servers.map((address) => createClient(address, logger));
  const neededJobSize = beanstalkJobSizeFor(config);
  await Promise.all(
    clients.map(async (client) => {
      try {
        await client.connect();
        await client.use(tube);
        await warnIfJobSizeTooSmall(client, neededJobSize, logger);
      } catch (err) {
        logger.warn({ event: 'beanstalk_unavailable', server: client.server, error: errorMessage(err) }, 'beanstalkd not reachable yet; retrying in the background');
      }
    }),
  );
  const closeClients = () => Promise.all(clients.map((client) => client.close())).then(() => undefined);

  let store: Store;
  try {
    store = await openStore(config.store, { setting: 'store.url', onError: (err) => logger.warn({ event: 'store_connection_error', error: errorMessage(err) }) });
  } catch (err) {
    await closeClients();
    throw err;
  }
  const storeHealth = new StoreHealth(logger, registry, redactedUrl(config.store.url));
  const queue = new RoundRobinQueue(clients, { tube, ttrSeconds });
  const stopStatus = new AbortController();
  const suppressionEvents = createSuppressionEvents({ clients, tube: config.suppression.webhookTube, logger });
  const app = buildApp(config, {
    logger,
    queue,
    registry,
    store,
    storeHealth,
    owner: `${hostname()}/${process.pid}/${randomUUID().slice(0, 8)}`,
    // A live owner finishes its put within the command timeout of each server it tries.
    claimStaleMs: Math.max(DEFAULT_CLAIM_STALE_MS, (config.beanstalk.servers.length + 1) * BEANSTALK_COMMAND_TIMEOUT_MS),
    onSuppressed: (context, suppressed) => {
      for (const [recipient, entry] of suppressed) {
        logger.info({ event: 'suppressed', messageId: context.messageId, fqdn: context.fqdn, mailfrom: context.mailfrom, recipient, source: entry.source, enhancedCode: entry.enhancedCode, until: entry.expiresAt });
      }
      void suppressionEvents(context, suppressed);
    },
    ...(https ? { https } : {}),
    ...(config.status.enabled ? { status: { store, health: storeHealth, jobState: jobStateVia(clients) } } : {}),
  });
  const statusConsumers = config.status.enabled
    ? config.beanstalk.servers.map((address) =>
        runStatusConsumer(address, { tube: config.status.tube, store, health: storeHealth, suppression: config.suppression, logger, stopping: stopStatus.signal }),
      )
    : [];
  const pruner = setInterval(() => {
    store
      .prune(Date.now(), { firstAttemptMs: Math.max(config.store.historySeconds, config.idempotencyTtlSeconds) * 1000 })
      .then((removed) => {
        storeHealth.worked();
        if (Object.values(removed).some((n) => n > 0)) logger.info({ event: 'store_pruned', ...removed });
      })
      .catch((err: unknown) => storeHealth.failed('prune', err));
  }, Math.min(PRUNE_INTERVAL_MS, config.store.historySeconds * 1000));
  pruner.unref();
  const stopStatusConsumers = async () => {
    clearInterval(pruner);
    stopStatus.abort();
    await Promise.all(statusConsumers);
  };
  try {
    await app.listen({ host: config.listen.host, port: config.listen.port });
  } catch (err) {
    await app.close().catch(() => undefined);
    await stopStatusConsumers();
    await closeClients();
    await store.close();
    throw new HedwigError('STARTUP_FAILED', `cannot listen on ${formatHostPort(config.listen)}: ${errorCode(err) ?? errorMessage(err)}`, { cause: err });
  }

  const port = (app.server.address() as AddressInfo).port;
  const host = config.listen.host.includes(':') ? `[${config.listen.host}]` : config.listen.host;
  const url = `${https ? 'https' : 'http'}://${host}:${port}`;
  if (!https && !isLoopbackHost(config.listen.host)) {
    logger.warn(
      { event: 'plain_http', host: config.listen.host },
      'serving plain HTTP on a non-loopback address: configure tls (the legacy route sends keys in the clear)',
    );
  }
  logger.info({ event: 'started', url, beanstalk: clients.map((c) => c.server), tube, legacy: config.legacy.enabled, store: redactedUrl(config.store.url) });

  let stopping: Promise<void> | undefined;
  return {
    port,
    url,
    stop() {
      stopping ??= (async () => {
        await app.close();
        await stopStatusConsumers();
        await closeClients();
        await store.close();
      })();
      return stopping;
    },
  };
}
