import { isAscii } from '../shared/address.ts';
import { errorCode } from '../shared/errors.ts';
import { boundedResponse, classifyError, classifyReply, ownVerdict, parseReply, type RecipientResult, type Verdict } from './classify.ts';
import type { ConnectionPool, PooledConnection } from './pool.ts';
import type { SmtpFailure } from './smtp-session.ts';

/**
 * A delivery step: one SMTP transaction (MAIL FROM, RCPT TO for each recipient, DATA) on
 * a ready session, and a verdict for every recipient from the replies (classify.ts).
 * Afterwards the session goes back to the pool for the next message, after an RSET when
 * the transaction failed, or is closed when it cannot be trusted any more.
 */

export interface TransactionMessage {
  /** '' for the null reverse-path. */
  from: string;
  recipients: string[];
  /** Prepared (headers edited, signed): exactly the bytes to send. */
  raw: Buffer;
}

/**
 * `lost`: a kept connection turned out to be closed by the server before it answered any
 * command of this transaction (the stale idle connection): nothing can have been
 * delivered, so the message may go at once over a new connection. A connection lost later
 * (after MAIL FROM was answered, or after the final dot with no reply) is a deferral with
 * the usual retry: the server may hold the message already, and sending it again at once
 * would be a duplicate (issue 18).
 */
export type TransactionOutcome = { kind: 'results'; results: RecipientResult[] } | { kind: 'lost' };

const NON_ASCII_REFUSED: Verdict = ownVerdict('bounced', 'non-ASCII address and the receiving server does not support SMTPUTF8', { code: 553, enhanced: '5.6.7' });
const NO_REPLY: Verdict = ownVerdict('deferred', 'no reply for this recipient');

/** A server's reply that ended the transaction: it leaves the session usable after RSET (nodemailer's pool does the same). */
function leavesSessionUsable(err: SmtpFailure): boolean {
  return (err.code === 'EENVELOPE' || err.code === 'EMESSAGE') && err.responseCode !== 421;
}

/** No reply at all: the connection closed under us. */
function lostConnection(err: SmtpFailure): boolean {
  const code = errorCode(err);
  return typeof err.response !== 'string' && (code === 'ECONNECTION' || code === 'ESOCKET');
}

export async function runTransaction(
  pooled: PooledConnection,
  pool: ConnectionPool,
  message: TransactionMessage,
  options: { mx: string; resetTimeoutMs: number },
): Promise<TransactionOutcome> {
  const { session } = pooled;
  const { mx } = options;
  const results: RecipientResult[] = [];
  let recipients = message.recipients;
  if (session.supportsSmtpUtf8 === false) {
    const needsUtf8 = (address: string) => !isAscii(address) || !isAscii(message.from);
    for (const recipient of recipients.filter(needsUtf8)) results.push({ recipient, mx, ...NON_ASCII_REFUSED });
    recipients = recipients.filter((r) => !needsUtf8(r));
    if (recipients.length === 0) {
      pool.give(pooled);
      return { kind: 'results', results };
    }
  }
  // RFC 1870: the server said in EHLO how large a message it takes. nodemailer would refuse
  // locally with its own error code; the bounce should carry RFC 3463's 5.3.4 and name what
  // the server announced.
  const limit = session.maxMessageSize;
  if (limit !== undefined && message.raw.length > limit) {
    pool.give(pooled);
    const verdict = ownVerdict('bounced', `message of ${message.raw.length} bytes exceeds the fixed maximum message size of ${mx} (its EHLO reply: 250 SIZE ${limit})`, { code: 552, enhanced: '5.3.4' });
    return { kind: 'results', results: [...results, ...recipients.map((recipient) => ({ recipient, mx, ...verdict }))] };
  }
  const reused = pooled.messages > 0;
  pooled.messages++;
  const repliesBefore = session.repliesReceived;
  try {
    const sent = await session.send({ from: message.from, to: recipients, size: message.raw.length }, message.raw);
    const accepted = new Set(sent.accepted);
    const rejected = new Map(sent.rejectedErrors.map((err) => [err.recipient, err]));
    const reply = parseReply(sent.response, 'DATA');
    const delivered: Verdict = reply ? classifyReply(reply) : { outcome: 'delivered', greylisted: false, response: boundedResponse(sent.response) };
    for (const recipient of recipients) {
      const rcptError = rejected.get(recipient);
      if (rcptError) results.push({ recipient, mx, ...classifyError(rcptError) });
      else if (accepted.has(recipient)) results.push({ recipient, mx, ...delivered });
      else results.push({ recipient, mx, ...NO_REPLY });
    }
    pool.give(pooled);
  } catch (caught) {
    const err = caught as SmtpFailure & { rejectedErrors?: unknown };
    if (reused && lostConnection(err) && session.repliesReceived === repliesBefore) {
      pool.discard(pooled, 'close');
      return { kind: 'lost' };
    }
    // A rejected MAIL FROM is the verdict for everyone, even if pipelined RCPTs got 503s after it.
    const rcptErrors = err.command === 'MAIL FROM' ? new Map<string, SmtpFailure>() : session.recipientFailures();
    for (const refused of Array.isArray(err.rejectedErrors) ? (err.rejectedErrors as SmtpFailure[]) : []) {
      if (typeof refused.recipient === 'string') rcptErrors.set(refused.recipient, refused);
    }
    const shared = classifyError(err);
    for (const recipient of recipients) {
      const own = rcptErrors.get(recipient);
      results.push({ recipient, mx, ...(own ? classifyError(own) : shared) });
    }
    if (leavesSessionUsable(err) && !session.closed && (await session.reset(options.resetTimeoutMs))) pool.give(pooled);
    else pool.discard(pooled, 'close');
  }
  return { kind: 'results', results };
}
