import { comparableDomain, fieldAddresses, fieldBody, qualifyAddressList } from '../shared/header-addresses.ts';
import { domainAllowed } from '../shared/job.ts';
import { normalizeLineEnds, splitMessage, type HeaderField } from '../shared/message-header.ts';
import { ok, rejection, type OrRejection } from './rejection.ts';

/**
 * The address header fields of a submitted message, done once at submission so that both
 * ways in (mailman and direct HTTP) get the same treatment:
 *
 * - completed as a submission server does (RFC 6409 §8.1, §8.2), the way Postfix's cleanup
 *   does for local submissions: a missing `From:` is added from the envelope sender
 *   (`MAILER-DAEMON@<domain>` for the null sender), and a bare local part in an address
 *   field (`From: root (Cron Daemon)`, `To: root`) gets `@<domain>` (issue 12.12).
 *   `<domain>` is the envelope sender's domain; for the null sender, the first domain the
 *   host may use, else the host's fqdn (Postfix uses $myorigin; this is the host's own);
 * - checked: every `From:` and `Sender:` domain must be one the host may use, or receivers
 *   would pass DMARC for a domain the host was never given (issue 12.4).
 *
 * Only the header section is read, and only fields that change are rewritten: the body
 * and every other field stay byte for byte as sent.
 */

/** Fields whose bare local parts are qualified: Postfix's list of address headers (Return-Path is the final MTA's). */
const ADDRESS_FIELDS = new Set(['from', 'sender', 'reply-to', 'to', 'cc', 'bcc', 'resent-from', 'resent-sender', 'resent-to', 'resent-cc', 'resent-bcc']);

/** Checked against the host's sender domains: the fields DMARC and readers take as the author. */
const AUTHOR_FIELDS = [
  { name: 'from', field: 'data.From' },
  { name: 'sender', field: 'data.Sender' },
] as const;

export interface Sender {
  /** The envelope sender; '' for the null sender. */
  mailfrom: string;
  fqdn: string;
  senderDomains: readonly string[];
}

/** Where the header section ends: before the first empty line, whatever the line ends (CRLF, LF or CR). */
function headerSectionLength(raw: Buffer): number {
  let lineStart = true;
  for (let i = 0; i < raw.length; i++) {
    const byte = raw[i];
    const lineEnd = byte === 0x0a || byte === 0x0d;
    if (lineEnd && lineStart) return i;
    if (lineEnd) {
      if (byte === 0x0d && raw[i + 1] === 0x0a) i++;
      lineStart = true;
    } else {
      lineStart = false;
    }
  }
  return raw.length;
}

/** The domain bare local parts are qualified with, as a latin1 string (UTF-8 bytes, RFC 6532). */
function qualifyingDomain(sender: Sender): string {
  const domain = sender.mailfrom !== '' ? sender.mailfrom.slice(sender.mailfrom.lastIndexOf('@') + 1) : (sender.senderDomains.find((d) => d !== '*') ?? sender.fqdn);
  return Buffer.from(domain, 'utf8').toString('latin1');
}

function withBody(field: HeaderField, body: string): HeaderField {
  return { name: field.name, text: `${field.text.slice(0, field.text.indexOf(':') + 1)}${body}` };
}

export interface AddressFields {
  /** The message as it is queued: `data` itself when nothing changed. */
  data: Buffer;
  /** Its header fields after the edits (CRLF line ends). */
  fields: HeaderField[];
}

/** Adds a missing From: and qualifies bare local parts in the address fields. */
export function completeAddressFields(data: Buffer, sender: Sender): AddressFields {
  const headerLength = headerSectionLength(data);
  // splitMessage wants CRLF and the empty line after the header section.
  const header = Buffer.concat([normalizeLineEnds(data.subarray(0, headerLength)), Buffer.from('\r\n')]);
  const fields = headerLength === 0 ? [] : splitMessage(header).fields;
  const domain = qualifyingDomain(sender);
  let changed = false;
  const edited = fields.map((field) => {
    if (!ADDRESS_FIELDS.has(field.name)) return field;
    const qualified = qualifyAddressList(fieldBody(field), domain);
    if (qualified === undefined) return field;
    changed = true;
    return withBody(field, qualified);
  });
  if (!edited.some((field) => field.name === 'from')) {
    const author = sender.mailfrom !== '' ? Buffer.from(sender.mailfrom, 'utf8').toString('latin1') : `MAILER-DAEMON@${domain}`;
    // On top, like the worker's own additions: the rest of the header stays as it was.
    edited.unshift({ name: 'from', text: `From: ${author}\r\n` });
    changed = true;
  }
  if (!changed) return { data, fields };
  // The header is written with CRLF; the empty line and the body follow as sent.
  const rest = headerLength === 0 ? data : data.subarray(headerLength);
  return { data: Buffer.concat([Buffer.from(edited.map((f) => f.text).join(''), 'latin1'), rest]), fields: edited };
}

/** Every From: and Sender: domain must be one the host may use ('*': any). */
export function checkAuthorDomains(fields: readonly HeaderField[], senderDomains: readonly string[]): OrRejection<void> {
  for (const { name, field } of AUTHOR_FIELDS) {
    const list = fieldAddresses(fields, name);
    const label = field.slice('data.'.length);
    if (!list.ok) return rejection(400, 'invalid_request', `the ${label}: field cannot be read (${list.reason})`, field);
    for (const address of list.addresses) {
      if (address.domain === undefined || !domainAllowed(comparableDomain(address.domain), senderDomains)) {
        return rejection(403, 'from_domain_not_allowed', `the ${label}: field names a domain this client may not send as`, field);
      }
    }
  }
  return ok(undefined);
}
