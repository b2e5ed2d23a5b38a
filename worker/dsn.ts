import { randomUUID } from 'node:crypto';
import MimeNode from 'nodemailer/lib/mime-node';
import { isAscii } from '../shared/address.ts';
import type { OutboundJob } from '../shared/job.ts';

/**
 * The delivery status notification message itself (RFC 3464): a failure report for
 * recipients that bounced or expired, or a delay warning. notices.ts decides when one is
 * due and queues it.
 *
 * The MIME structure (boundaries, transfer encodings, header encoding) is nodemailer's
 * MimeNode, the builder under MailComposer: MailComposer itself cannot make a
 * multipart/report root. The machine-readable part is written here because no library
 * writes RFC 3464 fields; it is 7-bit by construction (addresses that need UTF-8 use the
 * RFC 6533 `utf-8` address type, reply texts are reduced to printable ASCII).
 *
 */

export interface NoticeSettings {
  enabled: boolean;
  /** The From: address of notices (the mailer-daemon). */
  from: string;
  /** This worker's name (its EHLO name), for Reporting-MTA and the Message-ID. */
  reportingMta: string;
}

export type NoticeKind = 'failure' | 'delay';

export interface DsnRecipient {
  recipient: string;
  /** bounced/expired give Action: failed; deferred gives Action: delayed. */
  outcome: 'bounced' | 'expired' | 'deferred';
  responseCode?: number;
  enhancedCode?: string;
  response: string;
  mx?: string;
  lastAttemptAt: number;
}

export interface DsnInput {
  kind: NoticeKind;
  original: OutboundJob;
  /** The original message; only its header section is returned. */
  raw: Buffer;
  recipients: DsnRecipient[];
  settings: NoticeSettings;
  now: number;
  /** For delay warnings: when the mail system gives up (Will-Retry-Until). */
  retryUntil?: number;
  /** Message-ID of the notice (without angle brackets); generated when absent. */
  messageId?: string;
}

/** Returned headers are capped: a notice must stay small whatever the original carried. */
const MAX_RETURNED_HEADER_BYTES = 32 * 1024;
const FOLD_AT = 78;

/** RFC 5322 date-time in UTC. */
export function rfc5322Date(ms: number): string {
  return new Date(ms).toUTCString().replace(/GMT$/, '+0000');
}

/** A reply text as it may appear in a 7-bit header-like field: one line of printable ASCII. */
function printable(text: string): string {
  return text
    .replace(/\s*[\r\n]+\s*/g, ' ')
    .replace(/[^\x20-\x7e]/g, '?')
    .trim();
}

/** Folds a `Name: value` field at spaces so that no line is longer than FOLD_AT (when words allow). */
export function foldField(name: string, value: string): string {
  const words = value.split(' ').filter((w) => w.length > 0);
  const lines: string[] = [];
  let line = `${name}:`;
  for (const word of words) {
    if (line.length + 1 + word.length > FOLD_AT && line.trim().length > 0 && !line.endsWith(':')) {
      lines.push(line);
      line = ` ${word}`;
    } else {
      line += ` ${word}`;
    }
  }
  lines.push(line);
  return lines.join('\r\n');
}

/**
 * `rfc822; addr` for ASCII addresses; `utf-8; addr` with RFC 6533 embedded-unicode-char
 * escapes otherwise, which keeps the field ASCII.
 */
export function addressField(address: string): string {
  if (isAscii(address)) return `rfc822; ${printable(address)}`;
  const escaped = [...address]
    .map((ch) => {
      const code = ch.codePointAt(0)!;
      const qchar = code >= 0x21 && code <= 0x7e && ch !== '+' && ch !== '=' && ch !== '\\';
      return qchar ? ch : `\\x{${code.toString(16).toUpperCase()}}`;
    })
    .join('');
  return `utf-8; ${escaped}`;
}

/**
 * The Status field (RFC 3463): the server's enhanced code when it gave one, else one derived
 * from the reply code, else the generic code for what happened.
 */
export function dsnStatus(r: DsnRecipient): string {
  if (r.enhancedCode && /^[245]\.\d{1,3}\.\d{1,3}$/.test(r.enhancedCode)) return r.enhancedCode;
  if (r.responseCode !== undefined && r.responseCode >= 400 && r.responseCode < 600) return `${Math.floor(r.responseCode / 100)}.0.0`;
  if (r.outcome === 'expired') return '4.4.7'; // delivery time expired
  if (r.outcome === 'deferred') return '4.4.1'; // no answer from host
  return '5.0.0';
}

/** `smtp; <reply>` when a remote server said it; otherwise our own diagnosis (DNS, connection errors). */
export function diagnosticCode(r: DsnRecipient): string {
  const text = printable(r.response);
  return r.responseCode !== undefined && r.mx !== undefined ? `smtp; ${text}` : `X-Hedwig; ${text}`;
}

function recipientFields(r: DsnRecipient, retryUntil: number | undefined): string {
  const fields = [
    foldField('Final-Recipient', addressField(r.recipient)),
    `Action: ${r.outcome === 'deferred' ? 'delayed' : 'failed'}`,
    `Status: ${dsnStatus(r)}`,
    ...(r.mx !== undefined ? [foldField('Remote-MTA', `dns; ${printable(r.mx)}`)] : []),
    foldField('Diagnostic-Code', diagnosticCode(r)),
    `Last-Attempt-Date: ${rfc5322Date(r.lastAttemptAt)}`,
    ...(r.outcome === 'deferred' && retryUntil !== undefined ? [`Will-Retry-Until: ${rfc5322Date(retryUntil)}`] : []),
  ];
  return fields.join('\r\n');
}

export function deliveryStatus(input: DsnInput): string {
  const perMessage = [
    `Reporting-MTA: dns; ${printable(input.settings.reportingMta)}`,
    `X-Hedwig-Message-ID: ${printable(input.original.id)}`,
    `Arrival-Date: ${rfc5322Date(input.original.receivedAt)}`,
  ].join('\r\n');
  // Blocks are separated by a blank line; the part ends with a line break.
  return [perMessage, ...input.recipients.map((r) => recipientFields(r, input.retryUntil))].join('\r\n\r\n') + '\r\n';
}

/** The header section of the original (never its body), cut at a line boundary when too large. */
export function headerSection(raw: Buffer): Buffer {
  let end = raw.indexOf('\r\n\r\n');
  if (end >= 0) end += 2;
  else {
    end = raw.indexOf('\n\n');
    end = end >= 0 ? end + 1 : raw.length;
  }
  if (end > MAX_RETURNED_HEADER_BYTES) {
    const lastBreak = raw.subarray(0, MAX_RETURNED_HEADER_BYTES).lastIndexOf('\n');
    end = lastBreak >= 0 ? lastBreak + 1 : MAX_RETURNED_HEADER_BYTES;
  }
  return raw.subarray(0, end);
}

function explanation(r: DsnRecipient): string {
  const text = printable(r.response);
  if (r.outcome === 'expired') return `gave up: the message stayed undeliverable for too long. Last error: ${text}`;
  return r.mx !== undefined && r.responseCode !== undefined ? `host ${r.mx} said: ${text}` : text;
}

function humanReadable(input: DsnInput): string {
  const mta = input.settings.reportingMta;
  const list = input.recipients.map((r) => `<${r.recipient}>: ${explanation(r)}`).join('\r\n\r\n');
  const intro =
    input.kind === 'failure'
      ? [
          `This is the mail system at host ${mta}.`,
          '',
          'Your message could not be delivered to one or more recipients.',
          'It has not been delivered to the recipients listed below; its headers',
          'are attached. Recipients not listed here are not affected.',
        ]
      : [
          `This is the mail system at host ${mta}.`,
          '',
          'THIS IS A WARNING ONLY. YOU DO NOT NEED TO RESEND YOUR MESSAGE.',
          '',
          'Your message could not be delivered yet to the recipients listed below.',
          `The mail system will keep trying until ${rfc5322Date(input.retryUntil ?? input.now)}.`,
        ];
  return [...intro, '', list, ''].join('\r\n');
}

function buildMime(root: MimeNode): Promise<Buffer> {
  return new Promise((resolve, reject) => root.build((err, message) => (err ? reject(err) : resolve(message))));
}

/** The complete notice message (RFC 5322 + MIME), CRLF line ends. */
export async function buildDsn(input: DsnInput): Promise<Buffer> {
  const { settings } = input;
  const root = new MimeNode('multipart/report; report-type=delivery-status', { newline: 'win', hostname: settings.reportingMta });
  root.setHeader({
    From: `"Mail Delivery System" <${settings.from}>`,
    To: input.original.mailfrom,
    Subject: input.kind === 'failure' ? 'Undelivered Mail Returned to Sender' : 'Delayed Mail (still being retried)',
    Date: rfc5322Date(input.now),
    'Message-ID': `<${input.messageId ?? `${randomUUID()}@${settings.reportingMta}`}>`,
    // RFC 3834: automatic responders must not answer this.
    'Auto-Submitted': 'auto-replied',
  });
  root.createChild('text/plain; charset=utf-8').setContent(humanReadable(input));
  // 7bit (no Content-Transfer-Encoding) as RFC 3464 expects; the content is ASCII by construction.
  root.createChild('message/delivery-status').setContent(deliveryStatus(input));
  const headers = headerSection(input.raw);
  if (isAscii(headers.toString('latin1'))) {
    // Given as a string, MimeNode sends ASCII text as it is (7bit) unless lines are too long.
    root.createChild('text/rfc822-headers').setContent(headers.toString('latin1'));
  } else {
    // Raw 8-bit header bytes are most likely UTF-8 (RFC 6532); say so, so readers can show them.
    root.createChild('text/rfc822-headers; charset=utf-8').setContent(headers);
  }
  return buildMime(root);
}
