/**
 * The header section of a message as fields: split, looked up, joined again. Used by the
 * worker (its edits before sending) and the post office (completing the author fields at
 * submission).
 *
 * Written by hand over the Buffer the tiers already hold: the header parsers at hand
 * (nodemailer's DKIM MessageParser, mailsplit) are streams built for other jobs, and the
 * edits need only the field boundaries. Header bytes are handled as latin1 strings so
 * 8-bit and raw UTF-8 header content passes through byte for byte.
 */

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
