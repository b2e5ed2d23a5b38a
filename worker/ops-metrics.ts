import { Counter, Histogram, type Registry } from 'prom-client';

/**
 * The worker's operational metrics beyond per-attempt outcomes (worker/metrics.ts):
 * end-to-end latency, what the SMTP sessions looked like, DKIM, and the webhook.
 */
export interface OperationsMetrics {
  /** Accepted by hedwig (the post office's receivedAt) to delivered, per recipient. */
  deliveryLatency: Histogram;
  /** SMTP transactions by TLS use and by whether the connection was new or reused. */
  smtpTransactions: Counter<'tls' | 'connection'>;
  dkimSignatures: Counter<'result'>;
  webhookEvents: Counter<'type'>;
  webhookDeliveries: Counter<'result'>;
  statusUpdates: Counter<'result'>;
}

function metric<T>(registry: Registry, name: string, create: () => T): T {
  // Looked up first so several workers (tests) can share one registry.
  return (registry.getSingleMetric(name) as T | undefined) ?? create();
}

export function createOperationsMetrics(registry: Registry): OperationsMetrics {
  const registers = [registry];
  return {
    deliveryLatency: metric(
      registry,
      'hedwig_worker_delivery_latency_seconds',
      () =>
        new Histogram({
          name: 'hedwig_worker_delivery_latency_seconds',
          help: 'Per delivered recipient: from acceptance by the post office to the 250 of the receiving server, retries included.',
          buckets: [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200, 21_600, 86_400, 432_000],
          registers,
        }),
    ),
    smtpTransactions: metric(
      registry,
      'hedwig_worker_smtp_transactions_total',
      () =>
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
      () =>
        new Counter({
          name: 'hedwig_worker_dkim_signatures_total',
          help: 'Messages prepared for a destination, by DKIM result: signed, unsigned (no key for the sender domain).',
          labelNames: ['result'],
          registers,
        }),
    ),
    webhookEvents: metric(
      registry,
      'hedwig_worker_webhook_events_total',
      () => new Counter({ name: 'hedwig_worker_webhook_events_total', help: 'Delivery events queued for the webhook, by type.', labelNames: ['type'], registers }),
    ),
    webhookDeliveries: metric(
      registry,
      'hedwig_worker_webhook_deliveries_total',
      () =>
        new Counter({
          name: 'hedwig_worker_webhook_deliveries_total',
          help: 'Webhook requests by result: delivered (2xx), failed (retried later), gave_up (older than maxAgeSeconds; buried).',
          labelNames: ['result'],
          registers,
        }),
    ),
    statusUpdates: metric(
      registry,
      'hedwig_worker_status_updates_total',
      () =>
        new Counter({
          name: 'hedwig_worker_status_updates_total',
          help: 'Message status updates for the post office, by result: sent, skipped (no post office watches the status tube), failed.',
          labelNames: ['result'],
          registers,
        }),
    ),
  };
}
