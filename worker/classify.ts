import { errorCode, errorMessage } from '../shared/errors.ts';
import { MAX_RESPONSE_CHARS } from '../shared/job.ts';

/**
 * What an SMTP reply or a client error means for one recipient. The rules are one
 * ordered table, first match wins, so the policy can be read (and reviewed) in one place.
 *
 * This module owns the one outcome shape of the delivery path: a `Verdict` says how one
 * attempt ended for a recipient (also "cannot go now": a limit, a TLS policy, DNS), a
 * `RecipientResult` is a verdict for a named recipient. Every step returns these.
 */
export type AttemptOutcome = 'delivered' | 'deferred' | 'bounced';

export interface Verdict {
  outcome: AttemptOutcome;
  /** Greylisting asks for an early retry rather than the long schedule. */
  greylisted: boolean;
  responseCode?: number;
  enhancedCode?: string;
  /** The server's reply line(s), or the client error when there was no reply. */
  response: string;
}

export interface RecipientResult extends Verdict {
  recipient: string;
  /** The MX host that gave the verdict, when one did. */
  mx?: string;
}

/**
 * A verdict of hedwig's own (no server reply to quote): with `reply` it reads like one,
 * e.g. `451 4.4.5 ...`, so reports and logs carry a code either way.
 */
export function ownVerdict(outcome: AttemptOutcome, text: string, reply?: { code: number; enhanced: string }): Verdict {
  if (!reply) return { outcome, greylisted: false, response: text };
  return { outcome, greylisted: false, responseCode: reply.code, enhancedCode: reply.enhanced, response: `${reply.code} ${reply.enhanced} ${text}` };
}

/** The same verdict for each recipient. */
export function forRecipients(recipients: readonly string[], verdict: Verdict, mx?: string): RecipientResult[] {
  return recipients.map((recipient) => ({ recipient, ...(mx !== undefined ? { mx } : {}), ...verdict }));
}

/** An SMTP reply as the rules see it; `stage` is the command it answered (nodemailer's `command`). */
export interface Reply {
  code: number;
  enhanced: string | undefined;
  text: string;
  stage: string | undefined;
}

interface Rule {
  when: string;
  match: (reply: Reply) => boolean;
  outcome: AttemptOutcome;
  greylisted?: boolean;
}

const GREYLIST_WORD = /gr[ae]y[ -]?list/i;

const RULES: Rule[] = [
  { when: '2xx', match: (r) => r.code >= 200 && r.code < 300, outcome: 'delivered' },
  {
    when: 'greylisting: 450/451 with 4.7.x or 4.2.0, or any 4xx saying "greylist"',
    match: (r) =>
      (r.code >= 400 && r.code < 500 && GREYLIST_WORD.test(r.text)) ||
      ((r.code === 450 || r.code === 451) && (r.enhanced?.startsWith('4.7.') === true || r.enhanced === '4.2.0')),
    outcome: 'deferred',
    greylisted: true,
  },
  // RFC 5321 §4.5.3.1.10: clients should treat 552 to RCPT TO as temporary (too many recipients).
  { when: '552 to RCPT TO', match: (r) => r.code === 552 && r.stage === 'RCPT TO', outcome: 'deferred' },
  // Bad sequence of commands follows an earlier failure; it says nothing about the recipient.
  { when: '503', match: (r) => r.code === 503, outcome: 'deferred' },
  { when: '4xx: transient', match: (r) => r.code >= 400 && r.code < 500, outcome: 'deferred' },
  { when: '5xx: permanent', match: (r) => r.code >= 500 && r.code < 600, outcome: 'bounced' },
  { when: 'anything else (a 1xx/3xx where a verdict was due): protocol confusion', match: () => true, outcome: 'deferred' },
];

/** Client errors that carry no SMTP reply. */
const ERRORS_WITHOUT_REPLY: Record<string, AttemptOutcome> = {
  ECONNECTION: 'deferred', // refused, reset, closed unexpectedly
  ETIMEDOUT: 'deferred',
  ESOCKET: 'deferred',
  EDNS: 'deferred',
  ETLS: 'deferred',
  EPROTOCOL: 'deferred', // garbled reply
  ESTREAM: 'deferred',
  EENVELOPE: 'bounced', // the client refused the envelope itself (e.g. an address it cannot send)
  EMESSAGE: 'bounced', // the client refused the message (e.g. larger than the server's SIZE)
};

/**
 * The client refusing to send (no server reply to quote): RFC 3463 codes, and the reason
 * without nodemailer's internal code name, so a bounce reads like a mail system's.
 */
const CLIENT_REFUSALS: Array<{ code: string; match: RegExp; enhanced: string }> = [
  { code: 'EMESSAGE', match: /size larger than allowed/i, enhanced: '5.3.4' }, // message too big for the system
  { code: 'EMESSAGE', match: /./, enhanced: '5.6.0' }, // other media error
  { code: 'EENVELOPE', match: /sender/i, enhanced: '5.1.7' }, // bad sender mailbox address syntax
  { code: 'EENVELOPE', match: /./, enhanced: '5.1.3' }, // bad destination mailbox address syntax
];

const ENHANCED_CODE = /^\d{3}[ -]([245]\.\d{1,3}\.\d{1,3})(?=\s|$)/;

/**
 * A reply text as the worker keeps it: control characters (other than the line breaks of a
 * multi-line reply) and lone surrogates replaced, cut at MAX_RESPONSE_CHARS. A server may
 * answer with up to a megabyte (nodemailer's limit); a failed record carries one reply per
 * recipient and must still fit in a beanstalkd job (shared/job.ts jobSizeFor).
 */
export function boundedResponse(text: string): string {
  const clean = text.replace(/[\x00-\x09\x0b-\x1f\x7f]/g, ' ').toWellFormed();
  return clean.length <= MAX_RESPONSE_CHARS ? clean : `${clean.slice(0, MAX_RESPONSE_CHARS - 15).toWellFormed()} [… truncated]`;
}

export function parseReply(response: string, stage?: string): Reply | undefined {
  const match = /^(\d{3})(?=[ -]|$)/.exec(response);
  if (!match) return undefined;
  return { code: Number(match[1]), enhanced: ENHANCED_CODE.exec(response)?.[1], text: boundedResponse(response), stage };
}

export function classifyReply(reply: Reply): Verdict {
  const rule = RULES.find((r) => r.match(reply))!;
  return {
    outcome: rule.outcome,
    greylisted: rule.greylisted ?? false,
    responseCode: reply.code,
    ...(reply.enhanced ? { enhancedCode: reply.enhanced } : {}),
    response: reply.text,
  };
}

/** A nodemailer error (or any thrown value) as a verdict: its SMTP reply when it has one. */
export function classifyError(err: unknown): Verdict {
  const e = (err ?? {}) as { response?: unknown; command?: unknown };
  const response = typeof e.response === 'string' ? e.response : undefined;
  const stage = typeof e.command === 'string' ? e.command : undefined;
  const reply = response !== undefined ? parseReply(response, stage) : undefined;
  if (reply) return classifyReply(reply);
  const code = errorCode(err) ?? 'EUNKNOWN';
  const refusal = CLIENT_REFUSALS.find((r) => r.code === code && r.match.test(errorMessage(err)));
  if (refusal) {
    return { outcome: 'bounced', greylisted: false, enhancedCode: refusal.enhanced, response: boundedResponse(`${refusal.enhanced} hedwig refused to send it: ${errorMessage(err)}`) };
  }
  return {
    // Unknown errors are retried: a wrong deferral costs a delay, a wrong bounce loses mail.
    outcome: ERRORS_WITHOUT_REPLY[code] ?? 'deferred',
    greylisted: false,
    response: boundedResponse(`${code}: ${errorMessage(err)}`),
  };
}
