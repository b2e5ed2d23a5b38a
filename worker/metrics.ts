import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { BeanstalkClient } from '../shared/beanstalk.ts';
import type { HostPort } from '../shared/host-port.ts';
import { TUBE_STATES, tubeCounts } from '../shared/tube-stats.ts';

/**
 * Every metric of the worker, declared once (the README's metrics table lists them). Each
 * is looked up before it is created, so several workers in one process (tests) can share
 * a registry.
 */

export type DeliveryOutcome = 'delivered' | 'deferred' | 'bounced' | 'expired';

export interface WorkerMetrics {
  /** Per recipient and attempt. */
  deliveries: Counter<'outcome'>;
  /** One destination domain: MX lookup plus the SMTP transaction(s). */
  deliveryDuration: Histogram;
  /** Accepted by hedwig (the post office's receivedAt) to delivered, per recipient. */
  deliveryLatency: Histogram;
  smtpConnections: Counter;
  /** SMTP transactions by TLS use and by whether the connection was new or reused. */
  smtpTransactions: Counter<'tls' | 'connection'>;
  dkimSignatures: Counter<'result'>;
  /** Jobs buried for an operator (undecodable, reserved too often, an outcome too big). */
  buriedJobs: Counter;
  /** Second copies of an already attempted job, deleted without delivery. */
  duplicateJobs: Counter;
  /** Delivery status notifications queued for senders: failure, delay. */
  notices: Counter<'kind'>;
  webhookEvents: Counter<'type'>;
  /** TLS sessions under a recipient domain's policy (MTA-STS, DANE): success or an RFC 8460 result type. */
  tlsPolicySessions: Counter<'policy' | 'result'>;
  /** TLS-RPT aggregate reports by how they went (https, mailto) and result. */
  tlsReports: Counter<'via' | 'result'>;
  webhookDeliveries: Counter<'result'>;
  statusUpdates: Counter<'result'>;
}

function metric<T>(registry: Registry, name: string, create: (registers: Registry[]) => T): T {
  return (registry.getSingleMetric(name) as T | undefined) ?? create([registry]);
}

export function createWorkerMetrics(registry: Registry): WorkerMetrics {
  return {
    deliveries: metric(
      registry,
      'hedwig_worker_deliveries_total',
      (registers) =>
        new Counter({
          name: 'hedwig_worker_deliveries_total',
          help: 'Recipient outcomes per delivery attempt: delivered, deferred, bounced, expired.',
          labelNames: ['outcome'],
          registers,
        }),
    ),
    deliveryDuration: metric(
      registry,
      'hedwig_worker_delivery_duration_seconds',
      (registers) =>
        new Histogram({
          name: 'hedwig_worker_delivery_duration_seconds',
          help: 'Time to deliver to one destination domain, MX lookup included.',
          buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300],
          registers,
        }),
    ),
    deliveryLatency: metric(
      registry,
      'hedwig_worker_delivery_latency_seconds',
      (registers) =>
        new Histogram({
          name: 'hedwig_worker_delivery_latency_seconds',
          help: 'Per delivered recipient: from acceptance by the post office to the 250 of the receiving server, retries included.',
          buckets: [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200, 21_600, 86_400, 432_000],
          registers,
        }),
    ),
    smtpConnections: metric(
      registry,
      'hedwig_worker_smtp_connections_total',
      (registers) => new Counter({ name: 'hedwig_worker_smtp_connections_total', help: 'SMTP connections opened to receiving servers.', registers }),
    ),
    smtpTransactions: metric(
      registry,
      'hedwig_worker_smtp_transactions_total',
      (registers) =>
        new Counter({
          name: 'hedwig_worker_smtp_transactions_total',
          help: 'SMTP transactions started, by TLS use (true/false) and connection (new/reused).',
          labelNames: ['tls', 'connection'],
          registers,
        }),
    ),
    dkimSignatures: metric(
      registry,
      'hedwig_worker_dkim_signatures_total',
      (registers) =>
        new Counter({
          name: 'hedwig_worker_dkim_signatures_total',
          help: 'Messages prepared for a destination, by DKIM result: signed, unsigned (no key for the sender domain).',
          labelNames: ['result'],
          registers,
        }),
    ),
    buriedJobs: metric(
      registry,
      'hedwig_worker_buried_jobs_total',
      (registers) => new Counter({ name: 'hedwig_worker_buried_jobs_total', help: 'Jobs that could not be decoded and were buried for an operator.', registers }),
    ),
    duplicateJobs: metric(
      registry,
      'hedwig_worker_duplicate_jobs_total',
      (registers) =>
        new Counter({ name: 'hedwig_worker_duplicate_jobs_total', help: 'Second copies of a job whose message already made its first attempt (a repeated put), deleted without delivering.', registers }),
    ),
    notices: metric(
      registry,
      'hedwig_worker_notices_total',
      (registers) =>
        new Counter({
          name: 'hedwig_worker_notices_total',
          help: 'Delivery status notifications (RFC 3464) queued for senders: failure (bounced or expired recipients), delay (warning).',
          labelNames: ['kind'],
          registers,
        }),
    ),
    webhookEvents: metric(
      registry,
      'hedwig_worker_webhook_events_total',
      (registers) => new Counter({ name: 'hedwig_worker_webhook_events_total', help: 'Delivery events queued for the webhook, by type.', labelNames: ['type'], registers }),
    ),
    webhookDeliveries: metric(
      registry,
      'hedwig_worker_webhook_deliveries_total',
      (registers) =>
        new Counter({
          name: 'hedwig_worker_webhook_deliveries_total',
          help: 'Webhook requests by result: delivered (2xx), failed (retried later), gave_up (older than maxAgeSeconds; buried).',
          labelNames: ['result'],
          registers,
        }),
    ),
    tlsPolicySessions: metric(
      registry,
      'hedwig_worker_tls_policy_sessions_total',
      (registers) =>
        new Counter({
          name: 'hedwig_worker_tls_policy_sessions_total',
          help: 'TLS sessions under a recipient domain policy: policy (sts, tlsa), result (success or the RFC 8460 result type).',
          labelNames: ['policy', 'result'],
          registers,
        }),
    ),
    tlsReports: metric(
      registry,
      'hedwig_worker_tls_reports_total',
      (registers) =>
        new Counter({
          name: 'hedwig_worker_tls_reports_total',
          help: 'TLS-RPT aggregate reports: via (https, mailto), result (sent, failed).',
          labelNames: ['via', 'result'],
          registers,
        }),
    ),
    statusUpdates: metric(
      registry,
      'hedwig_worker_status_updates_total',
      (registers) =>
        new Counter({
          name: 'hedwig_worker_status_updates_total',
          help: 'Message status reports, by result: stored (written into the store), sent (into the status tube, the store being unavailable), skipped (no post office watches the status tube), failed.',
          labelNames: ['result'],
          registers,
        }),
    ),
  };
}

/**
 * `hedwig_queue_jobs{server, tube, state}`: jobs per beanstalkd server, tube and state,
 * read with `stats-tube` at scrape time. It has its own connection per server: a reserve
 * loop's connection is busy with a blocking reserve, and a scrape must not wait for it.
 * An unreachable server is left out of the scrape (its series disappear), which is what
 * an alert on `absent()` or on the worker's readiness can catch.
 */
export function registerQueueDepth(registry: Registry, servers: readonly HostPort[], tubes: string[]): { close(): Promise<void> } {
  const clients = servers.map((address) => new BeanstalkClient(address, { commandTimeoutMs: 2000, connectTimeoutMs: 2000 }));
  const name = 'hedwig_queue_jobs';
  registry.removeSingleMetric(name);
  new Gauge({
    name,
    help: 'Jobs in beanstalkd per server, tube and state (ready, delayed, reserved, buried), read at scrape time.',
    labelNames: ['server', 'tube', 'state'],
    registers: [registry],
    async collect() {
      this.reset();
      await Promise.all(
        clients.map(async (client) => {
          try {
            await client.connect();
            for (const tube of tubes) {
              const counts = await tubeCounts(client, tube);
              for (const state of TUBE_STATES) this.set({ server: client.server, tube, state }, counts[state]);
            }
          } catch {
            // Unreachable now: no series for this server in this scrape.
          }
        }),
      );
    },
  });
  return {
    async close() {
      await Promise.all(clients.map((client) => client.close()));
    },
  };
}
