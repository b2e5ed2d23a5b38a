import { createHash, createHmac, timingSafeEqual } from 'node:crypto';

/**
 * Request signing between mailman (or any client) and the post office.
 *
 * The signature is HMAC-SHA256, keyed with the host's key (its UTF-8 bytes), over the
 * canonical string
 *
 *     METHOD \n PATH \n TIMESTAMP \n FQDN \n IDEMPOTENCY-KEY \n hex(SHA-256(body))
 *
 * PATH includes the query string as sent. TIMESTAMP is Unix seconds. An absent
 * idempotency key is the empty string. The result is sent as lowercase hex.
 */
export const HEADER = {
  fqdn: 'x-hedwig-fqdn',
  timestamp: 'x-hedwig-timestamp',
  signature: 'x-hedwig-signature',
  idempotencyKey: 'idempotency-key',
} as const;

export const DEFAULT_WINDOW_SECONDS = 300;

/**
 * The body, or its SHA-256 in hex when it was hashed while it streamed in (the post office
 * never holds an unauthenticated body just to hash it).
 */
export type SignedBody = { body: Uint8Array | string } | { bodySha256: string };

export type SignedParts = {
  method: string;
  path: string;
  timestamp: number;
  fqdn: string;
  idempotencyKey: string;
} & SignedBody;

export function sha256Hex(body: Uint8Array | string): string {
  return createHash('sha256').update(body).digest('hex');
}

export function canonicalString(parts: SignedParts): string {
  const digest = 'bodySha256' in parts ? parts.bodySha256 : sha256Hex(parts.body);
  return [parts.method.toUpperCase(), parts.path, String(parts.timestamp), parts.fqdn, parts.idempotencyKey, digest].join('\n');
}

export function computeSignature(key: string, parts: SignedParts): string {
  return createHmac('sha256', key).update(canonicalString(parts)).digest('hex');
}

export function signRequest(
  key: string,
  request: { method: string; path: string; fqdn: string; body: Uint8Array | string; idempotencyKey?: string; now?: number },
): Record<string, string> {
  const timestamp = Math.floor((request.now ?? Date.now()) / 1000);
  const idempotencyKey = request.idempotencyKey ?? '';
  const signature = computeSignature(key, { ...request, timestamp, idempotencyKey });
  const headers: Record<string, string> = {
    [HEADER.fqdn]: request.fqdn,
    [HEADER.timestamp]: String(timestamp),
    [HEADER.signature]: signature,
  };
  if (idempotencyKey) headers[HEADER.idempotencyKey] = idempotencyKey;
  return headers;
}

export type VerifyFailure = 'missing_signature' | 'bad_timestamp' | 'stale_timestamp' | 'bad_signature';

export type VerifyResult = { ok: true; timestamp: number } | { ok: false; code: VerifyFailure };

/**
 * The timestamp header against a window of ±windowSeconds: checked on its own first, so a
 * server can refuse a stale request before it looks up the key (or reads the body).
 */
export function checkTimestamp(timestamp: string | undefined, options: { now?: number; windowSeconds?: number } = {}): VerifyResult {
  if (timestamp === undefined) return { ok: false, code: 'missing_signature' };
  if (!/^\d{1,12}$/.test(timestamp)) return { ok: false, code: 'bad_timestamp' };
  const seconds = Number(timestamp);
  const now = Math.floor((options.now ?? Date.now()) / 1000);
  if (Math.abs(now - seconds) > (options.windowSeconds ?? DEFAULT_WINDOW_SECONDS)) return { ok: false, code: 'stale_timestamp' };
  return { ok: true, timestamp: seconds };
}

/**
 * Checks the timestamp (checkTimestamp) and the signature, in constant time. The caller
 * looks up the key for the fqdn and handles replays.
 */
export function verifySignature(
  key: string,
  request: { method: string; path: string; fqdn: string; timestamp: string | undefined; signature: string | undefined; idempotencyKey: string | undefined } & SignedBody,
  options: { now?: number; windowSeconds?: number } = {},
): VerifyResult {
  if (!request.signature || request.timestamp === undefined) return { ok: false, code: 'missing_signature' };
  const checked = checkTimestamp(request.timestamp, options);
  if (!checked.ok) return checked;
  const timestamp = checked.timestamp;
  const expected = Buffer.from(
    computeSignature(key, { ...request, timestamp, idempotencyKey: request.idempotencyKey ?? '' }),
    'hex',
  );
  const given = /^[0-9a-fA-F]{64}$/.test(request.signature) ? Buffer.from(request.signature, 'hex') : Buffer.alloc(0);
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return { ok: false, code: 'bad_signature' };
  return { ok: true, timestamp };
}
