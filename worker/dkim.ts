import { createPrivateKey, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import DKIM from 'nodemailer/lib/dkim';

/**
 * DKIM signing (RFC 6376) with nodemailer's signer: rsa-sha256, relaxed/relaxed.
 * DESIGN.md says why not dkim-signer (its signatures failed to verify for empty, 8-bit
 * and UTF-8 bodies). nodemailer signs nothing, silently, when a key is unusable, so keys
 * are checked once at start-up and every signed message is checked for its signature.
 */

export interface DkimKey {
  /** The d= domain. */
  domain: string;
  selector: string;
  /** Parsed once: a PEM string per signature is several times slower (DESIGN.md). */
  privateKey: KeyObject;
}

/** Signing keys by lower-case domain. */
export type DkimKeys = ReadonlyMap<string, DkimKey>;

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

export type KeyCheck = { ok: true; key: KeyObject } | { ok: false; message: string };

/** Reads and checks a DKIM private key file: it must be an RSA private key of MIN_RSA_BITS or more. */
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
  if (key.asymmetricKeyType !== 'rsa') {
    return { ok: false, message: `${file} is a ${key.asymmetricKeyType ?? 'non-RSA'} key; DKIM signing here needs an RSA key (rsa-sha256)` };
  }
  const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
  if (bits < MIN_RSA_BITS) return { ok: false, message: `${file} is a ${bits}-bit RSA key; at least ${MIN_RSA_BITS} bits are needed (2048 recommended)` };
  return { ok: true, key };
}

/** The configured key for `domain`, else for its closest parent domain (d= may be a parent of the sender's domain). */
export function keyFor(keys: DkimKeys, domain: string): DkimKey | undefined {
  const labels = domain.toLowerCase().split('.');
  for (let i = 0; i < labels.length; i++) {
    const key = keys.get(labels.slice(i).join('.'));
    if (key) return key;
  }
  return undefined;
}

export type SignResult = { ok: true; raw: Buffer } | { ok: false; code: 'DKIM_SIGN_FAILED'; message: string };

function collect(stream: NodeJS.ReadableStream): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    stream.on('data', (chunk: Buffer) => chunks.push(chunk));
    stream.once('error', reject);
    stream.once('end', () => resolve(Buffer.concat(chunks)));
  });
}

/** Prepends a DKIM-Signature; fails (never silently sends unsigned) when nodemailer produced none. */
export async function signMessage(raw: Buffer, key: DkimKey): Promise<SignResult> {
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
