import { encode as qpEncode, wrap as qpWrap } from 'nodemailer/lib/qp';
import type { Failed } from '../shared/errors.ts';
import { joinMessage, splitMessage, type HeaderField } from '../shared/message-header.ts';

/**
 * An 8-bit message for a server that does not offer 8BITMIME (RFC 6152 §3: the client must
 * convert it to 7 bit or not send it): each MIME part whose body has 8-bit bytes gets
 * quoted-printable (text) or base64 (anything else) as its Content-Transfer-Encoding, the
 * way Postfix's 8BITMIME downgrade (and sendmail's) does; multipart bodies and attached
 * messages (message/rfc822) are converted part by part. What cannot be converted is
 * refused: 8-bit bytes in a header (they would need RFC 2047 encoded words, which changes
 * what the author wrote), in a part already declared quoted-printable or base64, or in a
 * multipart preamble. The caller bounces those (5.6.3) and signs what this returns, so the
 * DKIM signature covers what is sent.
 *
 * Written here because the MIME libraries at hand parse or build messages, none rewrites
 * the transfer encoding of an existing one while leaving every other byte alone; the
 * encoders are nodemailer's (quoted-printable) and Buffer's (base64).
 */

export function has8bit(raw: Buffer): boolean {
  for (let i = 0; i < raw.length; i++) if (raw[i]! >= 0x80) return true;
  return false;
}

const MAX_DEPTH = 20;

type Converted = { ok: true; raw: Buffer } | Failed<'EIGHTBIT_UNCONVERTIBLE'>;

function refuse(message: string): Failed<'EIGHTBIT_UNCONVERTIBLE'> {
  return { ok: false, code: 'EIGHTBIT_UNCONVERTIBLE', message };
}

/** The unfolded value of the first field `name` ('' when absent). */
function fieldValue(fields: HeaderField[], name: string): string {
  const field = fields.find((f) => f.name === name);
  if (!field) return '';
  return field.text.slice(field.text.indexOf(':') + 1).replace(/\r\n(?=[ \t])/g, '').trim();
}

/** Media type (lower case) and boundary of a Content-Type value; text/plain when absent (RFC 2045 §5.2). */
function contentType(value: string): { type: string; boundary?: string } {
  const type = (/^\s*([^;\s]+)/.exec(value)?.[1] ?? 'text/plain').toLowerCase();
  const boundary = /;\s*boundary\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]+))/i.exec(value);
  const found = boundary ? (boundary[1] ?? boundary[2]) : undefined;
  return found !== undefined ? { type, boundary: found.replace(/\\(.)/g, '$1') } : { type };
}

/** base64 in lines of 76 characters, CRLF-terminated (RFC 2045 §6.8). */
function base64Lines(body: Buffer): string {
  const encoded = body.toString('base64');
  const lines: string[] = [];
  for (let i = 0; i < encoded.length; i += 76) lines.push(encoded.slice(i, i + 76));
  return lines.length > 0 ? `${lines.join('\r\n')}\r\n` : '';
}

/** The part's header with Content-Transfer-Encoding set to `encoding` (replacing the old field in place, else added last). */
function withEncoding(fields: HeaderField[], encoding: string): HeaderField[] {
  const field: HeaderField = { name: 'content-transfer-encoding', text: `Content-Transfer-Encoding: ${encoding}\r\n` };
  const index = fields.findIndex((f) => f.name === 'content-transfer-encoding');
  if (index < 0) return [...fields, field];
  return fields.filter((f, i) => i === index || f.name !== 'content-transfer-encoding').map((f) => (f.name === 'content-transfer-encoding' ? field : f));
}

function convertEntity(raw: Buffer, depth: number): Converted {
  if (depth > MAX_DEPTH) return refuse('MIME structure nested too deeply to convert');
  const entity = splitMessage(raw);
  const header = Buffer.from(entity.fields.map((f) => f.text).join(''), 'latin1');
  if (has8bit(header)) return refuse('8-bit bytes in a header field');
  if (!has8bit(entity.body)) return { ok: true, raw };
  const { type, boundary } = contentType(fieldValue(entity.fields, 'content-type'));
  const encoding = fieldValue(entity.fields, 'content-transfer-encoding').toLowerCase();

  if (type.startsWith('multipart/') && boundary) {
    const body = convertMultipart(entity.body, boundary, depth);
    return body.ok ? { ok: true, raw: joinMessage({ fields: entity.fields, body: body.raw }) } : body;
  }
  if (type === 'message/rfc822' || type === 'message/global') {
    const inner = convertEntity(entity.body, depth + 1);
    return inner.ok ? { ok: true, raw: joinMessage({ fields: withEncoding(entity.fields, '7bit'), body: inner.raw }) } : inner;
  }
  if (encoding === 'quoted-printable' || encoding === 'base64') return refuse(`8-bit bytes in a part declared ${encoding}`);
  if (type.startsWith('text/')) {
    // Line breaks stay line breaks: the body is CRLF-normalized, and CRLF pairs are kept literal.
    const encoded = qpEncode(entity.body)
      .split('\r\n')
      .map((line: string) => qpWrap(line, 76))
      .join('\r\n');
    return { ok: true, raw: joinMessage({ fields: withEncoding(entity.fields, 'quoted-printable'), body: Buffer.from(encoded, 'latin1') }) };
  }
  return { ok: true, raw: joinMessage({ fields: withEncoding(entity.fields, 'base64'), body: Buffer.from(base64Lines(entity.body), 'latin1') }) };
}

/** Each part between the boundary lines converted; preamble and epilogue must already be 7-bit. */
function convertMultipart(body: Buffer, boundary: string, depth: number): Converted {
  const text = body.toString('latin1');
  const delimiter = `--${boundary}`;
  // Boundary lines (RFC 2046 §5.1.1): at the start of a line, maybe followed by "--" and white space.
  const lines = new RegExp(`(^|\\r\\n)${delimiter.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}(--)?[ \\t]*(?=\\r\\n|$)`, 'g');
  const marks = [...text.matchAll(lines)];
  if (marks.length === 0) return refuse('a multipart body without its boundary');
  const out: string[] = [];
  let cursor = 0;
  let closed = false;
  for (const [i, mark] of marks.entries()) {
    const segment = text.slice(cursor, mark.index);
    if (i === 0) {
      if (has8bit(Buffer.from(segment, 'latin1'))) return refuse('8-bit bytes in a multipart preamble');
      out.push(segment);
    } else {
      // The part starts after the CRLF that ends the previous boundary line.
      const part = convertEntity(Buffer.from(segment.replace(/^\r\n/, ''), 'latin1'), depth + 1);
      if (!part.ok) return part;
      out.push(`\r\n${part.raw.toString('latin1')}`);
    }
    out.push(mark[0]);
    cursor = mark.index + mark[0].length;
    if (mark[2] === '--') {
      closed = true;
      break;
    }
  }
  const epilogue = text.slice(cursor);
  if (!closed && epilogue.trim().length > 0) return refuse('a multipart body without its closing boundary');
  if (has8bit(Buffer.from(epilogue, 'latin1'))) return refuse('8-bit bytes in a multipart epilogue');
  out.push(epilogue);
  return { ok: true, raw: Buffer.from(out.join(''), 'latin1') };
}

/** The message with every 8-bit part re-encoded in 7 bit, or why that cannot be done. `raw` must be CRLF-normalized. */
export function convertTo7bit(raw: Buffer): Converted {
  return has8bit(raw) ? convertEntity(raw, 0) : { ok: true, raw };
}
