import { createHmac, timingSafeEqual } from 'node:crypto';

/**
 * Signature of webhook deliveries: the header
 *
 *     X-Hedwig-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>
 *
 * The timestamp is inside the signed string, so a receiver that rejects old timestamps
 * also rejects replays. A receiver verifies with the raw body bytes, before parsing them.
 */
export const WEBHOOK_SIGNATURE_HEADER = 'x-hedwig-signature';

export function webhookSignature(secret: string, timestampSeconds: number, body: string | Buffer): string {
  const mac = createHmac('sha256', secret).update(`${timestampSeconds}.`).update(body).digest('hex');
  return `t=${timestampSeconds},v1=${mac}`;
}

export type WebhookVerifyResult = { ok: true; timestamp: number } | { ok: false; reason: 'malformed' | 'stale' | 'mismatch' };

export function verifyWebhookSignature(
  secret: string,
  header: string | undefined,
  body: string | Buffer,
  options: { nowSeconds?: number; toleranceSeconds?: number } = {},
): WebhookVerifyResult {
  const match = /^t=(\d{1,12}),v1=([0-9a-f]{64})$/.exec(header ?? '');
  if (!match) return { ok: false, reason: 'malformed' };
  const timestamp = Number(match[1]);
  const now = options.nowSeconds ?? Math.floor(Date.now() / 1000);
  if (Math.abs(now - timestamp) > (options.toleranceSeconds ?? 300)) return { ok: false, reason: 'stale' };
  const expected = Buffer.from(webhookSignature(secret, timestamp, body).slice(-64), 'hex');
  if (!timingSafeEqual(expected, Buffer.from(match[2]!, 'hex'))) return { ok: false, reason: 'mismatch' };
  return { ok: true, timestamp };
}

/**
 * The recipient as the webhook shows it when hashing is on: HMAC-SHA256 keyed with the
 * webhook secret over the lower-cased address. Keyed, because a plain hash of an address
 * is reversed with a list of addresses; the receiver, who has the secret, computes the
 * same value for its own users' addresses to match events to them.
 */
export function recipientHash(secret: string, recipient: string): string {
  return createHmac('sha256', secret).update(recipient.toLowerCase()).digest('hex');
}
