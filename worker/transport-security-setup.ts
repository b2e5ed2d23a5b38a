import { promises as dns } from 'node:dns';
import { hostname } from 'node:os';
import { domainOf } from '../shared/address.ts';
import { BeanstalkClient } from '../shared/beanstalk.ts';
import { encodeJob, JOB_TTR_SECONDS } from '../shared/job.ts';
import type { Logger } from '../shared/logger.ts';
import type { WorkerConfig } from './config.ts';
import { createDaneLookup } from './dane.ts';
import type { WorkerMetrics } from './metrics.ts';
import { createMtaSts, type MtaSts } from './mta-sts.ts';
import { createPolicyFileCache } from './mta-sts-cache.ts';
import { resolverLookup } from './resolver-lookup.ts';
import { createSecureResolver } from './secure-dns.ts';
import type { TlsPolicy, TlsPolicySettings } from './tls-policy.ts';
import { createTlsRptAggregator } from './tls-rpt.ts';
import { startTlsRptSender, type TlsRptSender } from './tls-rpt-sender.ts';
import { createTransportSecurity } from './transport-security.ts';

/**
 * Start-up of the recipient-domain TLS policies (transport-security.ts) from the config:
 * the resolver they share with the MX lookups (dns.servers), the MTA-STS policy cache and
 * the TLS-RPT counts under `stateDir`, and the report sender, which queues mailto: reports
 * through its own beanstalkd connection.
 */

/**
 * Whose TLS-RPT counts file this worker keeps in `stateDir`: one per worker process. Workers
 * may share the directory (compose replicas on one volume have the same ehloName and ops
 * port), so the host name, a container's own, is part of it: a worker never loads, and then
 * reports again, the counts of another.
 */
export function tlsRptReportingId(config: Pick<WorkerConfig, 'ehloName' | 'ops'>, host: string = hostname()): string {
  return `${config.ehloName}-${host}-${config.ops.port}`;
}

export interface TransportSecurityRuntime {
  tlsPolicy: TlsPolicy;
  /** Saves the TLS-RPT counts and waits for background policy refreshes (shutdown). */
  stop(): Promise<void>;
}

export function startTransportSecurity(
  config: WorkerConfig,
  settings: TlsPolicySettings,
  options: { logger: Logger; metrics: Pick<WorkerMetrics, 'tlsPolicySessions' | 'tlsReports'> },
): TransportSecurityRuntime {
  const { logger, metrics } = options;
  const resolver = new dns.Resolver({ timeout: Math.max(50, Math.floor(config.dns.timeoutMs / 3)), tries: 2 });
  if (config.dns.servers.length > 0) resolver.setServers(config.dns.servers);
  const resolveTxt = (name: string) => resolver.resolveTxt(name);
  const lookup = resolverLookup(resolver, { allowPrivateAddresses: config.allowPrivateAddresses });

  const mtaSts: MtaSts | undefined = config.mtaSts.enabled
    ? createMtaSts({
        resolveTxt,
        lookup,
        ...(settings.ca ? { ca: settings.ca } : {}),
        port: config.mtaSts.port,
        fetchTimeoutMs: config.mtaSts.fetchTimeoutMs,
        refreshSeconds: config.mtaSts.refreshSeconds,
        negativeCacheSeconds: config.mtaSts.negativeCacheSeconds,
        cache: createPolicyFileCache(config.stateDir, logger),
        logger,
      })
    : undefined;
  const dane = config.dane.enabled
    ? createDaneLookup({ resolver: createSecureResolver({ servers: config.dns.servers, timeoutMs: config.dns.timeoutMs }), cacheMaxSeconds: config.dns.cacheMaxSeconds })
    : undefined;

  const aggregator = config.tlsRpt.enabled
    ? createTlsRptAggregator({ intervalSeconds: config.tlsRpt.intervalSeconds, stateDir: config.stateDir, reportingId: tlsRptReportingId(config), logger })
    : undefined;
  let sender: TlsRptSender | undefined;
  let queueClient: BeanstalkClient | undefined;
  if (aggregator) {
    const from = config.tlsRpt.from ?? `tlsrpt@${config.ehloName}`;
    queueClient = new BeanstalkClient(config.beanstalk.servers[0]!);
    const client = queueClient;
    const ehloDomain = config.ehloName.includes('.') ? config.ehloName.split('.').slice(1).join('.') : config.ehloName;
    sender = startTlsRptSender({
      aggregator,
      resolveTxt,
      identity: {
        organizationName: config.tlsRpt.organizationName ?? (ehloDomain.includes('.') ? ehloDomain : domainOf(from)),
        contactInfo: config.tlsRpt.contactInfo ?? `mailto:${from}`,
        submitter: config.ehloName,
      },
      from,
      queue: async (job) => {
        await client.connect();
        return client.putTo(config.beanstalk.tube, encodeJob(job), { ttrSeconds: JOB_TTR_SECONDS });
      },
      lookup,
      ...(settings.ca ? { ca: settings.ca } : {}),
      timeoutMs: config.tlsRpt.timeoutMs,
      logger,
      onReport: (via, result) => metrics.tlsReports.inc({ via, result }),
      checkMs: Math.min(60_000, Math.max(250, (config.tlsRpt.intervalSeconds * 1000) / 4)),
    });
  }

  const tlsPolicy = createTransportSecurity({
    settings,
    ...(mtaSts ? { mtaSts } : {}),
    ...(dane ? { dane } : {}),
    report: (policy, result) => {
      metrics.tlsPolicySessions.inc({ policy: policy.type, result: result === 'success' ? 'success' : result.resultType });
      if (!aggregator) return;
      if (result === 'success') aggregator.success(policy);
      else aggregator.failure(policy, result);
    },
    logger,
  });

  return {
    tlsPolicy,
    async stop() {
      await sender?.stop();
      await queueClient?.close();
      await mtaSts?.idle();
    },
  };
}
