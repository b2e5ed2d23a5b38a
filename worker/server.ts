import type { Registry } from 'prom-client';
import { BeanstalkClient } from '../shared/beanstalk.ts';
import type { Logger } from '../shared/logger.ts';
import { createRegistry, startOpsServer, type OpsServer } from '../shared/ops-server.ts';
import type { WorkerConfig } from './config.ts';
import { createDeliverer } from './deliver.ts';
import { limitSettingsFrom, outgoingSettingsFrom, shapingSettingsFrom } from './identity-config.ts';
import { createLimiter } from './limits.ts';
import { unusableSourceAddresses } from './source-ip.ts';
import { HedwigError } from '../shared/errors.ts';
import { formatHostPort } from '../shared/host-port.ts';
import { JOB_TTR_SECONDS } from '../shared/job.ts';
import { createWorkerMetrics } from './metrics.ts';
import { createMxResolver } from './mx.ts';
import { startOperations } from './operations.ts';
import { runDeliveryLoop, type WorkerDeps } from './worker.ts';

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

export async function startWorker(config: WorkerConfig, options: { logger: Logger; registry?: Registry }): Promise<RunningWorker> {
  const { logger } = options;
  const unusable = await unusableSourceAddresses(config.source.addresses.map((a) => a.address));
  if (unusable.length > 0) {
    throw new HedwigError('STARTUP_FAILED', `source.addresses: this host cannot send from ${unusable.map((u) => `${u.address} (${u.reason})`).join(', ')}`);
  }
  const registry = options.registry ?? createRegistry('worker');
  const metrics = createWorkerMetrics(registry);
  const abortDeliveries = new AbortController();
  const stopping = new AbortController();
  const operations = startOperations(config, { registry, logger, stopping: stopping.signal });

  const deps: WorkerDeps = {
    resolver: createMxResolver({
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
      onTransaction: (info) => operations.onTransaction(info),
      signal: abortDeliveries.signal,
      outgoing: outgoingSettingsFrom(config),
      ...shapingSettingsFrom(config),
      limiter: createLimiter(limitSettingsFrom(config), { logger }),
    }),
    metrics,
    logger,
    policy: config.retry,
    tubes: { outbound: config.beanstalk.tube, failed: config.beanstalk.failedTube },
    ttrSeconds: JOB_TTR_SECONDS,
    outcomes: operations.outcomes,
    notices: {
      enabled: config.bounces.enabled,
      from: config.bounces.from ?? `MAILER-DAEMON@${config.ehloName}`,
      reportingMta: config.ehloName,
      delayWarningSeconds: config.bounces.delayWarningSeconds,
    },
  };

  // One connection per reserve loop; every server gets at least one loop.
  const servers = config.beanstalk.servers;
  const loopCount = Math.max(config.concurrency, servers.length);
  const clients = Array.from({ length: loopCount }, (_, i) => new BeanstalkClient(servers[i % servers.length]!));
  const loops = clients.map((client) => runDeliveryLoop(client, deps, stopping.signal));

  let ops: OpsServer;
  try {
    ops = await startOpsServer({ host: config.ops.host, port: config.ops.port, registry, ready: () => clients.some((c) => c.connected) });
  } catch (err) {
    stopping.abort();
    abortDeliveries.abort();
    await Promise.all(clients.map((c) => c.close()));
    await Promise.all(loops);
    await operations.stop();
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
    await operations.stop();
    await ops.stop();
  }

  return {
    opsPort: ops.port,
    stop() {
      stopped ??= stop();
      return stopped;
    },
  };
}
