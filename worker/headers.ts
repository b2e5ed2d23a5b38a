import { domainToASCII } from 'node:url';
import { z } from 'zod';
import { hasField, joinMessage, splitMessage, type HeaderField } from '../shared/message-header.ts';

export { normalizeLineEnds, splitMessage } from '../shared/message-header.ts';

/**
 * The header edits a relay makes before a message leaves: drop what must not reach the
 * recipient, add what RFC 5322 requires and the sender left out, optionally a trace line.
 * Pure: bytes in, bytes out, everything time- or host-dependent comes in as arguments.
 *
 * The field boundaries come from shared/message-header.ts (the post office edits headers too).
 */

/**
 * Never sent on: Bcc would reveal the blind recipients; Resent-Bcc likewise; Return-Path
 * belongs to the final delivery (RFC 5321 §4.4); Content-Length is unreliable in transit.
 * The same list as Postfix's message_drop_headers. X-Hedwig-* is our own namespace.
 */
/** `headers`: optional header edits. */
export const headersSchema = z
  .object({
    /** Add a Received trace field (it names the submitting host's fqdn). */
    received: z.boolean().default(false),
  })
  .strict()
  .prefault({});

const DROPPED = new Set(['bcc', 'resent-bcc', 'return-path', 'content-length']);
const INTERNAL_PREFIX = 'x-hedwig-';

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
