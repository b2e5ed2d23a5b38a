import { Counter, Gauge, type Registry } from 'prom-client';

export type AcceptPath = 'inline' | 'spooled';

export interface MailmanMetrics {
  accepted: Counter<'path'>;
  rejected: Counter<'reason'>;
  spoolDepth: Gauge;
  forwardAttempts: Counter<'result'>;
  forwarderConcurrency: Gauge;
  postofficeUp: Gauge;
  auth: Counter<'result'>;
}

/** `spoolDepth` reads the spool at scrape time, so it is right even after a restart. */
export function createMailmanMetrics(registry: Registry, spoolDepth: () => Promise<number>): MailmanMetrics {
  return {
    accepted: new Counter({
      name: 'hedwig_mailman_messages_accepted_total',
      help: 'Messages answered with 250: forwarded during the SMTP transaction (inline) or written to the spool (spooled).',
      labelNames: ['path'],
      registers: [registry],
    }),
    rejected: new Counter({
      name: 'hedwig_mailman_messages_rejected_total',
      help: 'Messages or clients refused, by reason (post office error code for permanent rejections).',
      labelNames: ['reason'],
      registers: [registry],
    }),
    spoolDepth: new Gauge({
      name: 'hedwig_mailman_spool_depth',
      help: 'Messages waiting in the spool for the post office.',
      registers: [registry],
      async collect() {
        try {
          this.set(await spoolDepth());
        } catch {
          // An unreadable spool leaves the last value; the forwarder logs the underlying error.
        }
      },
    }),
    forwardAttempts: new Counter({
      name: 'hedwig_mailman_forward_attempts_total',
      help: 'HTTP forwards to the post office by result (accepted, rejected, temporary), inline and from the spool.',
      labelNames: ['result'],
      registers: [registry],
    }),
    forwarderConcurrency: new Gauge({
      name: 'hedwig_mailman_forwarder_concurrency',
      help: 'Forwards from the spool allowed in parallel now: 1 after an outage, growing by one per success up to forwarder.concurrency.',
      registers: [registry],
    }),
    postofficeUp: new Gauge({
      name: 'hedwig_mailman_postoffice_up',
      help: '1 while the post office takes mail; 0 after an outage (no connection, 502/503/504, a timeout) until a forward succeeds again. While 0, new mail is spooled at once.',
      registers: [registry],
    }),
    auth: new Counter({
      name: 'hedwig_mailman_auth_total',
      help: 'SMTP AUTH attempts by result: succeeded, unknown_user, bad_password, authzid_not_permitted, rate_limited (refused unchecked while the client address is locked out).',
      labelNames: ['result'],
      registers: [registry],
    }),
  };
}
