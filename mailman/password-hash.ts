import { randomBytes, scrypt, scryptSync, timingSafeEqual } from 'node:crypto';

/**
 * SMTP AUTH passwords as scrypt hashes (RFC 7914, node:crypto) in a self-describing string:
 *
 *   scrypt$N=32768,r=8,p=1$<salt, base64>$<derived key, base64>
 *
 * The parameters travel with each hash, so a later default can be stronger without breaking
 * the hashes already in configs. N=2^15, r=8 costs about 70 ms and 32 MiB per check on the
 * 2-core machines measured; a wrong password costs the same as a right one, and an unknown
 * user the same again (`SmtpAuthenticator` checks it against a dummy hash with these
 * parameters). scrypt runs in libuv's thread pool, never on the event loop.
 */

export interface ScryptParams {
  N: number;
  r: number;
  p: number;
}

export interface PasswordHash {
  params: ScryptParams;
  salt: Buffer;
  hash: Buffer;
}

export type ParsedHash = { ok: true; value: PasswordHash } | { ok: false; message: string };

export const DEFAULT_SCRYPT_PARAMS: ScryptParams = { N: 32_768, r: 8, p: 1 };
const SALT_BYTES = 16;
const KEY_BYTES = 32;
/** Refused above this (128 * N * r bytes): a config must not make one check take a gigabyte. */
const MAX_MEMORY_BYTES = 256 * 1024 * 1024;
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

/** Node refuses scrypt above its `maxmem` (32 MiB by default, exactly what N=2^15, r=8 needs): give it room. */
function maxmem(params: ScryptParams): number {
  return 2 * 128 * params.N * params.r * params.p + 1024 * 1024;
}

function decode(text: string, what: string, min: number): Buffer | string {
  if (!BASE64.test(text)) return `${what} is not base64`;
  const bytes = Buffer.from(text, 'base64');
  if (bytes.toString('base64').replace(/=+$/, '') !== text.replace(/=+$/, '')) return `${what} is not canonical base64`;
  if (bytes.length < min || bytes.length > 64) return `${what} must be ${min} to 64 bytes`;
  return bytes;
}

export function parsePasswordHash(text: string): ParsedHash {
  const parts = text.split('$');
  if (parts.length !== 4 || parts[0] !== 'scrypt') return { ok: false, message: 'expected scrypt$N=...,r=...,p=...$SALT$HASH (make one with key-generator.ts --smtp-user)' };
  const params = /^N=(\d{1,8}),r=(\d{1,3}),p=(\d{1,3})$/.exec(parts[1]!);
  if (!params) return { ok: false, message: 'scrypt parameters must read N=<n>,r=<r>,p=<p>' };
  const [N, r, p] = [Number(params[1]), Number(params[2]), Number(params[3])];
  if (N < 1024 || (N & (N - 1)) !== 0) return { ok: false, message: 'scrypt N must be a power of two, at least 1024' };
  if (r < 1 || r > 32 || p < 1 || p > 16) return { ok: false, message: 'scrypt r must be 1 to 32 and p 1 to 16' };
  if (128 * N * r * p > MAX_MEMORY_BYTES) return { ok: false, message: `scrypt parameters need more than ${MAX_MEMORY_BYTES / 1024 / 1024} MiB per check` };
  const salt = decode(parts[2]!, 'salt', 16);
  if (typeof salt === 'string') return { ok: false, message: salt };
  const hash = decode(parts[3]!, 'hash', 16);
  if (typeof hash === 'string') return { ok: false, message: hash };
  return { ok: true, value: { params: { N, r, p }, salt, hash } };
}

export function formatPasswordHash(value: PasswordHash): string {
  const { N, r, p } = value.params;
  return `scrypt$N=${N},r=${r},p=${p}$${value.salt.toString('base64')}$${value.hash.toString('base64')}`;
}

/** A new hash with a fresh salt; synchronous, for the key generator. */
export function hashPassword(password: string, params: ScryptParams = DEFAULT_SCRYPT_PARAMS): string {
  const salt = randomBytes(SALT_BYTES);
  const hash = scryptSync(password.normalize('NFC'), salt, KEY_BYTES, { ...params, maxmem: maxmem(params) });
  return formatPasswordHash({ params, salt, hash });
}

/** A hash nobody's password matches, with the given cost: what an unknown user is checked against. */
export function dummyHash(params: ScryptParams = DEFAULT_SCRYPT_PARAMS): PasswordHash {
  return { params, salt: randomBytes(SALT_BYTES), hash: randomBytes(KEY_BYTES) };
}

/** True when `password` matches; the comparison takes the same time wherever the bytes differ. */
export function verifyPassword(password: string, stored: PasswordHash): Promise<boolean> {
  return new Promise((resolve) => {
    scrypt(password.normalize('NFC'), stored.salt, stored.hash.length, { ...stored.params, maxmem: maxmem(stored.params) }, (err, derived) => {
      resolve(!err && timingSafeEqual(derived, stored.hash));
    });
  });
}
