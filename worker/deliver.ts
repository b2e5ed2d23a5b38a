import SMTPConnection from 'nodemailer/lib/smtp-connection';
import type { Logger } from '../shared/logger.ts';
import { isAscii } from '../shared/address.ts';
import { errorCode } from '../shared/errors.ts';
import { boundedResponse, classifyError, classifyReply, parseReply, type Verdict } from './classify.ts';
import { asksToBackOff, type Destination, type Limiter } from './limits.ts';
import type { MxHost } from './mx.ts';
import { prepareMessage, signingDomainOf, type OutgoingSettings } from './outgoing.ts';
import { createConnectionPool, type PooledConnection, type PoolSettings } from './pool.ts';
import { createSourceSelector, type Source, type SourceSettings } from './source-ip.ts';
import { BrokenTlsHosts, connectionTlsOptions, isTlsFailure, tlsDetails, tlsModeFor, tlsPolicyVerdict, type TlsMode, type TlsPolicySettings } from './tls-policy.ts';

/**
 * One SMTP transaction per destination domain, carrying all of its recipients.
 *
 * This drives nodemailer's SMTPConnection (the layer under `createTransport`) because the
 * worker must know *where* a failure happened: before the transaction (connection refused,
 * timeout, 4xx/5xx greeting, TLS) the next MX address is tried in the same attempt; once
 * MAIL FROM has been sent, the replies decide the recipients' outcomes.
 *
 * Around that: the message is prepared (header edits, DKIM) once per delivery; each
 * connection gets a source address and EHLO name (source-ip.ts), the destination's TLS
 * policy (tls-policy.ts) and a connection slot (limits.ts), and is kept for the next
 * message to the same server from the same source (pool.ts); each transaction takes a
 * message slot.
 */

export interface RecipientResult extends Verdict {
  recipient: string;
  /** The MX host that gave the verdict, when one did. */
  mx?: string;
}

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
  /** What may be signed for it (OutgoingMessage.notice, .senderDomains). */
  notice?: boolean;
  senderDomains?: readonly string[];
}

export interface DelivererOptions {
  /** EHLO name when no source address pool is configured. */
  ehloName: string;
  timeouts: { connectMs: number; greetingMs: number; socketMs: number };
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

/**
 * nodemailer keeps two facts we need on the connection without exporting them: the EHLO
 * extensions (SMTPUTF8) and the per-recipient RCPT replies when the transaction fails at DATA.
 * Read them defensively; without them we fall back to coarser but safe behaviour.
 */
interface ConnectionInternals {
  _supportedExtensions?: unknown;
  _envelope?: { rejectedErrors?: unknown };
  _socket?: unknown;
  _destroyed?: unknown;
}

type RecipientError = { recipient?: unknown };

function rcptErrorsOf(connection: SMTPConnection): Map<string, unknown> {
  const errors = (connection as unknown as ConnectionInternals)._envelope?.rejectedErrors;
  const byRecipient = new Map<string, unknown>();
  if (Array.isArray(errors)) {
    for (const err of errors as RecipientError[]) if (typeof err?.recipient === 'string') byRecipient.set(err.recipient, err);
  }
  return byRecipient;
}

function supportsSmtpUtf8(connection: SMTPConnection): boolean | undefined {
  const extensions = (connection as unknown as ConnectionInternals)._supportedExtensions;
  return Array.isArray(extensions) ? extensions.includes('SMTPUTF8') : undefined;
}

/** The local address of the connection's socket (the source IP the receiver sees), read defensively like the internals above. */
function localAddressOf(connection: SMTPConnection): string | undefined {
  const socket = (connection as unknown as { _socket?: { localAddress?: unknown } })._socket;
  return typeof socket?.localAddress === 'string' ? socket.localAddress : undefined;
}

function socketOf(connection: SMTPConnection): unknown {
  return (connection as unknown as ConnectionInternals)._socket;
}

const NON_ASCII_REFUSED: Verdict = {
  outcome: 'bounced',
  greylisted: false,
  responseCode: 553,
  enhancedCode: '5.6.7',
  response: '553 5.6.7 non-ASCII address and the receiving server does not support SMTPUTF8',
};

const DEFAULT_TLS: TlsPolicySettings = { policy: 'may', domains: {}, brokenHostMemoryMs: 3_600_000 };
const NO_REUSE: PoolSettings = { maxMessagesPerConnection: 1, idleTimeoutMs: 0 };

/** A server's reply that ended the transaction: it leaves the session usable after RSET (nodemailer's pool does the same). */
function leavesSessionUsable(err: unknown): boolean {
  const e = err as { code?: unknown; responseCode?: unknown };
  return (e.code === 'EENVELOPE' || e.code === 'EMESSAGE') && e.responseCode !== 421;
}

/** No reply at all: a kept connection the server had already closed. Safe to try again on a new one. */
function lostConnection(err: unknown): boolean {
  const e = err as { response?: unknown };
  const code = errorCode(err);
  return typeof e.response !== 'string' && (code === 'ECONNECTION' || code === 'ESOCKET');
}

type Transaction = { kind: 'results'; results: RecipientResult[] } | { kind: 'lost' };

/** How one MX address ended: results, a connection-stage failure (try the next), or a limit refusal (stop). */
type AddressOutcome =
  | { kind: 'results'; results: RecipientResult[] }
  | { kind: 'failed'; verdict: Verdict }
  | { kind: 'refused'; verdict: Verdict };

export function createDeliverer(options: DelivererOptions): Deliverer {
  const maxAddresses = options.maxAddresses ?? 10;
  const now = options.now ?? Date.now;
  const outgoing: OutgoingSettings = options.outgoing ?? { hostname: options.ehloName, dkim: new Map(), received: false };
  const tls = options.tls ?? DEFAULT_TLS;
  const brokenTls = new BrokenTlsHosts(tls.brokenHostMemoryMs, now);
  const sources = createSourceSelector(options.source ?? { addresses: [], selection: 'round-robin', senderDomains: {} }, options.ehloName);
  const pool = createConnectionPool(options.connections ?? NO_REUSE);
  const limiter = options.limiter;
  options.signal?.addEventListener('abort', () => pool.closeIdle(), { once: true });

  function open(host: MxHost, address: string, source: Source, mode: TlsMode, plaintext: boolean): SMTPConnection {
    options.onConnection?.();
    const connection = new SMTPConnection({
      host: address,
      port: host.port,
      name: source.ehloName,
      ...(source.localAddress ? { localAddress: source.localAddress } : {}),
      ...connectionTlsOptions(mode, host.name, tls, plaintext),
      connectionTimeout: options.timeouts.connectMs,
      greetingTimeout: options.timeouts.greetingMs,
      socketTimeout: options.timeouts.socketMs,
      logger: false,
    });
    // Errors also reach the pending connect/send callbacks; this keeps an emitted 'error' from crashing the process.
    connection.on('error', () => {});
    return connection;
  }

  /**
   * Resolves once EHLO (and STARTTLS when offered) is done; rejects with the failure
   * otherwise. A failure while the TLS handshake runs surfaces from nodemailer as a plain
   * socket error (ESOCKET): it is marked so the TLS policy sees it for what it is.
   */
  function handshake(connection: SMTPConnection): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const fail = (err: unknown) => reject(connection.upgrading && err && typeof err === 'object' ? Object.assign(err, { tlsHandshake: true }) : err);
      const onEnd = () => fail(Object.assign(new Error('Connection closed during the handshake'), { code: 'ECONNECTION' }));
      connection.once('error', fail);
      connection.once('end', onEnd);
      connection.connect((err) => {
        connection.off('error', fail);
        connection.off('end', onEnd);
        if (err) fail(err);
        else resolve();
      });
    });
  }

  function send(connection: SMTPConnection, request: DeliveryRequest, recipients: string[]) {
    return new Promise<SMTPConnection.SentMessageInfo>((resolve, reject) => {
      const onEnd = () => reject(Object.assign(new Error('Connection closed during the transaction'), { code: 'ECONNECTION', command: 'CONN' }));
      connection.once('end', onEnd);
      connection.send({ from: request.from, to: recipients, size: request.raw.length, use8BitMime: true }, request.raw, (err, info) => {
        connection.off('end', onEnd);
        if (err) reject(err);
        else resolve(info);
      });
    });
  }

  /** RSET before reuse; false (close it) when the server does not answer in time or the connection ends first. */
  function reset(connection: SMTPConnection): Promise<boolean> {
    return new Promise((resolve) => {
      const done = (ok: boolean) => {
        clearTimeout(timer);
        connection.off('end', onEnd);
        resolve(ok);
      };
      const onEnd = () => done(false);
      const timer = setTimeout(() => done(false), options.timeouts.greetingMs);
      connection.once('end', onEnd);
      try {
        connection.reset((err) => done(!err));
      } catch {
        done(false);
      }
    });
  }

  /** Verdicts for every recipient once a transaction was started on `pooled`; hands the connection back to the pool or closes it. */
  async function transaction(pooled: PooledConnection, host: MxHost, request: DeliveryRequest): Promise<Transaction> {
    const { connection } = pooled;
    const results: RecipientResult[] = [];
    let recipients = request.recipients;
    if (supportsSmtpUtf8(connection) === false) {
      const needsUtf8 = (address: string) => !isAscii(address) || !isAscii(request.from);
      for (const recipient of recipients.filter(needsUtf8)) results.push({ recipient, mx: host.name, ...NON_ASCII_REFUSED });
      recipients = recipients.filter((r) => !needsUtf8(r));
      if (recipients.length === 0) {
        pool.give(pooled);
        return { kind: 'results', results };
      }
    }
    const reused = pooled.messages > 0;
    pooled.messages++;
    try {
      const info = await send(connection, request, recipients);
      const accepted = new Set(info.accepted);
      const rejected = new Map((info.rejectedErrors ?? []).map((err) => [err.recipient, err]));
      const reply = parseReply(info.response, 'DATA');
      const delivered: Verdict = reply ? classifyReply(reply) : { outcome: 'delivered', greylisted: false, response: boundedResponse(info.response) };
      for (const recipient of recipients) {
        const rcptError = rejected.get(recipient);
        if (rcptError) results.push({ recipient, mx: host.name, ...classifyError(rcptError) });
        else if (accepted.has(recipient)) results.push({ recipient, mx: host.name, ...delivered });
        else results.push({ recipient, mx: host.name, outcome: 'deferred', greylisted: false, response: 'no reply for this recipient' });
      }
      pool.give(pooled);
    } catch (err) {
      if (reused && lostConnection(err)) {
        pool.discard(pooled, 'close');
        return { kind: 'lost' };
      }
      const e = err as { command?: unknown; rejectedErrors?: unknown };
      // A rejected MAIL FROM is the verdict for everyone, even if pipelined RCPTs got 503s after it.
      const rcptErrors = e.command === 'MAIL FROM' ? new Map<string, unknown>() : rcptErrorsOf(connection);
      for (const rejected of Array.isArray(e.rejectedErrors) ? (e.rejectedErrors as RecipientError[]) : []) {
        if (typeof rejected.recipient === 'string') rcptErrors.set(rejected.recipient, rejected);
      }
      const shared = classifyError(err);
      for (const recipient of recipients) {
        const own = rcptErrors.get(recipient);
        results.push({ recipient, mx: host.name, ...(own ? classifyError(own) : shared) });
      }
      if (leavesSessionUsable(err) && !(connection as unknown as ConnectionInternals)._destroyed && (await reset(connection))) pool.give(pooled);
      else pool.discard(pooled, 'close');
    }
    return { kind: 'results', results };
  }

  function poolKey(address: string, port: number, source: Source, mode: TlsMode, plaintext: boolean, mxName: string): string {
    // Under verify the certificate is checked against the MX name, so the name is part of what must match.
    return [address, port, source.localAddress ?? '', source.ehloName, mode, plaintext ? 'plain' : 'tls', mode === 'verify' ? mxName : ''].join('|');
  }

  async function connectionSlot(destination: Destination): Promise<{ ok: true; release: () => void } | { ok: false; verdict: Verdict }> {
    if (!limiter) return { ok: true, release: () => {} };
    return limiter.connectionSlot(destination, options.signal, () => pool.closeIdle(destination.key));
  }

  return {
    async deliver(request: DeliveryRequest): Promise<RecipientResult[]> {
      const log = options.logger.child({ messageId: request.messageId, domain: request.domain });
      const prepared = await prepareMessage(
        { messageId: request.messageId, from: request.from, raw: request.raw, receivedAt: request.receivedAt ?? now(), submittedBy: request.submittedBy, now: now(), notice: request.notice, senderDomains: request.senderDomains },
        outgoing,
      );
      if (!prepared.ok) {
        // Unsigned mail from a domain that publishes DKIM would fail DMARC: keep it queued and say why.
        log.error({ event: 'prepare_failed', code: prepared.code, reason: prepared.message }, 'message not sent');
        return request.recipients.map((recipient) => ({ recipient, outcome: 'deferred', greylisted: false, responseCode: 451, enhancedCode: '4.3.0', response: `451 4.3.0 ${prepared.message}` }));
      }
      const message = { ...request, raw: prepared.raw };
      const signedBy = prepared.signedBy ? prepared.signedBy.map((s) => `${s.domain}/${s.selector}`).join(',') : undefined;
      const mode = tlsModeFor(tls, request.domain);
      const senderDomain = signingDomainOf(request.from, outgoing);
      const destination: Destination = limiter?.destinationFor(request.domain, request.hosts.map((h) => h.name)) ?? { key: request.domain, limit: {} };
      const candidates = request.hosts.flatMap((host) => host.addresses.map((address) => ({ host, address }))).slice(0, maxAddresses);
      let last: { verdict: Verdict; mx: string } | undefined;
      let askedToBackOff: Verdict | undefined;

      /** One MX address: reuse or open a connection (falling back to plaintext under `may`), then the transaction. */
      async function atAddress(host: MxHost, address: string, source: Source): Promise<AddressOutcome> {
        let plaintext = mode === 'may' && brokenTls.has(address);
        let reuse = true;
        for (;;) {
          if (options.signal?.aborted) return { kind: 'failed', verdict: { outcome: 'deferred', greylisted: false, response: 'delivery interrupted by shutdown' } };
          const key = poolKey(address, host.port, source, mode, plaintext, host.name);
          let pooled = reuse ? pool.take(key) : undefined;
          const reused = pooled !== undefined;
          if (!pooled) {
            const slot = await connectionSlot(destination);
            if (!slot.ok) return { kind: 'refused', verdict: slot.verdict };
            const connection = open(host, address, source, mode, plaintext);
            pooled = pool.track(connection, key, destination.key, slot.release);
            const abort = () => connection.close();
            options.signal?.addEventListener('abort', abort, { once: true });
            try {
              await handshake(connection);
            } catch (err) {
              pool.discard(pooled, 'close');
              const verdict = mode === 'encrypt' || mode === 'verify' ? (isTlsFailure(err) ? tlsPolicyVerdict(mode, request.domain, host.name, err) : classifyError(err)) : classifyError(err);
              log.info({ event: 'attempt', mx: host.name, address, port: host.port, sourceIp: source.localAddress, tlsPolicy: mode, stage: 'connect', outcome: verdict.outcome, response: verdict.response });
              if (asksToBackOff(verdict.response)) askedToBackOff = verdict;
              if (mode === 'may' && !plaintext && isTlsFailure(err)) {
                // Remember the broken TLS and retry this address in plaintext right away.
                brokenTls.remember(address);
                plaintext = true;
                continue;
              }
              return { kind: 'failed', verdict };
            } finally {
              options.signal?.removeEventListener('abort', abort);
            }
          }
          const messageSlot = limiter ? await limiter.messageSlot(destination, options.signal) : ({ ok: true } as const);
          if (!messageSlot.ok) {
            pool.give(pooled);
            return { kind: 'refused', verdict: messageSlot.verdict };
          }
          const { connection } = pooled;
          const abort = () => connection.close();
          options.signal?.addEventListener('abort', abort, { once: true });
          let outcome: Transaction;
          try {
            options.onTransaction?.({ tls: connection.secure, dkimSigned: signedBy !== undefined, reused });
            outcome = await transaction(pooled, host, message);
          } finally {
            options.signal?.removeEventListener('abort', abort);
          }
          if (outcome.kind === 'lost') {
            log.info({ event: 'connection_lost', mx: host.name, address }, 'a kept connection was closed by the server; opening a new one');
            reuse = false;
            continue;
          }
          const results = outcome.results;
          const count = (what: string) => results.filter((r) => r.outcome === what).length;
          log.info({
            event: 'attempt',
            mx: host.name,
            address,
            port: host.port,
            sourceIp: localAddressOf(connection) ?? source.localAddress,
            ehloName: source.ehloName,
            reused,
            tls: connection.secure,
            tlsPolicy: mode,
            ...tlsDetails(connection.secure ? socketOf(connection) : undefined),
            dkim: signedBy,
            stage: 'transaction',
            delivered: count('delivered'),
            deferred: count('deferred'),
            bounced: count('bounced'),
            response: results.find((r) => r.outcome === 'delivered')?.response ?? results[0]?.response,
          });
          const backOff = results.find((r) => r.outcome !== 'delivered' && asksToBackOff(r.response));
          if (backOff) {
            const { outcome: _outcome, greylisted, responseCode, enhancedCode, response } = backOff;
            askedToBackOff = { outcome: 'deferred', greylisted, responseCode, enhancedCode, response };
          }
          return { kind: 'results', results };
        }
      }

      let results: RecipientResult[] | undefined;
      for (const { host, address } of candidates) {
        if (options.signal?.aborted) break;
        const source = sources.pick(senderDomain, address);
        if (!source) {
          last = { verdict: { outcome: 'deferred', greylisted: false, response: `no source address of the family of ${address} in the pool` }, mx: host.name };
          continue;
        }
        const outcome = await atAddress(host, address, source);
        if (outcome.kind === 'results') {
          results = outcome.results;
          break;
        }
        last = { verdict: outcome.verdict, mx: host.name };
        if (outcome.kind === 'refused') break;
      }

      // A destination that asked us to slow down, and took nothing from us this time, gets a pause.
      if (askedToBackOff !== undefined && limiter && !results?.some((r) => r.outcome === 'delivered')) limiter.backOff(destination, askedToBackOff);
      if (results) return results;
      const verdict: Verdict = options.signal?.aborted
        ? { outcome: 'deferred', greylisted: false, response: 'delivery interrupted by shutdown' }
        : (last?.verdict ?? { outcome: 'deferred', greylisted: false, response: 'no MX address to try' });
      return request.recipients.map((recipient) => ({ recipient, ...(last ? { mx: last.mx } : {}), ...verdict }));
    },

    async close() {
      pool.closeIdle();
      await limiter?.close();
    },
  };
}
