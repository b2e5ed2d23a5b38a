#!/usr/bin/env -S npx tsx
/**
 * key-generator: creates what an operator needs to enrol a host or a sending domain.
 *
 *   key-generator.ts --fqdn app1.example.com [--sender-domain example.com] [--postoffice-url URL] [--json]
 *       A fresh 256-bit key (CSPRNG) and the two config snippets that use it:
 *       the mailman config for that host and the client entry for the post office.
 *
 *   key-generator.ts --dkim example.com --selector s2026 [--algorithm rsa|ed25519] [--bits 2048] [--out DIR] [--ehlo mx-out.example.com] [--ip 192.0.2.10]
 *       A key pair for DKIM (RSA, default 2048 bits, or Ed25519, RFC 8463); the private key
 *       is written with mode 0600 and the DNS records to publish are printed (DKIM TXT, SPF,
 *       DMARC, and A/PTR/MX advice).
 *
 *   key-generator.ts --smtp-user NAME [--allowed-sender ADDRESS|@DOMAIN ...] [--password-stdin] [--json]
 *       An SMTP AUTH user for mailman's auth.users: the password read from stdin (one line), or a
 *       fresh one (24 bytes from the CSPRNG) printed this once, and its scrypt hash, which is
 *       all the config keeps.
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { hashPassword } from './mailman/password-hash.ts';
import { isSenderPattern, isValidUserName } from './mailman/smtp-auth.ts';
import { isValidDomain } from './shared/address.ts';

const USAGE = `usage:
  key-generator.ts --fqdn HOST [--sender-domain DOMAIN ...] [--postoffice-url URL] [--json]
  key-generator.ts --dkim DOMAIN --selector SELECTOR [--algorithm rsa|ed25519] [--bits 2048] [--out DIR] [--ehlo NAME] [--ip ADDRESS] [--json]
  key-generator.ts --smtp-user NAME [--allowed-sender ADDRESS|@DOMAIN ...] [--password-stdin] [--json]`;

export const HOST_KEY_BYTES = 32;

export function generateHostKey(): string {
  return randomBytes(HOST_KEY_BYTES).toString('hex');
}

/** The registrable-looking parent of a host name; the operator can override it. */
function parentDomain(fqdn: string): string {
  const labels = fqdn.split('.');
  return labels.length > 2 ? labels.slice(1).join('.') : fqdn;
}

export function hostEnrolment(fqdn: string, key: string, senderDomains: string[], postofficeUrl: string) {
  const mailman = [
    `# mailman.yaml on ${fqdn}`,
    'postoffice:',
    `  url: ${postofficeUrl}`,
    `  fqdn: ${fqdn}`,
    `  key: ${key}`,
  ].join('\n');
  const postoffice = [
    '# postoffice.yaml: add under `clients:` (remove the entry to revoke the host)',
    'clients:',
    `  ${fqdn}:`,
    `    key: ${key}`,
    `    senderDomains: [${senderDomains.join(', ')}]`,
  ].join('\n');
  return { fqdn, key, senderDomains, mailman, postoffice };
}

export function generateSmtpPassword(): string {
  return randomBytes(24).toString('base64url');
}

/** The auth.users entry for mailman's config; the password itself is in no part of it. */
export function smtpUserEnrolment(name: string, password: string, allowedSenders: string[] | undefined) {
  const passwordHash = hashPassword(password);
  const mailman = [
    '# mailman.yaml: add under auth.users (restart mailman; remove the entry to revoke the user)',
    'auth:',
    '  users:',
    `    ${JSON.stringify(name)}:`,
    `      passwordHash: ${JSON.stringify(passwordHash)}`,
    ...(allowedSenders ? [`      allowedSenders: [${allowedSenders.map((s) => JSON.stringify(s)).join(', ')}]`] : []),
  ].join('\n');
  return { user: name, passwordHash, ...(allowedSenders ? { allowedSenders } : {}), mailman };
}

/** DNS TXT strings are at most 255 octets each; long DKIM keys are split into several. */
function txtStrings(value: string): string {
  const parts: string[] = [];
  for (let i = 0; i < value.length; i += 255) parts.push(`"${value.slice(i, i + 255)}"`);
  return parts.join(' ');
}

export type DkimKeyAlgorithm = 'rsa' | 'ed25519';

export function dkimEnrolment(domain: string, selector: string, bits: number, outDir: string, ehlo?: string, ip?: string, algorithm: DkimKeyAlgorithm = 'rsa') {
  const { privateKey, publicKey } = algorithm === 'ed25519' ? generateKeyPairSync('ed25519') : generateKeyPairSync('rsa', { modulusLength: bits });
  const privatePem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  const spki = publicKey.export({ type: 'spki', format: 'der' });
  // RFC 8463 §4.2: an Ed25519 record carries the bare 32-byte key, not the SPKI structure RSA records use.
  const publicDer = (algorithm === 'ed25519' ? spki.subarray(-32) : spki).toString('base64');
  mkdirSync(outDir, { recursive: true, mode: 0o700 });
  const keyFile = resolve(join(outDir, `${domain}.${selector}.key`));
  if (existsSync(keyFile)) throw new Error(`refusing to overwrite ${keyFile}`);
  writeFileSync(keyFile, privatePem, { mode: 0o600, flag: 'wx' });

  const ehloName = ehlo ?? `mail-out.${domain}`;
  const spfMechanism = ip ? (ip.includes(':') ? `ip6:${ip}` : `ip4:${ip}`) : `a:${ehloName}`;
  const records = {
    dkim: `${selector}._domainkey.${domain}. IN TXT ${txtStrings(`v=DKIM1; k=${algorithm}; p=${publicDer}`)}`,
    spf: `${domain}. IN TXT "v=spf1 ${spfMechanism} ~all"`,
    dmarc: `_dmarc.${domain}. IN TXT "v=DMARC1; p=none; rua=mailto:dmarc-reports@${domain}; adkim=r; aspf=r"`,
  };
  const advice = [
    `${ehloName}. IN A ${ip ?? '<the worker\'s public IPv4 address>'}   (the worker's EHLO name must resolve to its sending address)`,
    `PTR for ${ip ?? 'that address'} -> ${ehloName}.   (set by whoever owns the address block; receivers check forward-confirmed reverse DNS)`,
    `${domain}. IN MX 10 <your inbound mail host>.   (bounces and replies to ${domain} must be deliverable somewhere)`,
    'Start DMARC at p=none, read the reports, then move to p=quarantine and p=reject.',
    ...(algorithm === 'ed25519'
      ? ['Ed25519 (RFC 8463) is not yet verified by every receiver: keep an RSA key for the domain too, and list both under dkim.' + domain + ' (every message gets both signatures).']
      : []),
  ];
  const worker =
    algorithm === 'ed25519'
      ? ['# worker.yaml: the Ed25519 key next to the domain\'s RSA key', 'dkim:', `  ${domain}:`, '    - selector: <the RSA selector>', '      keyFile: <the RSA key file>', `    - selector: ${selector}`, `      keyFile: ${keyFile}`].join('\n')
      : ['# worker.yaml', 'dkim:', `  ${domain}:`, `    selector: ${selector}`, `    keyFile: ${keyFile}`].join('\n');
  return { domain, selector, algorithm, ...(algorithm === 'rsa' ? { bits } : {}), keyFile, records, advice, worker };
}

function main(argv: string[]): number {
  let args;
  try {
    args = parseArgs({
      args: argv,
      options: {
        fqdn: { type: 'string' },
        'sender-domain': { type: 'string', multiple: true },
        'postoffice-url': { type: 'string', default: 'https://postoffice.example.com' },
        dkim: { type: 'string' },
        selector: { type: 'string' },
        algorithm: { type: 'string', default: 'rsa' },
        bits: { type: 'string', default: '2048' },
        out: { type: 'string', default: './data/dkim' },
        ehlo: { type: 'string' },
        ip: { type: 'string' },
        'smtp-user': { type: 'string' },
        'allowed-sender': { type: 'string', multiple: true },
        'password-stdin': { type: 'boolean', default: false },
        json: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
      strict: true,
    }).values;
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n${USAGE}\n`);
    return 64;
  }
  if (args.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  if (args.fqdn) {
    if (!isValidDomain(args.fqdn) || !args.fqdn.includes('.')) {
      process.stderr.write(`--fqdn: not a fully qualified host name: ${args.fqdn}\n`);
      return 64;
    }
    const senderDomains = args['sender-domain'] ?? [parentDomain(args.fqdn)];
    const bad = senderDomains.find((d) => d !== '*' && !isValidDomain(d));
    if (bad) {
      process.stderr.write(`--sender-domain: not a domain: ${bad}\n`);
      return 64;
    }
    const enrolment = hostEnrolment(args.fqdn, generateHostKey(), senderDomains, args['postoffice-url']);
    process.stdout.write(args.json ? `${JSON.stringify(enrolment, null, 2)}\n` : `${enrolment.mailman}\n\n${enrolment.postoffice}\n`);
    return 0;
  }
  if (args['smtp-user'] !== undefined) return smtpUser(args['smtp-user'], args['allowed-sender'], args['password-stdin'], args.json);
  if (args.dkim) {
    const bits = Number(args.bits);
    if (!isValidDomain(args.dkim)) {
      process.stderr.write(`--dkim: not a domain: ${args.dkim}\n`);
      return 64;
    }
    if (!args.selector || !/^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?$/.test(args.selector)) {
      process.stderr.write('--selector: required, letters, digits and hyphens\n');
      return 64;
    }
    if (args.algorithm !== 'rsa' && args.algorithm !== 'ed25519') {
      process.stderr.write('--algorithm: rsa or ed25519\n');
      return 64;
    }
    if (![1024, 2048, 3072, 4096].includes(bits)) {
      process.stderr.write('--bits: one of 1024, 2048, 3072, 4096 (2048 recommended)\n');
      return 64;
    }
    let enrolment;
    try {
      enrolment = dkimEnrolment(args.dkim, args.selector, bits, args.out, args.ehlo, args.ip, args.algorithm);
    } catch (err) {
      process.stderr.write(`${(err as Error).message}\n`);
      return 73;
    }
    if (args.json) {
      process.stdout.write(`${JSON.stringify(enrolment, null, 2)}\n`);
    } else {
      process.stdout.write(
        [
          `# private key written to ${enrolment.keyFile} (mode 0600)`,
          '',
          '# DNS records to publish',
          enrolment.records.dkim,
          enrolment.records.spf,
          enrolment.records.dmarc,
          '',
          '# and check',
          ...enrolment.advice.map((line) => `#   ${line}`),
          '',
          enrolment.worker,
          '',
        ].join('\n'),
      );
    }
    return 0;
  }
  process.stderr.write(`${USAGE}\n`);
  return 64;
}

function smtpUser(name: string, allowedSenders: string[] | undefined, fromStdin: boolean, json: boolean): number {
  if (!isValidUserName(name)) {
    process.stderr.write('--smtp-user: 1 to 255 characters without spaces or control characters\n');
    return 64;
  }
  const bad = allowedSenders?.find((s) => !isSenderPattern(s));
  if (bad !== undefined) {
    process.stderr.write(`--allowed-sender: not an address or @domain: ${bad}\n`);
    return 64;
  }
  let password: string;
  if (fromStdin) {
    try {
      password = readFileSync(0, 'utf8').replace(/\r?\n$/, '');
    } catch (err) {
      process.stderr.write(`cannot read the password from stdin: ${(err as Error).message}\n`);
      return 66;
    }
    if (password === '' || /[\r\n]/.test(password)) {
      process.stderr.write('--password-stdin: expected one non-empty line\n');
      return 64;
    }
  } else {
    password = generateSmtpPassword();
  }
  const enrolment = smtpUserEnrolment(name, password, allowedSenders);
  const shown = fromStdin ? {} : { password };
  if (json) process.stdout.write(`${JSON.stringify({ ...enrolment, ...shown }, null, 2)}\n`);
  else process.stdout.write(`${fromStdin ? '' : `# password for ${name} (shown this once, stored nowhere): ${password}\n\n`}${enrolment.mailman}\n`);
  return 0;
}

if (import.meta.url === `file://${process.argv[1]}` || process.argv[1]?.endsWith('key-generator.ts')) {
  process.exitCode = main(process.argv.slice(2));
}
