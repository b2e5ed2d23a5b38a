import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

export interface PostofficeMetrics {
  accepted: Counter<'route'>;
  duplicates: Counter<'route'>;
  rejected: Counter<'reason'>;
  suppressed: Counter;
  storeRecordsDropped: Counter;
  authFailures: Counter<'reason'>;
  requestDuration: Histogram<'route' | 'method' | 'status'>;
  /** Reads the bodies in progress at scrape time (postoffice/upload.ts). */
  observeUploads(budget: { readonly pendingBodies: number; readonly pendingBytes: number }): void;
}

/**
 * Metrics are looked up before being created so that several apps can share one
 * registry (tests build many apps; prom-client throws on a second registration).
 */
function counter<L extends string>(registry: Registry, name: string, help: string, labelNames: L[]): Counter<L> {
  return (registry.getSingleMetric(name) as Counter<L> | undefined) ?? new Counter({ name, help, labelNames, registers: [registry] });
}

export function createPostofficeMetrics(registry: Registry): PostofficeMetrics {
  const durationName = 'hedwig_postoffice_request_duration_seconds';
  return {
    accepted: counter(registry, 'hedwig_postoffice_messages_accepted_total', 'Messages put into beanstalkd, by route (v1, legacy).', ['route']),
    duplicates: counter(registry, 'hedwig_postoffice_messages_duplicate_total', 'Retried requests answered from the idempotency cache (nothing queued).', ['route']),
    suppressed: counter(registry, 'hedwig_postoffice_recipients_suppressed_total', 'Recipients left out of submissions because they are on the suppression list.', []),
    storeRecordsDropped: counter(registry, 'hedwig_postoffice_store_records_dropped_total', 'Queued-message records dropped from the memory buffer while the store was unavailable (the messages are still queued).', []),
    rejected: counter(registry, 'hedwig_postoffice_messages_rejected_total', 'Requests answered with an error, by error code.', ['reason']),
    authFailures: counter(registry, 'hedwig_postoffice_auth_failures_total', 'Failed authentications, by what failed (unknown_fqdn, bad_signature, wrong_key, stale_timestamp, ...).', ['reason']),
    requestDuration:
      (registry.getSingleMetric(durationName) as Histogram<'route' | 'method' | 'status'> | undefined) ??
      new Histogram({
        name: durationName,
        help: 'HTTP request duration, from the first byte received to the response sent.',
        labelNames: ['route', 'method', 'status'],
        buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
        registers: [registry],
      }),
    observeUploads(budget) {
      gauge(registry, 'hedwig_postoffice_pending_bodies', 'Request bodies being read before their sender is authenticated (and until answered).', () => budget.pendingBodies);
      gauge(registry, 'hedwig_postoffice_pending_body_bytes', 'Bytes those bodies hold.', () => budget.pendingBytes);
    },
  };
}

/** A gauge read at scrape time; a second app on the same registry takes it over. */
function gauge(registry: Registry, name: string, help: string, read: () => number): void {
  registry.removeSingleMetric(name);
  new Gauge({
    name,
    help,
    registers: [registry],
    collect() {
      this.set(read());
    },
  });
}
