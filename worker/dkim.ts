import { createPrivateKey, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import DKIM from 'nodemailer/lib/dkim';
import { z } from 'zod';
import type { Failed } from '../shared/errors.ts';
import { domainName } from '../shared/job.ts';
import { signEd25519 } from './dkim-ed25519.ts';

/**
 * DKIM signing (RFC 6376), relaxed/relaxed: rsa-sha256 with nodemailer's signer,
 * ed25519-sha256 (RFC 8463) with dkim-ed25519.ts over nodemailer's canonicalisation.
 * DESIGN.md says why not dkim-signer (its signatures failed to verify for empty, 8-bit
 * and UTF-8 bodies). nodemailer signs nothing, silently, when a key is unusable, so keys
 * are checked once at start-up and every signed message is checked for its signatures.
 * A domain may have one key of each algorithm: every message then carries both
 * signatures, so verifiers that know Ed25519 use it and the others still find RSA.
 */

export const DKIM_ALGORITHMS = ['rsa-sha256', 'ed25519-sha256'] as const;
export type DkimAlgorithm = (typeof DKIM_ALGORITHMS)[number];

const selector = z.string().regex(/^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$/, {
  message: 'a DKIM selector: letters, digits, hyphens (dot-separated labels)',
});
const dkimEntry = z.object({ selector, keyFile: z.string().min(1) }).strict();

/**
 * `dkim.<domain>: {selector, keyFile}` (what `key-generator.ts --dkim` prints), or a list of
 * two such entries, an RSA and an Ed25519 key (RFC 8463 §4 asks signers to sign with both
 * while verifiers catch up). The keys are read by loadDkimKeys at start-up, not while parsing.
 */
export const dkimSchema = z.record(domainName, z.union([dkimEntry.transform((entry) => [entry]), z.array(dkimEntry).min(1).max(2)])).default({});
export type DkimConfig = z.infer<typeof dkimSchema>;

export interface DkimKey {
  /** The d= domain. */
  domain: string;
  selector: string;
  algorithm: DkimAlgorithm;
  /** Parsed once: a PEM string per signature is several times slower (DESIGN.md). */
  privateKey: KeyObject;
}

/** Signing keys by lower-case domain: one or two (an RSA and an Ed25519 key). */
export type DkimKeys = ReadonlyMap<string, readonly DkimKey[]>;

/**
 * nodemailer's default list (RFC 4871 §5.5) plus List-Unsubscribe-Post (RFC 8058, which
 * requires it to be signed along with List-Unsubscribe). Fields absent from a message
 * are left out of h=.
 */
export const SIGNED_FIELDS = [
  'From', 'Sender', 'Reply-To', 'Subject', 'Date', 'Message-ID', 'To', 'Cc',
  'MIME-Version', 'Content-Type', 'Content-Transfer-Encoding', 'Content-ID', 'Content-Description',
  'Resent-Date', 'Resent-From', 'Resent-Sender', 'Resent-To', 'Resent-Cc', 'Resent-Message-ID',
  'In-Reply-To', 'References',
  'List-Id', 'List-Help', 'List-Unsubscribe', 'List-Unsubscribe-Post', 'List-Subscribe', 'List-Post', 'List-Owner', 'List-Archive',
  'Feedback-ID',
].join(':');

/** RFC 8301: verifiers must not accept RSA keys under 1024 bits. */
export const MIN_RSA_BITS = 1024;

export type KeyCheck = { ok: true; key: KeyObject; algorithm: DkimAlgorithm } | { ok: false; message: string };

/** Reads and checks a DKIM private key file: an RSA private key of MIN_RSA_BITS or more, or an Ed25519 private key. */
export function loadDkimPrivateKey(file: string): KeyCheck {
  let pem: Buffer;
  try {
    pem = readFileSync(file);
  } catch (err) {
    return { ok: false, message: `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}` };
  }
  let key: KeyObject;
  try {
    key = createPrivateKey(pem);
  } catch (err) {
    // The parser's message names the format problem; it never quotes the key.
    return { ok: false, message: `${file} is not a private key in PEM or DER form (${(err as Error).message})` };
  }
  if (key.asymmetricKeyType === 'ed25519') return { ok: true, key, algorithm: 'ed25519-sha256' };
  if (key.asymmetricKeyType !== 'rsa') {
    return { ok: false, message: `${file} is a ${key.asymmetricKeyType ?? 'non-RSA'} key; DKIM signing here needs an RSA (rsa-sha256) or Ed25519 (ed25519-sha256) key` };
  }
  const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
  if (bits < MIN_RSA_BITS) return { ok: false, message: `${file} is a ${bits}-bit RSA key; at least ${MIN_RSA_BITS} bits are needed (2048 recommended)` };
  return { ok: true, key, algorithm: 'rsa-sha256' };
}

/**
 * Reads and checks every configured key, so a missing, broken or unsupported key stops
 * start-up with a config error naming its key (`<domain>.keyFile`, or `<domain>.<i>.keyFile`
 * in a list); every problem at once.
 */
export function loadDkimKeys(config: DkimConfig): { ok: true; keys: DkimKeys } | { ok: false; issues: Array<{ path: PropertyKey[]; message: string }> } {
  const keys = new Map<string, DkimKey[]>();
  const issues: Array<{ path: PropertyKey[]; message: string }> = [];
  for (const [domain, list] of Object.entries(config)) {
    const loadedKeys: DkimKey[] = [];
    for (const [i, entry] of list.entries()) {
      const path = list.length > 1 ? [domain, i, 'keyFile'] : [domain, 'keyFile'];
      const loaded = loadDkimPrivateKey(entry.keyFile);
      if (!loaded.ok) {
        issues.push({ path, message: loaded.message });
        continue;
      }
      if (loadedKeys.some((k) => k.algorithm === loaded.algorithm)) {
        issues.push({ path, message: `a second ${loaded.algorithm} key for ${domain}; give one RSA and one Ed25519 key at most` });
        continue;
      }
      if (loadedKeys.some((k) => k.selector === entry.selector)) {
        issues.push({ path: path.slice(0, -1).concat('selector'), message: `selector ${entry.selector} is used twice for ${domain}` });
        continue;
      }
      loadedKeys.push({ domain, selector: entry.selector, algorithm: loaded.algorithm, privateKey: loaded.key });
    }
    keys.set(domain, loadedKeys);
  }
  return issues.length > 0 ? { ok: false, issues } : { ok: true, keys };
}

/**
 * The configured keys for `domain`, else for its closest parent domain (d= may be a parent
 * of the sender's domain) that `mayUseParent` allows.
 */
export function keysFor(keys: DkimKeys, domain: string, mayUseParent: (parent: string) => boolean = () => true): readonly DkimKey[] {
  const labels = domain.toLowerCase().split('.');
  for (let i = 0; i < labels.length; i++) {
    const name = labels.slice(i).join('.');
    const found = keys.get(name);
    if (found && found.length > 0 && (i === 0 || mayUseParent(name))) return found;
  }
  return [];
}

export type SignResult = { ok: true; raw: Buffer } | Failed<'DKIM_SIGN_FAILED'>;

function collect(stream: NodeJS.ReadableStream): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    stream.on('data', (chunk: Buffer) => chunks.push(chunk));
    stream.once('error', reject);
    stream.once('end', () => resolve(Buffer.concat(chunks)));
  });
}

async function signRsa(raw: Buffer, key: DkimKey): Promise<SignResult> {
  const signer = new DKIM({ domainName: key.domain, keySelector: key.selector, privateKey: key.privateKey, headerFieldNames: SIGNED_FIELDS });
  let signed: Buffer;
  try {
    signed = await collect(signer.sign(raw));
  } catch (err) {
    return { ok: false, code: 'DKIM_SIGN_FAILED', message: `DKIM signing for ${key.domain} failed: ${(err as Error).message}` };
  }
  if (!signed.subarray(0, 16).toString('latin1').toLowerCase().startsWith('dkim-signature:')) {
    return { ok: false, code: 'DKIM_SIGN_FAILED', message: `DKIM signing for ${key.domain} (selector ${key.selector}) produced no signature` };
  }
  return { ok: true, raw: signed };
}

/**
 * Prepends one DKIM-Signature per key; fails (never silently sends unsigned, or with one of
 * two signatures) when a signer produced none. Every signature covers the message as it
 * was before any of them: DKIM-Signature fields are not in SIGNED_FIELDS, so the order on
 * top does not matter to verifiers.
 */
export async function signMessage(raw: Buffer, keys: DkimKey | readonly DkimKey[]): Promise<SignResult> {
  const list = Array.isArray(keys) ? (keys as readonly DkimKey[]) : [keys as DkimKey];
  let signed = raw;
  // Ed25519 fields first, RSA on top: nodemailer's signer prepends its field to what it is given.
  for (const key of list.filter((k) => k.algorithm === 'ed25519-sha256')) {
    try {
      const { field } = await signEd25519(raw, key, SIGNED_FIELDS);
      signed = Buffer.concat([Buffer.from(`${field}\r\n`, 'latin1'), signed]);
    } catch (err) {
      return { ok: false, code: 'DKIM_SIGN_FAILED', message: `DKIM signing (ed25519-sha256) for ${key.domain} (selector ${key.selector}) failed: ${(err as Error).message}` };
    }
  }
  for (const key of list.filter((k) => k.algorithm === 'rsa-sha256')) {
    // Signing the already Ed25519-signed message is the same as signing `raw`: DKIM-Signature is not signed.
    const result = await signRsa(signed, key);
    if (!result.ok) return result;
    signed = result.raw;
  }
  return { ok: true, raw: signed };
}
