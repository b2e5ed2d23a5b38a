import { domainToASCII } from 'node:url';

/**
 * The header edits a relay makes before a message leaves: drop what must not reach the
 * recipient, add what RFC 5322 requires and the sender left out, optionally a trace line.
 * Pure: bytes in, bytes out, everything time- or host-dependent comes in as arguments.
 *
 * Written by hand over the Buffer the worker already holds: the header parsers at hand
 * (nodemailer's DKIM MessageParser, mailsplit) are streams built for other jobs, and the
 * edits need only the field boundaries. Header bytes are handled as latin1 strings so
 * 8-bit and raw UTF-8 header content passes through byte for byte.
 */

/**
 * Never sent on: Bcc would reveal the blind recipients; Resent-Bcc likewise; Return-Path
 * belongs to the final delivery (RFC 5321 §4.4); Content-Length is unreliable in transit.
 * The same list as Postfix's message_drop_headers. X-Hedwig-* is our own namespace.
 */
const DROPPED = new Set(['bcc', 'resent-bcc', 'return-path', 'content-length']);
const INTERNAL_PREFIX = 'x-hedwig-';

export interface HeaderField {
  /** Lower-case field name; '' for a line in the header section that is not a field. */
  name: string;
  /** The whole field, continuation lines and the final CRLF included (latin1). */
  text: string;
}

export interface SplitMessage {
  fields: HeaderField[];
  /** Everything after the blank line that ends the header section (empty when there is none). */
  body: Buffer;
  /** Whether the message had a blank line after its header section. */
  hasSeparator: boolean;
}

/**
 * Bare LF and bare CR become CRLF, as nodemailer's SMTP client writes them on the wire:
 * the DKIM signature must cover the bytes the receiver gets.
 */
export function normalizeLineEnds(raw: Buffer): Buffer {
  if (!raw.includes(0x0a) && !raw.includes(0x0d)) return raw;
  const text = raw.toString('latin1');
  const normalized = text.replace(/\r\n|\r|\n/g, '\r\n');
  return normalized.length === text.length ? raw : Buffer.from(normalized, 'latin1');
}

/** Splits a CRLF-normalized message into its header fields and body. */
export function splitMessage(raw: Buffer): SplitMessage {
  let end = raw.indexOf('\r\n\r\n');
  let headerBytes: number;
  let bodyStart: number;
  if (raw.subarray(0, 2).equals(Buffer.from('\r\n'))) {
    headerBytes = 0;
    bodyStart = 2;
    end = 0;
  } else if (end === -1) {
    headerBytes = raw.length;
    bodyStart = raw.length;
  } else {
    headerBytes = end + 2;
    bodyStart = end + 4;
  }
  const section = raw.subarray(0, headerBytes).toString('latin1');
  const lines = section.split(/(?<=\r\n)/).filter((line) => line.length > 0);
  const fields: HeaderField[] = [];
  for (const line of lines) {
    const continuation = line.startsWith(' ') || line.startsWith('\t');
    const last = fields[fields.length - 1];
    if (continuation && last) {
      last.text += line;
      continue;
    }
    const colon = line.indexOf(':');
    const name = colon > 0 && /^[\x21-\x39\x3b-\x7e]+$/.test(line.slice(0, colon).trimEnd()) ? line.slice(0, colon).trimEnd().toLowerCase() : '';
    fields.push({ name, text: line.endsWith('\r\n') ? line : `${line}\r\n` });
  }
  return { fields, body: raw.subarray(bodyStart), hasSeparator: end !== -1 };
}

/** Always with the blank line after the header section: some parsers (mailauth among them) need it to find the header end. */
export function joinMessage(message: Pick<SplitMessage, 'fields' | 'body'>): Buffer {
  const header = Buffer.from(message.fields.map((f) => f.text).join(''), 'latin1');
  return Buffer.concat([header, Buffer.from('\r\n'), message.body]);
}

export function hasField(message: SplitMessage, name: string): boolean {
  return message.fields.some((f) => f.name === name);
}

/** RFC 5322 date-time in UTC. */
export function rfc5322Date(ms: number): string {
  return new Date(ms).toUTCString().replace(/GMT$/, '+0000');
}

/** A domain fit for a Message-ID or a Received clause: ASCII (IDNA), lower case. */
function asciiDomain(domain: string): string {
  return domainToASCII(domain) || domain.replace(/[^\x21-\x7e]/g, '-');
}

/** A hedwig message id as the left part of a Message-ID (RFC 5322 dot-atom-text). */
function idLeft(id: string): string {
  return id.replace(/[^A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]/g, '-').replace(/^\.+|\.+$/g, '').replace(/\.{2,}/g, '.') || 'hedwig';
}

export interface HeaderEdits {
  /** hedwig's id of the message: stable across retries and destination domains. */
  messageId: string;
  /** Domain for a generated Message-ID (the sender's domain, or the worker's name). */
  messageIdDomain: string;
  /** When the message entered hedwig (ms), for a missing Date. */
  receivedAt: number;
  /** Add `Received: from <submittedBy> by <by> id <messageId>; <date>` on top. */
  received?: { submittedBy: string; by: string; at: number };
}

/**
 * Drops Bcc and the other never-forwarded fields, adds Message-ID and Date when missing
 * (on top), puts an optional Received trace field above them, and ends a message that has no body with
 * the blank line (an empty body: the same DKIM body hash). The input must be CRLF-normalized.
 */
export function editHeaders(raw: Buffer, edits: HeaderEdits): Buffer {
  const message = splitMessage(raw);
  const kept = message.fields.filter((f) => !DROPPED.has(f.name) && !f.name.startsWith(INTERNAL_PREFIX));
  const added: HeaderField[] = [];
  if (!hasField(message, 'message-id')) {
    added.push({ name: 'message-id', text: `Message-ID: <${idLeft(edits.messageId)}@${asciiDomain(edits.messageIdDomain)}>\r\n` });
  }
  if (!hasField(message, 'date')) added.push({ name: 'date', text: `Date: ${rfc5322Date(edits.receivedAt)}\r\n` });
  const trace: HeaderField[] = [];
  if (edits.received) {
    const { submittedBy, by, at } = edits.received;
    // No "for <recipient>" clause: with several recipients it would reveal them to each other.
    trace.push({
      name: 'received',
      text: `Received: from ${asciiDomain(submittedBy)} by ${asciiDomain(by)} (hedwig) id ${idLeft(edits.messageId)};\r\n\t${rfc5322Date(at)}\r\n`,
    });
  }
  const changed = added.length > 0 || trace.length > 0 || kept.length !== message.fields.length || !message.hasSeparator;
  if (!changed) return raw;
  // Added fields go on top: the original then arrives as an unchanged suffix (when nothing was dropped).
  return joinMessage({ fields: [...trace, ...added, ...kept], body: message.body });
}
