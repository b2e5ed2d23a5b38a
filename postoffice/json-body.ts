import { isUtf8 } from 'node:buffer';
import { ok, rejection, type OrRejection } from './rejection.ts';

/**
 * Request bodies as JSON. JSON is UTF-8 (RFC 8259 §8.1), and decoding replaces every
 * invalid byte with U+FFFD: a message sent in `data` with 8-bit bytes that are not UTF-8
 * would be queued (and signed) changed. Such a body is refused, naming the field, so the
 * sender knows to use `data_base64` (issue 12.7).
 */

function parseJson(text: string, field: string | undefined): OrRejection<unknown> {
  try {
    return ok(JSON.parse(text) as unknown);
  } catch {
    return rejection(400, 'invalid_json', field ? `${field} is not valid JSON` : 'body is not valid JSON', field);
  }
}

/**
 * The path of the first string (in document order) that holds U+FFFD: where the decoder
 * replaced an invalid byte. An honest U+FFFD earlier in the document would be named
 * instead; that costs a less precise `field`, never a wrong verdict.
 */
function replacedAt(value: unknown): string[] | undefined {
  // Iterative: a hostile body may nest deeply.
  const stack: Array<{ value: unknown; path: string[] }> = [{ value, path: [] }];
  while (stack.length > 0) {
    const { value: node, path } = stack.pop()!;
    if (typeof node === 'string') {
      if (node.includes('\ufffd')) return path;
    } else if (node !== null && typeof node === 'object') {
      const entries = Object.entries(node);
      for (let i = entries.length - 1; i >= 0; i--) stack.push({ value: entries[i]![1], path: [...path, entries[i]![0]] });
    }
  }
  return undefined;
}

/** Parses `raw` as JSON; `field` names it when it is a field of an outer request (the form route's `email`). */
export function parseJsonBody(raw: Buffer, field?: string): OrRejection<unknown> {
  const parsed = parseJson(raw.toString('utf8'), field);
  if (!parsed.ok || isUtf8(raw)) return parsed;
  const path = replacedAt(parsed.value);
  const where = path && path.length > 0 ? [...(field ? [field] : []), ...path].join('.') : field;
  return rejection(400, 'invalid_utf8', `${where ?? 'the body'} is not valid UTF-8; send 8-bit content that is not UTF-8 as data_base64`, where);
}
