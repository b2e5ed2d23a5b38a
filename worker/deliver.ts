import { isIP } from 'node:net';
import SMTPConnection from 'nodemailer/lib/smtp-connection';
import type { Logger } from '../shared/logger.ts';
import { isAscii } from '../shared/address.ts';
import { classifyError, classifyReply, parseReply, type Verdict } from './classify.ts';
import type { MxHost } from './mx.ts';
import { prepareMessage, type OutgoingSettings } from './outgoing.ts';

/**
 * One SMTP transaction per destination domain, carrying all of its recipients.
 *
 * This drives nodemailer's SMTPConnection (the layer under `createTransport`) because the
 * worker must know *where* a failure happened: before the transaction (connection refused,
 * timeout, 4xx/5xx greeting, TLS) the next MX address is tried in the same attempt; once
 * MAIL FROM has been sent, the replies decide the recipients' outcomes.
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
}

export interface DelivererOptions {
  ehloName: string;
  timeouts: { connectMs: number; greetingMs: number; socketMs: number };
  logger: Logger;
  /** Called for every TCP connection attempt (metrics). */
  onConnection?: () => void;
  /** Called for every SMTP transaction started (metrics: TLS use, DKIM). */
  onTransaction?: (info: { tls: boolean; dkimSigned: boolean }) => void;
  /** Aborting closes every open SMTP connection (shutdown). */
  signal?: AbortSignal;
  /** Addresses tried per delivery across all MX hosts (Postfix's smtp_mx_address_limit is 5). */
  maxAddresses?: number;
  /** How long an address whose TLS handshake failed is spoken to in plaintext. */
  tlsFailureMemoryMs?: number;
  now?: () => number;
  /** Header edits and DKIM keys; default: header edits only, no signing, no Received field. */
  outgoing?: OutgoingSettings;
}

export interface Deliverer {
  deliver(request: DeliveryRequest): Promise<RecipientResult[]>;
}

/**
 * nodemailer keeps two facts we need on the connection without exporting them: the EHLO
 * extensions (SMTPUTF8) and the per-recipient RCPT replies when the transaction fails at DATA.
 * Read them defensively; without them we fall back to coarser but safe behaviour.
 */
interface ConnectionInternals {
  _supportedExtensions?: unknown;
  _envelope?: { rejectedErrors?: unknown };
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

function isTlsFailure(err: unknown): boolean {
  const e = err as { code?: unknown; command?: unknown; timeoutType?: unknown };
  return e?.code === 'ETLS' || e?.command === 'STARTTLS' || e?.timeoutType === 'UPGRADE_TIMEOUT';
}

const NON_ASCII_REFUSED: Verdict = {
  outcome: 'bounced',
  greylisted: false,
  responseCode: 553,
  enhancedCode: '5.6.7',
  response: '553 5.6.7 non-ASCII address and the receiving server does not support SMTPUTF8',
};

export function createDeliverer(options: DelivererOptions): Deliverer {
  const maxAddresses = options.maxAddresses ?? 10;
  const tlsFailureMemoryMs = options.tlsFailureMemoryMs ?? 3_600_000;
  const now = options.now ?? Date.now;
  const outgoing: OutgoingSettings = options.outgoing ?? { hostname: options.ehloName, dkim: new Map(), received: false };
  /** address -> until when STARTTLS is skipped for it. */
  const tlsBroken = new Map<string, number>();

  function skipTls(address: string): boolean {
    const until = tlsBroken.get(address);
    if (until === undefined) return false;
    if (until > now()) return true;
    tlsBroken.delete(address);
    return false;
  }

  function open(host: MxHost, address: string, ignoreTLS: boolean): SMTPConnection {
    options.onConnection?.();
    const connection = new SMTPConnection({
      host: address,
      port: host.port,
      name: options.ehloName,
      // Opportunistic TLS: an unverifiable certificate still beats plaintext (RFC 7435).
      tls: { rejectUnauthorized: false, ...(isIP(host.name) === 0 ? { servername: host.name } : {}) },
      opportunisticTLS: true,
      ignoreTLS,
      connectionTimeout: options.timeouts.connectMs,
      greetingTimeout: options.timeouts.greetingMs,
      socketTimeout: options.timeouts.socketMs,
      logger: false,
    });
    // Errors also reach the pending connect/send callbacks; this keeps an emitted 'error' from crashing the process.
    connection.on('error', () => {});
    return connection;
  }

  /** Resolves once EHLO (and STARTTLS when offered) is done; rejects with the failure otherwise. */
  function handshake(connection: SMTPConnection): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const onEnd = () => reject(Object.assign(new Error('Connection closed during the handshake'), { code: 'ECONNECTION' }));
      connection.once('error', reject);
      connection.once('end', onEnd);
      connection.connect((err) => {
        connection.off('error', reject);
        connection.off('end', onEnd);
        if (err) reject(err);
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

  /** Verdicts for every recipient once a transaction was started on `connection`. */
  async function transaction(connection: SMTPConnection, host: MxHost, request: DeliveryRequest): Promise<RecipientResult[]> {
    const results: RecipientResult[] = [];
    let recipients = request.recipients;
    if (supportsSmtpUtf8(connection) === false) {
      const needsUtf8 = (address: string) => !isAscii(address) || !isAscii(request.from);
      for (const recipient of recipients.filter(needsUtf8)) results.push({ recipient, mx: host.name, ...NON_ASCII_REFUSED });
      recipients = recipients.filter((r) => !needsUtf8(r));
      if (recipients.length === 0) return results;
    }
    try {
      const info = await send(connection, request, recipients);
      const accepted = new Set(info.accepted);
      const rejected = new Map((info.rejectedErrors ?? []).map((err) => [err.recipient, err]));
      const reply = parseReply(info.response, 'DATA');
      const delivered: Verdict = reply ? classifyReply(reply) : { outcome: 'delivered', greylisted: false, response: info.response };
      for (const recipient of recipients) {
        const rcptError = rejected.get(recipient);
        if (rcptError) results.push({ recipient, mx: host.name, ...classifyError(rcptError) });
        else if (accepted.has(recipient)) results.push({ recipient, mx: host.name, ...delivered });
        else results.push({ recipient, mx: host.name, outcome: 'deferred', greylisted: false, response: 'no reply for this recipient' });
      }
      connection.quit();
    } catch (err) {
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
      connection.close();
    }
    return results;
  }

  return {
    async deliver(request: DeliveryRequest): Promise<RecipientResult[]> {
      const log = options.logger.child({ messageId: request.messageId, domain: request.domain });
      const prepared = await prepareMessage(
        { messageId: request.messageId, from: request.from, raw: request.raw, receivedAt: request.receivedAt ?? now(), submittedBy: request.submittedBy, now: now() },
        outgoing,
      );
      if (!prepared.ok) {
        // Unsigned mail from a domain that publishes DKIM would fail DMARC: keep it queued and say why.
        log.error({ event: 'prepare_failed', code: prepared.code, reason: prepared.message }, 'message not sent');
        return request.recipients.map((recipient) => ({ recipient, outcome: 'deferred', greylisted: false, responseCode: 451, enhancedCode: '4.3.0', response: `451 4.3.0 ${prepared.message}` }));
      }
      const message = { ...request, raw: prepared.raw };
      const signedBy = prepared.signedBy ? `${prepared.signedBy.domain}/${prepared.signedBy.selector}` : undefined;
      const candidates = request.hosts.flatMap((host) => host.addresses.map((address) => ({ host, address }))).slice(0, maxAddresses);
      let last: { verdict: Verdict; mx: string } | undefined;

      for (const { host, address } of candidates) {
        let ignoreTLS = skipTls(address);
        for (;;) {
          if (options.signal?.aborted) break;
          const connection = open(host, address, ignoreTLS);
          const abort = () => connection.close();
          options.signal?.addEventListener('abort', abort, { once: true });
          try {
            await handshake(connection);
            const sourceIp = localAddressOf(connection);
            options.onTransaction?.({ tls: connection.secure, dkimSigned: signedBy !== undefined });
            const results = await transaction(connection, host, message);
            const count = (outcome: string) => results.filter((r) => r.outcome === outcome).length;
            log.info({
              event: 'attempt',
              mx: host.name,
              address,
              port: host.port,
              sourceIp,
              tls: connection.secure,
              dkim: signedBy,
              stage: 'transaction',
              delivered: count('delivered'),
              deferred: count('deferred'),
              bounced: count('bounced'),
              response: results.find((r) => r.outcome === 'delivered')?.response ?? results[0]?.response,
            });
            return results;
          } catch (err) {
            connection.close();
            const verdict = classifyError(err);
            log.info({ event: 'attempt', mx: host.name, address, port: host.port, stage: 'connect', outcome: verdict.outcome, response: verdict.response });
            last = { verdict, mx: host.name };
            if (isTlsFailure(err) && !ignoreTLS) {
              // Remember the broken TLS and retry this address in plaintext right away.
              tlsBroken.set(address, now() + tlsFailureMemoryMs);
              ignoreTLS = true;
              continue;
            }
          } finally {
            options.signal?.removeEventListener('abort', abort);
          }
          break;
        }
        if (options.signal?.aborted) break;
      }

      const verdict: Verdict = options.signal?.aborted
        ? { outcome: 'deferred', greylisted: false, response: 'delivery interrupted by shutdown' }
        : (last?.verdict ?? { outcome: 'deferred', greylisted: false, response: 'no MX address to try' });
      return request.recipients.map((recipient) => ({ recipient, ...(last ? { mx: last.mx } : {}), ...verdict }));
    },
  };
}
