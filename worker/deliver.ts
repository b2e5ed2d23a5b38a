import type { Logger } from '../shared/logger.ts';
import { forRecipients, ownVerdict, type RecipientResult, type Verdict } from './classify.ts';
import { createConnector, SHUTDOWN_VERDICT, type ConnectionTarget, type Connector } from './connection.ts';
import { asksToBackOff, type LimitBucket, type Limiter } from './limits.ts';
import { prepareMessage, signingDomainOf, type OutgoingSettings } from './outgoing.ts';
import { createConnectionPool, type ConnectionPool, type PoolSettings } from './pool.ts';
import type { MxHost } from './route.ts';
import type { SessionTimeouts } from './smtp-timeouts.ts';
import { createSourceSelector, type SourceSelector, type SourceSettings } from './source-ip.ts';
import { createTlsPolicy, type TlsPolicy, type TlsPolicySettings } from './tls-policy.ts';
import { deliveryBound, type DeliveryBound } from './delivery-bound.ts';
import { has8bit } from './seven-bit.ts';
import { runTransaction, type TransactionMessage } from './transaction.ts';

/**
 * Delivery to one destination domain, with all of its recipients in one transaction: the
 * steps after the route (route.ts) in order. The message is prepared once (header edits,
 * DKIM; outgoing.ts); a delivery slot keeps one destination to its share of this worker
 * (limits.ts); then for each MX address in turn: a source address (source-ip.ts), a ready
 * connection (connection.ts: pool, limits, TLS policy), a message slot, the transaction
 * (transaction.ts). The next address is tried when one could not be reached or refused the
 * session; once a transaction ran, its replies are the verdicts. Each command has its
 * deadline (smtp-session.ts) and the whole delivery `timeouts.deliveryMs`.
 */

export interface DeliveryRequest {
  messageId: string;
  domain: string;
  /** '' for the null reverse-path. */
  from: string;
  recipients: string[];
  raw: Buffer;
  hosts: MxHost[];
  /** When hedwig accepted the message (ms): the Date of a message without one. Default: now. */
  receivedAt?: number;
  /** The submitting host, for the optional Received field. */
  submittedBy?: string;
  /** What may be signed for it (QueuedMessage.notice, .senderDomains). */
  notice?: boolean;
  senderDomains?: readonly string[];
}

export interface DelivererOptions {
  /** EHLO name when no source address pool is configured. */
  ehloName: string;
  /** The session's timeouts and deadlines; `deliveryMs` bounds one delivery in all (unset: no bound). */
  timeouts: SessionTimeouts & { deliveryMs?: number };
  logger: Logger;
  /** Called for every TCP connection attempt (metrics). */
  onConnection?: () => void;
  /** Called for every SMTP transaction started (metrics: TLS use, DKIM). */
  onTransaction?: (info: { tls: boolean; dkimSigned: boolean; reused: boolean }) => void;
  /** Aborting closes every open SMTP connection (shutdown). */
  signal?: AbortSignal;
  /** Addresses tried per delivery across all MX hosts (Postfix's smtp_mx_address_limit is 5). */
  maxAddresses?: number;
  now?: () => number;
  /** Header edits and DKIM keys; default: header edits only, no signing, no Received field. */
  outgoing?: OutgoingSettings;
  /** Default: opportunistic STARTTLS (`may`) everywhere, broken hosts remembered for an hour. */
  tls?: TlsPolicySettings;
  /** The TLS-policy decision itself (transport-security.ts: with MTA-STS and DANE); default: from `tls` alone. */
  tlsPolicy?: TlsPolicy;
  /** Default: no pool, the operating system picks the address, `ehloName`. */
  source?: SourceSettings;
  /** Default: no reuse (every transaction on its own connection). */
  connections?: PoolSettings;
  /** Default: no limits, and no back-off. */
  limiter?: Limiter;
}

export interface Deliverer {
  deliver(request: DeliveryRequest): Promise<RecipientResult[]>;
  /** Closes idle connections and the limiter's beanstalkd connection. */
  close?(): Promise<void>;
}

const DEFAULT_TLS: TlsPolicySettings = { policy: 'may', domains: {}, brokenHostMemoryMs: 3_600_000 };
const NO_REUSE: PoolSettings = { maxMessagesPerConnection: 1, idleTimeoutMs: 0 };
const NO_ADDRESS: Verdict = ownVerdict('deferred', 'no MX address to try');

/** How one MX address ended: verdicts for the recipients, or none (then `verdict` says why, and `stop` whether to try the next address). */
type AtAddress = { results: RecipientResult[]; backOff?: Verdict } | { results?: undefined; verdict: Verdict; stop: boolean; backOff?: Verdict };

interface Delivery {
  request: DeliveryRequest;
  /** Aborted on shutdown, or when the delivery has taken `deliveryMs`. */
  signal: AbortSignal | undefined;
  /** Whether the prepared message has 8-bit bytes, and its 7-bit version once a server without 8BITMIME asked for it. */
  eightBit: boolean;
  sevenBit?: Promise<TransactionMessage | Verdict>;
  message: TransactionMessage;
  bucket: LimitBucket;
  /** `domain/selector` of the DKIM signature, for the log. */
  signedBy: string | undefined;
  log: Logger;
}

export function createDeliverer(options: DelivererOptions): Deliverer {
  const maxAddresses = options.maxAddresses ?? 10;
  const now = options.now ?? Date.now;
  const outgoing: OutgoingSettings = options.outgoing ?? { hostname: options.ehloName, dkim: new Map(), received: false };
  const sources: SourceSelector = createSourceSelector(options.source ?? { addresses: [], selection: 'round-robin', senderDomains: {} }, options.ehloName);
  const pool: ConnectionPool = createConnectionPool(options.connections ?? NO_REUSE);
  const limiter = options.limiter;
  const connector: Connector = createConnector({
    pool,
    tlsPolicy: options.tlsPolicy ?? createTlsPolicy(options.tls ?? DEFAULT_TLS, now),
    ...(limiter ? { limiter } : {}),
    timeouts: options.timeouts,
    logger: options.logger,
    ...(options.onConnection ? { onConnection: options.onConnection } : {}),
  });
  options.signal?.addEventListener('abort', () => pool.closeIdle(), { once: true });

  function prepare(request: DeliveryRequest, sevenBit: boolean) {
    const queued = {
      messageId: request.messageId,
      from: request.from,
      raw: request.raw,
      receivedAt: request.receivedAt ?? now(),
      submittedBy: request.submittedBy,
      now: now(),
      notice: request.notice,
      senderDomains: request.senderDomains,
    };
    return prepareMessage(queued, outgoing, { sevenBit });
  }

  /**
   * The message for a server without 8BITMIME (RFC 6152 §3): prepared again with its 8-bit
   * parts re-encoded, then signed; once per delivery. A message that cannot be converted
   * bounces with 5.6.3 (RFC 3463: conversion required but not supported).
   */
  function sevenBitVersion(delivery: Delivery): Promise<TransactionMessage | Verdict> {
    delivery.sevenBit ??= prepare(delivery.request, true).then((prepared) => {
      if (prepared.ok) return { ...delivery.message, raw: prepared.raw };
      if (prepared.code === 'EIGHTBIT_UNCONVERTIBLE') {
        return { outcome: 'bounced', greylisted: false, enhancedCode: '5.6.3', response: `5.6.3 the receiving server does not offer 8BITMIME and the message cannot be converted to 7 bit: ${prepared.message}` };
      }
      delivery.log.error({ event: 'prepare_failed', code: prepared.code, reason: prepared.message }, 'message not sent');
      return ownVerdict('deferred', prepared.message, { code: 451, enhanced: '4.3.0' });
    });
    return delivery.sevenBit;
  }

  /** One MX address: a ready connection, a message slot, the transaction; once more on a new connection when a kept one was found closed. */
  async function atAddress(delivery: Delivery, target: ConnectionTarget): Promise<AtAddress> {
    const { host, address, source } = target;
    let reuse = true;
    for (;;) {
      const connection = await connector.connect(target, { reuse, ...(delivery.signal ? { signal: delivery.signal } : {}) });
      if (!connection.ok) return { verdict: connection.verdict, stop: connection.refused, ...(connection.backOff ? { backOff: connection.backOff } : {}) };
      const { pooled, reused } = connection;
      const slot = limiter ? await limiter.messageSlot(delivery.bucket, delivery.signal) : ({ ok: true } as const);
      if (!slot.ok) {
        pool.give(pooled);
        return { verdict: slot.verdict, stop: true };
      }
      const { session } = pooled;
      const message = session.supports8BitMime === false && delivery.eightBit ? await sevenBitVersion(delivery) : delivery.message;
      if ('outcome' in message) {
        pool.give(pooled);
        return { results: forRecipients(delivery.request.recipients, message, host.name) };
      }
      const stopClosing = session.closeOnAbort(delivery.signal);
      let outcome;
      try {
        options.onTransaction?.({ tls: session.secure, dkimSigned: delivery.signedBy !== undefined, reused });
        outcome = await runTransaction(pooled, pool, message, { mx: host.name, resetTimeoutMs: options.timeouts.rsetMs ?? options.timeouts.greetingMs });
      } finally {
        stopClosing();
      }
      if (outcome.kind === 'lost') {
        delivery.log.info({ event: 'connection_lost', mx: host.name, address }, 'a kept connection was closed by the server; opening a new one');
        reuse = false;
        continue;
      }
      const { results } = outcome;
      const count = (what: string) => results.filter((r) => r.outcome === what).length;
      delivery.log.info({
        event: 'attempt',
        mx: host.name,
        address,
        port: host.port,
        sourceIp: session.localAddress ?? source.localAddress,
        ehloName: source.ehloName,
        reused,
        tls: session.secure,
        tlsPolicy: connection.tls.mode,
        ...session.tlsDetails(),
        dkim: delivery.signedBy,
        stage: 'transaction',
        delivered: count('delivered'),
        deferred: count('deferred'),
        bounced: count('bounced'),
        response: results.find((r) => r.outcome === 'delivered')?.response ?? results[0]?.response,
      });
      const asked = results.find((r) => r.outcome !== 'delivered' && asksToBackOff(r.response));
      const backOff = asked ? { outcome: 'deferred' as const, greylisted: asked.greylisted, responseCode: asked.responseCode, enhancedCode: asked.enhancedCode, response: asked.response } : connection.backOff;
      return { results, ...(backOff ? { backOff } : {}) };
    }
  }

  return {
    async deliver(request: DeliveryRequest): Promise<RecipientResult[]> {
      const log = options.logger.child({ messageId: request.messageId, domain: request.domain });
      const prepared = await prepare(request, false);
      if (!prepared.ok) {
        // Unsigned mail from a domain that publishes DKIM would fail DMARC: keep it queued and say why.
        log.error({ event: 'prepare_failed', code: prepared.code, reason: prepared.message }, 'message not sent');
        return forRecipients(request.recipients, ownVerdict('deferred', prepared.message, { code: 451, enhanced: '4.3.0' }));
      }
      const bucket = limiter?.bucketFor(request.domain, request.hosts.map((h) => h.name)) ?? { key: request.domain, limit: {} };
      // A slow destination holds at most its share of this worker's deliveries (limits.ts).
      const admitted = limiter ? await limiter.deliverySlot(bucket, options.signal) : undefined;
      if (admitted && !admitted.ok) return forRecipients(request.recipients, admitted.verdict);
      try {
        return await deliverWithin(request, prepared, bucket);
      } finally {
        admitted?.release();
      }
    },

    async close() {
      pool.closeIdle();
      await limiter?.close();
    },
  };

  /** The delivery itself, under its overall bound: each MX address in turn until one gives verdicts. */
  async function deliverWithin(request: DeliveryRequest, prepared: { raw: Buffer; signedBy?: Array<{ domain: string; selector: string }> }, bucket: LimitBucket): Promise<RecipientResult[]> {
    const deliveryMs = options.timeouts.deliveryMs;
    const bound = deliveryBound(deliveryMs, options.signal);
    try {
      return await deliverUntil(request, prepared, bucket, bound);
    } finally {
      bound.end();
    }
  }

  async function deliverUntil(
    request: DeliveryRequest,
    prepared: { raw: Buffer; signedBy?: Array<{ domain: string; selector: string }> },
    bucket: LimitBucket,
    bound: DeliveryBound,
  ): Promise<RecipientResult[]> {
    const { signal } = bound;
    const deliveryMs = options.timeouts.deliveryMs;
    const cutOff = () => ownVerdict('deferred', `hedwig: delivery to ${request.domain} took longer than ${deliveryMs} ms (timeouts.deliveryMs); cut off`, { code: 451, enhanced: '4.4.2' });
    const delivery: Delivery = {
      request,
      signal,
      message: { from: request.from, recipients: request.recipients, raw: prepared.raw },
      eightBit: has8bit(prepared.raw),
      bucket,
      signedBy: prepared.signedBy ? prepared.signedBy.map((s) => `${s.domain}/${s.selector}`).join(',') : undefined,
      log: options.logger.child({ messageId: request.messageId, domain: request.domain }),
    };
    const senderDomain = signingDomainOf(request.from, outgoing);
    const candidates = request.hosts.flatMap((host) => host.addresses.map((address) => ({ host, address }))).slice(0, maxAddresses);

    let last: { verdict: Verdict; mx: string } | undefined;
    let backOff: Verdict | undefined;
    let results: RecipientResult[] | undefined;
    for (const { host, address } of candidates) {
      if (signal?.aborted) break;
      const source = sources.pick(senderDomain, address);
      if (!source) {
        last = { verdict: ownVerdict('deferred', `no source address of the family of ${address} in the pool`), mx: host.name };
        continue;
      }
      const ended = await atAddress(delivery, { domain: request.domain, host, address, source, bucket });
      backOff = ended.backOff ?? backOff;
      if (ended.results) {
        results = ended.results;
        break;
      }
      last = { verdict: ended.verdict, mx: host.name };
      if (ended.stop) break;
    }

    // A destination that asked us to slow down, and took nothing from us this time, gets a pause.
    if (backOff !== undefined && limiter && !results?.some((r) => r.outcome === 'delivered')) limiter.backOff(bucket, backOff);
    // Cut off by the bound: a recipient left without a reply says why, not "connection closed".
    if (results && bound.overdue()) return results.map((r) => (r.outcome === 'deferred' && r.responseCode === undefined ? { ...r, ...cutOff() } : r));
    if (results) return results;
    const verdict = options.signal?.aborted ? SHUTDOWN_VERDICT : bound.overdue() ? cutOff() : (last?.verdict ?? NO_ADDRESS);
    return forRecipients(request.recipients, verdict, last?.mx);
  }
}
