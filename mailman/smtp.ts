import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import type { SMTPServer, SMTPServerDataStream, SMTPServerSession } from 'smtp-server';
import { isValidMailbox } from '../shared/address.ts';
import { HedwigError, errorCode, errorMessage } from '../shared/errors.ts';
import type { Logger } from '../shared/logger.ts';
import type { MailmanConfig } from './config.ts';
import type { MailmanMetrics } from './metrics.ts';
import { createNetworkMatcher } from './networks.ts';
import { MailmanSmtpServer } from './smtp-connection.ts';
import type { AuthUser } from './smtp-auth.ts';
import { SmtpAuthSessions, authUserOf, type Refusal } from './smtp-auth-session.ts';
import type { InlineAttempt } from './forwarder.ts';
import type { ForwardResult, PostofficeClient } from './postoffice-client.ts';
import { newSpoolId, type Spool } from './spool.ts';

/**
 * The SMTP listener. A 250 to the client is a promise never to lose the message, so it
 * is sent only after the post office accepted the message (inline) or after the spool
 * fsynced it. Permanent rejections from the post office go back to the client as 5xx
 * while it is still connected; a failing spool answers 451 so the client keeps it.
 *
 * Reply texts carry their own enhanced status codes (RFC 3463). smtp-server's own
 * mapping stays off (hideENHANCEDSTATUSCODES) because it derives the enhanced code from
 * the basic code alone (554 is always 5.6.0 there), which would both double and
 * contradict ours; smtp-server's own protocol errors then go out without one.
 *
 * Longer than 300 lines on purpose: one SMTP transaction's handlers (connect, MAIL, RCPT,
 * DATA and the reply to each), which read one session's state in order; AUTH lives in
 * smtp-auth-session.ts, the connection set-up in smtp-connection.ts.
 */
export interface SmtpDependencies {
  config: MailmanConfig;
  logger: Logger;
  client: PostofficeClient;
  spool: Spool;
  metrics: MailmanMetrics;
  /** The forwarder, which keeps mailman's one view of whether the post office takes mail. */
  postoffice: InlineGate;
}

/**
 * While the post office is known not to take mail, a transaction spools at once instead of
 * waiting for a timeout of its own; what an inline forward sees updates that view for every session.
 */
export interface InlineGate {
  /** Undefined while the post office is known not to take mail. */
  inlineAttempt(): InlineAttempt | undefined;
  reportInline(result: ForwardResult, attempt: InlineAttempt): void;
  /** A message was spooled. */
  notify(): void;
}

interface SmtpReplyError extends Error {
  responseCode: number;
}

export function smtpError(responseCode: number, text: string): SmtpReplyError {
  return Object.assign(new Error(text), { responseCode });
}

const CONTROL_CHARS = /[\x00-\x1f\x7f]+/g;
const isLoopback = createNetworkMatcher(['127.0.0.0/8', '::1/128']);
/** After a 554 greeting, at most this long to wait for QUIT (or socketTimeoutMs if shorter). */
const REFUSED_WAIT_MS = 10_000;

function asciiOnly(text: string): boolean {
  return /^[\x00-\x7f]*$/.test(text);
}

function replyDetail(text: string): string {
  return text.replace(CONTROL_CHARS, ' ').trim().slice(0, 200);
}

/** At most this many suppressed recipients are named in a reply, and at most this many characters of them. */
const SUPPRESSED_NAMED = 3;
const SUPPRESSED_CHARS = 160;

/**
 * "a@x, b@y" for the recipients the post office left out, short enough for one reply line
 * (RFC 5321 §4.5.3.1.5: 512 octets): the first few, then "and N more".
 */
export function suppressedList(recipients: readonly string[]): string {
  const named: string[] = [];
  let length = 0;
  for (const recipient of recipients) {
    const clean = replyDetail(recipient).slice(0, 80);
    if (named.length >= SUPPRESSED_NAMED || (named.length > 0 && length + clean.length + 2 > SUPPRESSED_CHARS)) break;
    named.push(clean);
    length += clean.length + 2;
  }
  const more = recipients.length - named.length;
  return more > 0 ? `${named.join(', ')} and ${more} more` : named.join(', ');
}

/** Maps a permanent post office rejection to the SMTP reply the client sees. */
export function rejectionReply(rejection: { status: number; error: string; message: string; suppressed?: readonly string[] }): SmtpReplyError {
  // Every recipient is on the suppression list: "bad destination mailbox address" (RFC 3463),
  // as the bounce that put them there said; nothing was queued.
  if (rejection.status === 422 && rejection.error === 'recipients_suppressed') {
    const who = rejection.suppressed && rejection.suppressed.length > 0 ? `: ${suppressedList(rejection.suppressed)}` : '';
    return smtpError(550, `5.1.1 Every recipient is on the suppression list${who}`);
  }
  const detail = replyDetail(rejection.message ? `${rejection.error}: ${rejection.message}` : rejection.error);
  switch (rejection.status) {
    case 401:
    case 403:
      return smtpError(554, `5.7.1 Rejected by post office (${detail})`);
    case 413:
      return smtpError(552, `5.3.4 Message size exceeds fixed maximum message size (post office: ${detail})`);
    default:
      return smtpError(554, `5.6.0 Message rejected by post office (${detail})`);
  }
}

interface Envelope {
  mailfrom: string;
  rcpttos: string[];
}

function envelopeOf(session: SMTPServerSession): Envelope {
  const from = session.envelope.mailFrom;
  return {
    mailfrom: from ? from.address : '',
    rcpttos: session.envelope.rcptTo.map((rcpt) => rcpt.address),
  };
}

function readTlsFile(path: string, key: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw new HedwigError('CONFIG_INVALID', `cannot read ${key} ${path}: ${errorCode(err) ?? errorMessage(err)}`);
  }
}

export function createSmtpServer(deps: SmtpDependencies): SMTPServer {
  const { config, logger, client, spool, metrics } = deps;
  const isAllowed = createNetworkMatcher(config.allowedNetworks);
  const tls = config.tls.cert && config.tls.key ? { cert: readTlsFile(config.tls.cert, 'tls.cert'), key: readTlsFile(config.tls.key, 'tls.key') } : undefined;
  // SMTP AUTH (mailman/smtp-auth-session.ts), only when auth.users are configured.
  const auth = config.auth ? new SmtpAuthSessions({ config: config.auth, tls: tls !== undefined, isAllowed, logger, metrics }) : undefined;
  if (config.auth && !tls && !isLoopback(config.listen.host)) {
    logger.warn({ event: 'auth_without_tls', host: config.listen.host, plaintextNetworks: config.auth.plaintextNetworks, message: 'auth is configured without tls: only clients in auth.plaintextNetworks can authenticate' });
  }

  function reject(reason: string, fields: Record<string, unknown>, reply: SmtpReplyError): SmtpReplyError {
    metrics.rejected.inc({ reason });
    logger.info({ event: 'rejected', reason, ...fields, reply: `${reply.responseCode} ${reply.message}` });
    return reply;
  }
  const refuse = (refusal: Refusal): SmtpReplyError => reject(refusal.reason, refusal.fields, smtpError(refusal.code, refusal.text));

  async function accept(envelope: Envelope, data: Buffer, sessionId: string, user: AuthUser | undefined): Promise<string> {
    const id = newSpoolId();
    // Addresses are logged so `hedwig grep ADDRESS` finds a message before any delivery attempt.
    const summary = { spoolId: id, sessionId, mailfrom: envelope.mailfrom, rcpttos: envelope.rcpttos, rcptCount: envelope.rcpttos.length, size: data.length, ...(user ? { authUser: user.name } : {}) };
    let temporaryReason = 'post office unavailable, retrying with backoff';
    const attempt = deps.postoffice.inlineAttempt();
    if (attempt) {
      const result = await client.forward({ idempotencyKey: id, ...envelope, data });
      metrics.forwardAttempts.inc({ result: result.kind });
      deps.postoffice.reportInline(result, attempt);
      if (result.kind === 'accepted') {
        metrics.accepted.inc({ path: 'inline' });
        logger.info({ event: 'accepted', ...summary, path: 'inline', postofficeId: result.id, ...(result.suppressed ? { suppressed: result.suppressed } : {}) });
        return result.suppressed ? `2.0.0 Ok: queued as ${id}; suppressed: ${suppressedList(result.suppressed)}` : `2.0.0 Ok: queued as ${id}`;
      }
      if (result.kind === 'rejected') {
        throw reject(result.error, { ...summary, status: result.status, error: result.error }, rejectionReply(result));
      }
      temporaryReason = result.reason;
    }
    try {
      await spool.write({ id, ...envelope, receivedAt: Date.now(), data });
    } catch (err) {
      logger.error({ event: 'spool_write_failed', ...summary, code: errorCode(err), error: errorMessage(err) });
      throw reject('spool_write_failed', summary, smtpError(451, '4.3.0 Temporary local problem, please try again later'));
    }
    logger.info({ event: 'spooled', spoolId: id, reason: temporaryReason });
    metrics.accepted.inc({ path: 'spooled' });
    logger.info({ event: 'accepted', ...summary, path: 'spooled' });
    deps.postoffice.notify();
    return `2.0.0 Ok: queued as ${id} (spooled)`;
  }

  // Sessions per client address, so one program cannot hold every one of maxClients.
  const perAddress = new Map<string, number>();
  const counted = new Set<string>();
  const addressOf = (session: SMTPServerSession): string => session.remoteAddress.replace(/^::ffff:(?=\d+\.)/i, '');
  const connectionOf = (session: SMTPServerSession) => [...server.connections].find((c) => c.id === session.id);

  const server: MailmanSmtpServer = new MailmanSmtpServer(
    {
    name: config.hostname,
    banner: 'hedwig mailman',
    size: config.maxMessageBytes,
    // We answer oversized messages ourselves, after draining the stream, with the enhanced code.
    rejectOversized: false,
    hideENHANCEDSTATUSCODES: true,
    // AUTH is optional for clients inside allowedNetworks; onMailFrom asks the others for it.
    // allowInsecureAuth: whether plaintext AUTH is allowed is decided per session (disabledCommands).
    authOptional: true,
    authMethods: ['PLAIN', 'LOGIN'],
    allowInsecureAuth: true,
    disabledCommands: tls ? ['AUTH'] : ['AUTH', 'STARTTLS'],
    ...(tls ?? {}),
    disableReverseLookup: true,
    // smtp-server holds every connection 100 ms before the greeting to catch spam bots that
    // talk first. Only this host's own programs reach mailman (allowedNetworks), so that is
    // pure latency: one msmtp call or PHP mail() waited >= 100 ms. The option comes from our
    // patch (patches/smtp-server+*.patch, applied by patch-package at npm ci; see patches/README.md).
    earlyTalkerDelay: 0,
    maxClients: config.maxClients,
    socketTimeout: config.socketTimeoutMs,
    // Long enough for a transaction in flight to finish its inline forward or spool write.
    closeTimeout: config.postoffice.timeoutMs + 5_000,
    logger: false,

    onConnect(session, callback) {
      const address = addressOf(session);
      if (!isAllowed(session.remoteAddress)) {
        // With AUTH configured, a client outside allowedNetworks may come in to authenticate.
        const refusal = auth ? auth.refuseOutsider(session, address) : undefined;
        if (!auth || refusal) {
          return callback(refusal ? refuse(refusal) : reject('network_not_allowed', { sessionId: session.id, remoteAddress: session.remoteAddress }, smtpError(554, '5.7.1 Client host rejected: access denied')));
        }
      }
      if (auth) session.disabledCommands = auth.disabledCommands(session, false);
      const open = perAddress.get(address) ?? 0;
      if (open >= config.maxClientsPerAddress) {
        return callback(
          reject('too_many_sessions_from_address', { sessionId: session.id, remoteAddress: address, limit: config.maxClientsPerAddress }, smtpError(421, '4.7.0 Too many connections from your address, try again later')),
        );
      }
      perAddress.set(address, open + 1);
      counted.add(session.id);
      callback();
    },

    onSecure(_socket, session, callback) {
      // STARTTLS forgot everything said before it (smtp-server clears session.user); AUTH may start now.
      if (auth) session.disabledCommands = auth.disabledCommands(session, true);
      callback();
    },

    onAuth(credentials, session, callback) {
      if (!auth) return callback(null, { message: '5.7.8 Authentication credentials invalid', responseCode: 535 });
      auth.onAuth(credentials, session, addressOf(session), callback);
    },

    onClose(session) {
      if (!counted.delete(session.id)) return;
      const address = addressOf(session);
      const open = (perAddress.get(address) ?? 1) - 1;
      if (open > 0) perAddress.set(address, open);
      else perAddress.delete(address);
    },

    onMailFrom(address, session, callback) {
      const authRequired = auth?.requireAuth(session, addressOf(session));
      if (authRequired) return callback(refuse(authRequired));
      // RFC 6531 §3.4: a UTF-8 address only in a transaction that declared SMTPUTF8.
      if (!asciiOnly(address.address) && !(address.args && (address.args as Record<string, unknown>).SMTPUTF8 === true)) {
        return callback(reject('utf8_without_smtputf8', { sessionId: session.id }, smtpError(553, '5.6.7 Non-ASCII address without SMTPUTF8')));
      }
      if (address.address !== '' && !isValidMailbox(address.address)) {
        return callback(reject('invalid_sender', { sessionId: session.id }, smtpError(553, '5.1.7 Bad sender address syntax')));
      }
      const notPermitted = auth?.refuseSender(session, address.address);
      if (notPermitted) return callback(refuse(notPermitted));
      callback();
    },

    onRcptTo(address, session, callback) {
      if (!asciiOnly(address.address) && !session.envelope.smtpUtf8) {
        return callback(reject('utf8_without_smtputf8', { sessionId: session.id }, smtpError(553, '5.6.7 Non-ASCII address without SMTPUTF8')));
      }
      if (!isValidMailbox(address.address)) {
        return callback(reject('invalid_recipient', { sessionId: session.id }, smtpError(553, '5.1.3 Bad recipient address syntax')));
      }
      const recipients = session.envelope.rcptTo;
      const repeated = recipients.some((rcpt) => rcpt.address.toLowerCase() === address.address.toLowerCase());
      if (!repeated && recipients.length >= config.maxRecipients) {
        return callback(reject('too_many_recipients', { sessionId: session.id, limit: config.maxRecipients }, smtpError(452, '4.5.3 Too many recipients')));
      }
      callback();
    },

    onData(stream: SMTPServerDataStream, session, callback) {
      // One deadline for the whole message: socketTimeoutMs is an idle timer, which a client
      // that trickles a byte now and then never meets.
      const deadline = setTimeout(() => {
        reject('data_timeout', { sessionId: session.id, limitMs: config.dataTimeoutMs, received: stream.byteLength }, smtpError(421, '4.4.2 Message not complete in time'));
        connectionOf(session)?.send(421, '4.4.2 Message not complete in time, closing connection', false);
      }, config.dataTimeoutMs);
      deadline.unref();
      stream.once('close', () => clearTimeout(deadline));
      const chunks: Buffer[] = [];
      stream.on('data', (chunk: Buffer) => {
        // Keep reading an oversized message to the end (the client only listens for a
        // reply after its final dot) but stop holding its bytes.
        if (stream.sizeExceeded) chunks.length = 0;
        else chunks.push(chunk);
      });
      stream.once('end', () => {
        clearTimeout(deadline);
        if (stream.sizeExceeded) {
          return callback(
            reject('message_too_large', { sessionId: session.id, size: stream.byteLength, limit: config.maxMessageBytes }, smtpError(552, '5.3.4 Message size exceeds fixed maximum message size')),
          );
        }
        accept(envelopeOf(session), Buffer.concat(chunks), session.id, authUserOf(session)).then(
          (reply) => callback(null, reply),
          (err: unknown) => {
            if (err instanceof Error && 'responseCode' in err) return callback(err);
            logger.error({ event: 'internal_error', sessionId: session.id, code: errorCode(err), error: errorMessage(err) });
            callback(smtpError(451, '4.3.0 Temporary local problem, please try again later'));
          },
        );
      });
    },
    },
    { maxMessageBytes: config.maxMessageBytes, refusedWaitMs: Math.min(config.socketTimeoutMs, REFUSED_WAIT_MS), auth: auth !== undefined },
  );

  server.on('error', (err: Error) => {
    // Per-connection socket errors (resets, timeouts) land here too; they end one session, not the server.
    logger.warn({ event: 'smtp_error', code: errorCode(err), error: errorMessage(err) });
  });
  return server;
}

export async function listenSmtp(server: SMTPServer, host: string, port: number): Promise<number> {
  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error): void => reject(new HedwigError('STARTUP_FAILED', `cannot listen on ${host}:${port}: ${errorCode(err) ?? errorMessage(err)}`, { cause: err }));
    server.server.once('error', onError);
    server.listen(port, host, () => {
      server.server.off('error', onError);
      resolve();
    });
  });
  return (server.server.address() as AddressInfo).port;
}

export function closeSmtp(server: SMTPServer): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}
