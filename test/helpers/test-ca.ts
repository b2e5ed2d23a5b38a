import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** PEM files of a private CA and a server certificate it signed, made by the openssl CLI. */
export interface TestCa {
  dir: string;
  caCert: string;
  caKey: string;
  /** Server certificate for `names` (DNS names and IP addresses in subjectAltName). */
  cert: string;
  key: string;
}

function openssl(args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile('openssl', args, { timeout: 30_000 }, (err, _stdout, stderr) => (err ? reject(new Error(`openssl ${args[0]}: ${stderr || err.message}`)) : resolve()));
  });
}

/**
 * A two-level PKI as an operator would make it for a private post office: a CA
 * certificate (what mailman's postoffice.caFile points at) and a server certificate with
 * subjectAltName entries, signed by that CA. EC P-256 keeps it fast.
 */
export async function makeTestCa(names: string[] = ['127.0.0.1', 'localhost'], dir = mkdtempSync(join(tmpdir(), 'hedwig-test-ca-'))): Promise<TestCa> {
  const files = { caCert: join(dir, 'ca.crt'), caKey: join(dir, 'ca.key'), cert: join(dir, 'server.crt'), key: join(dir, 'server.key') };
  const csr = join(dir, 'server.csr');
  const ext = join(dir, 'server.ext');
  const san = names.map((name) => (/^[\d.]+$|:/.test(name) ? `IP:${name}` : `DNS:${name}`)).join(',');
  writeFileSync(ext, `basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=${san}\n`);
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  await openssl(['req', '-x509', ...ec, '-days', '2', '-subj', '/CN=hedwig test CA', '-keyout', files.caKey, '-out', files.caCert,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  await openssl(['req', '-new', ...ec, '-subj', `/CN=${names[0]}`, '-keyout', files.key, '-out', csr]);
  await openssl(['x509', '-req', '-in', csr, '-CA', files.caCert, '-CAkey', files.caKey, '-CAcreateserial', '-days', '2', '-extfile', ext, '-out', files.cert]);
  return { dir, ...files };
}
