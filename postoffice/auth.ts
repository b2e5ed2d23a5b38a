import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { z } from 'zod';
import { isValidDomain } from '../shared/address.ts';
import { resolveSecret } from '../shared/secret.ts';
import { checkTimestamp, HEADER, verifySignature, type SignedBody } from '../shared/signing.ts';
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
    /** The From: and Sender: domains must be among senderDomains too (postoffice/address-fields.ts). */
    checkFromHeader: z.boolean().default(true),
  })
  .strict()
  .transform((client, ctx) => {
    const key = resolveSecret({ inline: client.key, file: client.keyFile }, 'key', ctx, { minLength: MIN_KEY_LENGTH });
    if (key === undefined) return z.NEVER;
    return { key, senderDomains: client.senderDomains, checkFromHeader: client.checkFromHeader };
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

/** A signed request whose headers checked out: known fqdn, timestamp in the window. The body is not verified yet. */
export interface SignedHeaders extends AuthenticatedClient {
  /** The fqdn exactly as sent (it is signed as sent). */
  sentFqdn: string;
  signature: string;
  timestamp: number;
  idempotencyKey: string | undefined;
}

/** A signed request whose signature matched its body. */
export type SignedCaller = Omit<SignedHeaders, 'sentFqdn'>;

type Headers = Record<string, string | string[] | undefined>;

function header(headers: Headers, name: string): string | undefined {
  const value = headers[name];
  return typeof value === 'string' ? value : undefined;
}

const MESSAGES = {
  missing_signature: 'x-hedwig-fqdn, x-hedwig-timestamp and x-hedwig-signature are required',
  bad_timestamp: 'x-hedwig-timestamp must be Unix seconds',
  stale_timestamp: 'x-hedwig-timestamp is outside the accepted window; check the clock',
  bad_signature: 'signature does not match',
} as const;

/**
 * What the headers of a signed request allow checking before its body is read: all three
 * present, the timestamp in the window, the fqdn enrolled. The timestamp is judged first,
 * and an unknown fqdn gets the same answer as a wrong signature (`bad_signature`; the log
 * says `unknown_fqdn`), so an unauthenticated client cannot ask which hosts are enrolled.
 */
export function checkSignedHeaders(
  clients: Readonly<Record<string, ClientPolicy>>,
  headers: Headers,
  options: { nowMs: number; windowSeconds: number },
): OrRejection<SignedHeaders> {
  const sentFqdn = header(headers, HEADER.fqdn);
  const signature = header(headers, HEADER.signature);
  const timestamp = header(headers, HEADER.timestamp);
  if (!sentFqdn || !signature || timestamp === undefined) return rejection(401, 'missing_signature', MESSAGES.missing_signature);
  const checked = checkTimestamp(timestamp, { now: options.nowMs, windowSeconds: options.windowSeconds });
  if (!checked.ok) return rejection(401, checked.code, MESSAGES[checked.code]);
  const fqdn = sentFqdn.toLowerCase();
  const policy = Object.hasOwn(clients, fqdn) ? clients[fqdn] : undefined;
  if (!policy) return { ok: false, rejection: { status: 401, code: 'bad_signature', message: MESSAGES.bad_signature, detail: 'unknown_fqdn' } };
  const idempotencyKey = header(headers, HEADER.idempotencyKey);
  return ok({ fqdn, sentFqdn, policy, signature, timestamp: checked.timestamp, idempotencyKey: idempotencyKey || undefined });
}

/** Checks the signature of a request whose headers checked out, against its body (or the body's SHA-256). */
export function verifySignedBody(caller: SignedHeaders, request: { method: string; url: string } & SignedBody, options: { nowMs: number; windowSeconds: number }): OrRejection<SignedCaller> {
  const { method, url, ...body } = request;
  const verified = verifySignature(
    caller.policy.key,
    { method, path: url, fqdn: caller.sentFqdn, timestamp: String(caller.timestamp), signature: caller.signature, idempotencyKey: caller.idempotencyKey, ...body },
    { now: options.nowMs, windowSeconds: options.windowSeconds },
  );
  if (!verified.ok) return rejection(401, verified.code, MESSAGES[verified.code]);
  const { sentFqdn: _sent, ...signed } = caller;
  return ok({ ...signed, signature: caller.signature.toLowerCase() });
}

/** Both checks at once, for a request whose body is at hand (GET /v1/messages/:id: the empty body). */
export function authenticateSignedRequest(
  clients: Readonly<Record<string, ClientPolicy>>,
  request: { method: string; url: string; headers: Headers; body: Buffer },
  options: { nowMs: number; windowSeconds: number },
): OrRejection<SignedCaller> {
  const headers = checkSignedHeaders(clients, request.headers, options);
  if (!headers.ok) return headers;
  return verifySignedBody(headers.value, { method: request.method, url: request.url, body: request.body }, options);
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
  if (!policy || !key || !matches) {
    return { ok: false, rejection: { status: 401, code: 'bad_credentials', message: 'unknown fqdn or wrong key', detail: !policy ? 'unknown_fqdn' : 'wrong_key' } };
  }
  return ok({ fqdn: name, policy });
}
