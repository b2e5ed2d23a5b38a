import { Counter, Histogram, type Registry } from 'prom-client';

export type DeliveryOutcome = 'delivered' | 'deferred' | 'bounced' | 'expired';

export interface WorkerMetrics {
  /** Per recipient and attempt. */
  deliveries: Counter<'outcome'>;
  /** One destination domain: MX lookup plus the SMTP transaction(s). */
  deliveryDuration: Histogram;
  smtpConnections: Counter;
  /** Jobs that could not be decoded and were buried. */
  buriedJobs: Counter;
  /** Delivery status notifications queued for senders: failure, delay. */
  notices: Counter<'kind'>;
}

/** Looked up before being created so several workers (tests) can share one registry. */
export function createWorkerMetrics(registry: Registry): WorkerMetrics {
  const existing = <T>(name: string) => registry.getSingleMetric(name) as T | undefined;
  return {
    deliveries:
      existing<Counter<'outcome'>>('hedwig_worker_deliveries_total') ??
      new Counter({
        name: 'hedwig_worker_deliveries_total',
        help: 'Recipient outcomes per delivery attempt: delivered, deferred, bounced, expired.',
        labelNames: ['outcome'],
        registers: [registry],
      }),
    deliveryDuration:
      existing<Histogram>('hedwig_worker_delivery_duration_seconds') ??
      new Histogram({
        name: 'hedwig_worker_delivery_duration_seconds',
        help: 'Time to deliver to one destination domain, MX lookup included.',
        buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300],
        registers: [registry],
      }),
    smtpConnections:
      existing<Counter>('hedwig_worker_smtp_connections_total') ??
      new Counter({ name: 'hedwig_worker_smtp_connections_total', help: 'SMTP connections opened to receiving servers.', registers: [registry] }),
    buriedJobs:
      existing<Counter>('hedwig_worker_buried_jobs_total') ??
      new Counter({ name: 'hedwig_worker_buried_jobs_total', help: 'Jobs that could not be decoded and were buried for an operator.', registers: [registry] }),
    notices:
      existing<Counter<'kind'>>('hedwig_worker_notices_total') ??
      new Counter({
        name: 'hedwig_worker_notices_total',
        help: 'Delivery status notifications (RFC 3464) queued for senders: failure (bounced or expired recipients), delay (warning).',
        labelNames: ['kind'],
        registers: [registry],
      }),
  };
}
