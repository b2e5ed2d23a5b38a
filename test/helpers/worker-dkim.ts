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

export interface VerifierVerdict {
  pass: boolean;
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
  return {
    pass: signature?.status?.result === 'pass',
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
ok = dkim.verify(message, dnsfunc=dnsfunc)
print('pass' if ok else 'fail')
`;

export function verifyWithDkimpy(raw: Buffer, records: TxtRecords): Promise<VerifierVerdict> {
  return new Promise((resolve, reject) => {
    const child = execFile(SYSTEM_PYTHON, ['-c', DKIMPY_SCRIPT, JSON.stringify(records)], { timeout: 20_000 }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`python3-dkim failed: ${stderr || err.message}`));
      resolve({ pass: stdout.trim() === 'pass', detail: `${stdout.trim()} ${stderr.trim()}`.trim() });
    });
    child.stdin!.end(raw);
  });
}
