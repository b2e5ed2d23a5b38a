import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { z } from 'zod';
import { isValidDomain } from '../shared/address.ts';
import { resolveSecret } from '../shared/config.ts';
import { HEADER, verifySignature } from '../shared/signing.ts';
import { ok, rejection, type OrRejection } from './rejection.ts';

export const MIN_KEY_LENGTH = 32;

const senderDomain = z
  .string()
  .transform((value) => value.toLowerCase())
  .refine((value) => value === '*' || isValidDomain(value), { message: "expected a domain or '*'" });

/**
 * A client host allowed to submit mail: its key and what it may send. The key is resolved
 * here (inline or from a file, e.g. a Docker secret) so the rest of the post office only
 * ever sees `key`.
 */
const clientSchema = z
  .object({
    key: z.string().optional(),
    keyFile: z.string().optional(),
    senderDomains: z.array(senderDomain).min(1),
  })
  .strict()
  .transform((client, ctx) => {
    const key = resolveSecret({ inline: client.key, file: client.keyFile }, 'key', ctx, { minLength: MIN_KEY_LENGTH });
    if (key === undefined) return z.NEVER;
    return { key, senderDomains: client.senderDomains };
  });

/** `clients:` of the post office config, keyed by lower-cased fqdn. */
export const clientsConfigSchema = z
  .record(z.string().min(1), clientSchema)
  .default({})
  .transform((clients, ctx) => {
    // FQDNs are case-insensitive; requests are matched on the lower-cased name.
    const byName: Record<string, z.infer<typeof clientSchema>> = {};
    for (const [fqdn, client] of Object.entries(clients)) {
      const name = fqdn.toLowerCase();
      if (byName[name]) ctx.addIssue({ code: 'custom', message: `duplicate client ${name}`, path: [fqdn] });
      byName[name] = client;
    }
    return byName;
  });

export type ClientPolicy = z.infer<typeof clientSchema>;

export interface AuthenticatedClient {
  fqdn: string;
  policy: ClientPolicy;
}

export interface SignedCaller extends AuthenticatedClient {
  signature: string;
  timestamp: number;
  idempotencyKey: string | undefined;
}

type Headers = Record<string, string | string[] | undefined>;

function header(headers: Headers, name: string): string | undefined {
  const value = headers[name];
  return typeof value === 'string' ? value : undefined;
}

const MESSAGES = {
  missing_signature: 'x-hedwig-fqdn, x-hedwig-timestamp and x-hedwig-signature are required',
  unknown_fqdn: 'unknown client',
  bad_timestamp: 'x-hedwig-timestamp must be Unix seconds',
  stale_timestamp: 'x-hedwig-timestamp is outside the accepted window; check the clock',
  bad_signature: 'signature does not match',
} as const;

/** Checks the HMAC headers of a `/v1` request against the raw body bytes. */
export function authenticateSignedRequest(
  clients: Readonly<Record<string, ClientPolicy>>,
  request: { method: string; url: string; headers: Headers; body: Buffer },
  options: { nowMs: number; windowSeconds: number },
): OrRejection<SignedCaller> {
  const sentFqdn = header(request.headers, HEADER.fqdn);
  const signature = header(request.headers, HEADER.signature);
  const timestamp = header(request.headers, HEADER.timestamp);
  if (!sentFqdn || !signature || timestamp === undefined) return rejection(401, 'missing_signature', MESSAGES.missing_signature);
  const fqdn = sentFqdn.toLowerCase();
  const policy = Object.hasOwn(clients, fqdn) ? clients[fqdn] : undefined;
  if (!policy) return rejection(401, 'unknown_fqdn', MESSAGES.unknown_fqdn);
  const idempotencyKey = header(request.headers, HEADER.idempotencyKey);
  const verified = verifySignature(
    policy.key,
    { method: request.method, path: request.url, fqdn: sentFqdn, timestamp, signature, idempotencyKey, body: request.body },
    { now: options.nowMs, windowSeconds: options.windowSeconds },
  );
  if (!verified.ok) return rejection(401, verified.code, MESSAGES[verified.code]);
  return ok({ fqdn, policy, signature: signature.toLowerCase(), timestamp: verified.timestamp, idempotencyKey: idempotencyKey || undefined });
}

function digest(value: string): Buffer {
  return createHash('sha256').update(value, 'utf8').digest();
}

// Compared against when the fqdn is unknown, so both failures cost the same time.
const DECOY_KEY = randomBytes(32).toString('hex');

/**
 * The hedwig form route sends the key itself. Both sides are hashed first so the
 * constant-time comparison does not leak the key's length either.
 */
export function authenticateLegacyCredentials(
  clients: Readonly<Record<string, ClientPolicy>>,
  fqdn: string | undefined,
  key: string | undefined,
): OrRejection<AuthenticatedClient> {
  const name = (fqdn ?? '').toLowerCase();
  const policy = name && Object.hasOwn(clients, name) ? clients[name] : undefined;
  const matches = timingSafeEqual(digest(key ?? ''), digest(policy?.key ?? DECOY_KEY));
  if (!policy || !key || !matches) return rejection(401, 'bad_credentials', 'unknown fqdn or wrong key');
  return ok({ fqdn: name, policy });
}
