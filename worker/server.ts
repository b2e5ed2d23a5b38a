import type { Registry } from 'prom-client';
import { BeanstalkClient } from '../shared/beanstalk.ts';
import { errorMessage, HedwigError } from '../shared/errors.ts';
import { formatHostPort } from '../shared/host-port.ts';
import { JOB_TTR_SECONDS } from '../shared/job.ts';
import type { Logger } from '../shared/logger.ts';
import { createRegistry, startOpsServer, type OpsServer } from '../shared/ops-server.ts';
import { readConfiguredFiles, type ConfiguredFiles, type WorkerConfig } from './config.ts';
import { createDeliverer } from './deliver.ts';
import { runDeliveryLoop, type WorkerDeps } from './handle-job.ts';
import { createLimiter, limitSettingsFrom } from './limits.ts';
import { createWorkerMetrics, registerQueueDepth } from './metrics.ts';
import { noticesFrom } from './notices.ts';
import { createOutcomeRecorder } from './outcomes.ts';
import { outgoingSettingsFrom } from './outgoing.ts';
import { createRouteResolver } from './route.ts';
import { unusableSourceAddresses } from './source-ip.ts';
import { tlsPolicySettingsFrom } from './tls-policy.ts';
import { startTransportSecurity } from './transport-security-setup.ts';
import { runWebhookLoop } from './webhook.ts';
import type { StatusUpdate } from '../shared/message-status.ts';
import { redactedUrl } from '../shared/store/config.ts';
import { StoreHealth } from '../shared/store/health.ts';
import { openStore } from '../shared/store/open.ts';

/**
 * Start-up: turns the config into the running worker. One delivery loop per reserve
 * connection (handle-job.ts), the ops server (/metrics, /healthz, /readyz) and, with a
 * webhook, one event dispatcher per beanstalkd server (webhook.ts).
 */

export interface RunningWorker {
  opsPort: number;
  /** Stops reserving, lets in-flight deliveries finish within `shutdownGraceMs`, then cuts them off and closes connections. */
  stop(): Promise<void>;
}

/** After the grace period, how long aborted deliveries get to record their outcome. */
const ABORT_SETTLE_MS = 5_000;

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

export async function startWorker(config: WorkerConfig, options: { logger: Logger; registry?: Registry; files?: ConfiguredFiles }): Promise<RunningWorker> {
  const { logger } = options;
  const files = options.files ?? readConfiguredFiles(config, '(config)');
  const unusable = await unusableSourceAddresses(config.source.addresses.map((a) => a.address));
  if (unusable.length > 0) {
    throw new HedwigError('STARTUP_FAILED', `source.addresses: this host cannot send from ${unusable.map((u) => `${u.address} (${u.reason})`).join(', ')}`);
  }
  const registry = options.registry ?? createRegistry('worker');
  const metrics = createWorkerMetrics(registry);
  const abortDeliveries = new AbortController();
  const stopping = new AbortController();
  const servers = config.beanstalk.servers;
  const webhook = files.webhook;
  const queueDepth = registerQueueDepth(registry, servers, [config.beanstalk.tube, config.beanstalk.failedTube, ...(webhook ? [webhook.tube] : [])]);
  const from = noticesFrom(config.bounces, config.ehloName);
  const tlsSettings = tlsPolicySettingsFrom(config.tls, files.tlsCa);
  const transportSecurity = startTransportSecurity(config, tlsSettings, { logger, metrics });
  const store = await openStore(config.store, { setting: 'store.url', onError: (err) => logger.warn({ event: 'store_connection_error', error: errorMessage(err) }) });
  const storeHealth = new StoreHealth(logger, registry, redactedUrl(config.store.url));
  /** A settled attempt straight into the store; false sends it through the status tube instead. */
  const report = async (update: StatusUpdate): Promise<boolean> => {
    try {
      const applied = await store.applyStatus(update, Date.now(), config.suppression);
      storeHealth.worked();
      for (const entry of applied.suppressed) {
        logger.info({ event: 'suppression_added', address: entry.address, messageId: update.messageId, enhancedCode: entry.enhancedCode, responseCode: entry.responseCode, until: entry.expiresAt });
      }
      return true;
    } catch (err) {
      storeHealth.failed('apply_status', err);
      return false;
    }
  };

  const deps: WorkerDeps = {
    router: createRouteResolver({
      servers: config.dns.servers,
      timeoutMs: config.dns.timeoutMs,
      cacheMaxSeconds: config.dns.cacheMaxSeconds,
      routes: config.routes,
      smtpPort: config.smtpPort,
      allowPrivateAddresses: config.allowPrivateAddresses,
    }),
    deliverer: createDeliverer({
      ehloName: config.ehloName,
      timeouts: config.timeouts,
      logger,
      onConnection: () => metrics.smtpConnections.inc(),
      onTransaction: ({ tls, dkimSigned, reused }) => {
        metrics.smtpTransactions.inc({ tls: String(tls), connection: reused ? 'reused' : 'new' });
        metrics.dkimSignatures.inc({ result: dkimSigned ? 'signed' : 'unsigned' });
      },
      signal: abortDeliveries.signal,
      outgoing: outgoingSettingsFrom({ ehloName: config.ehloName, noticesFrom: from, dkim: files.dkim, received: config.headers.received }),
      tls: tlsSettings,
      tlsPolicy: transportSecurity.tlsPolicy,
      source: config.source,
      connections: config.connections,
      limiter: createLimiter(limitSettingsFrom(config.limits, servers, Math.max(config.concurrency, servers.length)), { logger }),
    }),
    metrics,
    logger,
    policy: config.retry,
    tubes: { outbound: config.beanstalk.tube, failed: config.beanstalk.failedTube },
    ttrSeconds: JOB_TTR_SECONDS,
    outcomes: createOutcomeRecorder({ logger, metrics, report, ...(webhook ? { webhook } : {}) }),
    firstAttempt: async (job, reserved) => {
      try {
        const verdict = await store.firstAttempt(job.id, job.receivedAt, { server: reserved.server, jobId: reserved.id }, Date.now());
        storeHealth.worked();
        return verdict;
      } catch (err) {
        // Without the store a copy cannot be told apart: deliver (at-least-once), never drop.
        storeHealth.failed('first_attempt', err);
        return 'first';
      }
    },
    notices: { enabled: config.bounces.enabled, from, reportingMta: config.ehloName, delayWarningSeconds: config.bounces.delayWarningSeconds },
  };

  // One connection per reserve loop; every server gets at least one loop.
  const loopCount = Math.max(config.concurrency, servers.length);
  const clients = Array.from({ length: loopCount }, (_, i) => new BeanstalkClient(servers[i % servers.length]!));
  const loops = clients.map((client) => runDeliveryLoop(client, deps, stopping.signal));
  const webhookClients = webhook ? servers.map((address) => new BeanstalkClient(address)) : [];
  const webhookLoops = webhook ? webhookClients.map((client) => runWebhookLoop(client, { config: webhook, logger, metrics }, stopping.signal)) : [];

  async function stopOperations(): Promise<void> {
    // An event being posted returns to the queue when its connection closes.
    await Promise.all(webhookClients.map((client) => client.close()));
    await Promise.all(webhookLoops);
    await queueDepth.close();
    await transportSecurity.stop();
  }

  let ops: OpsServer;
  try {
    ops = await startOpsServer({ host: config.ops.host, port: config.ops.port, registry, ready: () => clients.some((c) => c.connected) });
  } catch (err) {
    stopping.abort();
    abortDeliveries.abort();
    await Promise.all(clients.map((c) => c.close()));
    await Promise.all(loops);
    await stopOperations();
    await store.close();
    throw err;
  }
  logger.info(
    { event: 'started', servers: servers.map(formatHostPort), tube: config.beanstalk.tube, loops: loopCount, opsPort: ops.port, ehloName: config.ehloName },
    'worker started',
  );

  let stopped: Promise<void> | undefined;
  async function stop(): Promise<void> {
    stopping.abort();
    const allLoops = Promise.all(loops);
    const finished = await Promise.race([allLoops.then(() => true), delay(config.shutdownGraceMs).then(() => false)]);
    if (!finished) {
      logger.warn({ event: 'shutdown_abort_deliveries', graceMs: config.shutdownGraceMs }, 'cutting off in-flight deliveries');
      abortDeliveries.abort();
      await Promise.race([allLoops, delay(ABORT_SETTLE_MS)]);
    }
    // Jobs still reserved go back to ready when their connection closes.
    await Promise.all(clients.map((c) => c.close()));
    await allLoops;
    // Idle SMTP connections (QUIT) and the limits connection (frees any slot still held).
    await deps.deliverer.close?.();
    await stopOperations();
    await ops.stop();
    await store.close();
  }

  return {
    opsPort: ops.port,
    stop() {
      stopped ??= stop();
      return stopped;
    },
  };
}
