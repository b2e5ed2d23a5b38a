import { execFile } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dkimVerify } from 'mailauth/lib/dkim/verify.js';

/**
 * Two independent DKIM verifiers for delivered messages: mailauth (Node) and Debian's
 * python3-dkim (dkimpy, the library behind `dkimverify`). Both read the public keys
 * from `records` (DNS name -> TXT value) instead of DNS, so the tests never leave loopback.
 */

export type TxtRecords = Record<string, string>;

export interface TestDkimKey {
  domain: string;
  selector: string;
  keyFile: string;
  /** `<selector>._domainkey.<domain>` -> `v=DKIM1; k=rsa; p=...` */
  records: TxtRecords;
}

/** An RSA key pair written like key-generator.ts writes it (PKCS#8 PEM, mode 0600). */
export function makeDkimKey(domain: string, selector: string, bits = 2048, dir = mkdtempSync(join(tmpdir(), 'hedwig-dkim-'))): TestDkimKey {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: bits });
  const keyFile = join(dir, `${domain}.${selector}.key`);
  writeFileSync(keyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  const p = publicKey.export({ type: 'spki', format: 'der' }).toString('base64');
  return { domain, selector, keyFile, records: { [`${selector}._domainkey.${domain}`]: `v=DKIM1; k=rsa; p=${p}` } };
}

/** An Ed25519 key pair (PKCS#8 PEM); its record carries the bare 32-byte public key (RFC 8463 §4.2). */
export function makeEd25519DkimKey(domain: string, selector: string, dir = mkdtempSync(join(tmpdir(), 'hedwig-dkim-'))): TestDkimKey {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const keyFile = join(dir, `${domain}.${selector}.key`);
  writeFileSync(keyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  const p = publicKey.export({ type: 'spki', format: 'der' }).subarray(-32).toString('base64');
  return { domain, selector, keyFile, records: { [`${selector}._domainkey.${domain}`]: `v=DKIM1; k=ed25519; p=${p}` } };
}

export interface VerifierVerdict {
  /** The first signature verified. */
  pass: boolean;
  /** Every signature of the message, top down: its algorithm (a=) and whether it verified. */
  signatures?: Array<{ algorithm: string; pass: boolean }>;
  /** The signing domain (d=) of the first signature, when there is one. */
  domain?: string;
  /** The signed header fields (h=), lower case. */
  signedFields?: string[];
  detail: string;
}

export async function verifyWithMailauth(raw: Buffer, records: TxtRecords): Promise<VerifierVerdict> {
  const resolver = async (name: string, type: string): Promise<string[][]> => {
    const value = type === 'TXT' ? records[name.replace(/\.$/, '').toLowerCase()] : undefined;
    if (value === undefined) throw Object.assign(new Error(`no ${type} record for ${name}`), { code: 'ENOTFOUND' });
    return [[value]];
  };
  const result = await dkimVerify(raw, { resolver });
  const first = result.results[0];
  const signature = first as unknown as { status?: { result?: string; comment?: string }; signingDomain?: string; signingHeaders?: { keys?: string } } | undefined;
  const all = result.results as unknown as Array<{ status?: { result?: string }; algo?: string }>;
  return {
    pass: signature?.status?.result === 'pass',
    signatures: all.map((r) => ({ algorithm: r.algo ?? '?', pass: r.status?.result === 'pass' })),
    domain: signature?.signingDomain,
    signedFields: signature?.signingHeaders?.keys?.split(':').map((k) => k.trim().toLowerCase()),
    detail: JSON.stringify(result.results.map((r) => (r as { status?: unknown }).status)),
  };
}

/** Python 3 from Debian: the pyenv interpreter earlier on PATH may not have python3-dkim. */
const SYSTEM_PYTHON = '/usr/bin/python3';
const DKIMPY_SCRIPT = `
import json, sys, dkim
records = json.loads(sys.argv[1])
def dnsfunc(name, timeout=5):
    value = records.get(name.decode().rstrip('.').lower())
    return value.encode() if value is not None else None
message = sys.stdin.buffer.read()
d = dkim.DKIM(message)
results = []
for i, (name, value) in enumerate(h for h in d.headers if h[0].lower() == b'dkim-signature'):
    algorithm = dkim.util.parse_tag_value(value).get(b'a', b'?').decode()
    results.append({'algorithm': algorithm, 'pass': bool(d.verify(idx=i, dnsfunc=dnsfunc))})
print(json.dumps(results))
`;

export function verifyWithDkimpy(raw: Buffer, records: TxtRecords): Promise<VerifierVerdict> {
  return new Promise((resolve, reject) => {
    const child = execFile(SYSTEM_PYTHON, ['-c', DKIMPY_SCRIPT, JSON.stringify(records)], { timeout: 20_000 }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`python3-dkim failed: ${stderr || err.message}`));
      const signatures = JSON.parse(stdout) as Array<{ algorithm: string; pass: boolean }>;
      resolve({ pass: signatures[0]?.pass === true, signatures, detail: `${stdout.trim()} ${stderr.trim()}`.trim() });
    });
    child.stdin!.end(raw);
  });
}
