import { createHash, createPublicKey, X509Certificate } from 'node:crypto';
import type { TlsaData } from 'dns-packet';
import { z } from 'zod';
import type { SecureResolver } from './secure-dns.ts';

/**
 * DANE for SMTP (RFC 7672): TLSA records of an MX host, trusted only when the resolver
 * validated them (and the MX and address records that led there), and the check of the
 * server's certificate chain against them.
 *
 *  - DANE-EE (usage 3): the server's own certificate or public key matches; names and
 *    dates are not checked (RFC 7672 §3.1.1), so self-signed certificates are fine.
 *  - DANE-TA (usage 2): a certificate of the chain the server sent (or the key of a 2 x 0
 *    record) is the trust anchor; the chain from the server's certificate up to it must
 *    verify, be within its dates and name the MX host (RFC 7672 §3.1.2, §3.2.2).
 *  - PKIX-TA/PKIX-EE (usages 0 and 1) are "unusable" for SMTP (RFC 7672 §3.1.3): with only
 *    those, TLS is still required but the certificate is not checked.
 *
 * Selectors: 0 (whole certificate), 1 (SubjectPublicKeyInfo); matching types: 0 (exact),
 * 1 (SHA-256), 2 (SHA-512).
 */

/**
 * `dane`: DANE towards MX hosts, through the resolver of `dns.servers` (or the system's),
 * which must validate DNSSEC for DANE to apply at all. Answers are cached for their TTL, at
 * most `dns.cacheMaxSeconds`.
 */
export const daneSchema = z
  .object({
    enabled: z.boolean().default(true),
  })
  .strict()
  .prefault({});

export interface TlsaRecord {
  usage: number;
  selector: number;
  matchingType: number;
  data: Buffer;
}

/** What DANE asks for one MX host. */
export type DaneRequirement =
  /** No DANE for this host: the MX or address lookup was not validated, or no TLSA records exist (validated denial). */
  | { kind: 'none'; reason: 'insecure' | 'no-tlsa' | 'not-applicable' }
  /** Validated TLSA records: TLS is required and the certificate must match one of `records`. */
  | { kind: 'match'; records: TlsaRecord[]; ttl: number }
  /** Validated records, none of them usable for SMTP: TLS is required, any certificate (RFC 7672 §3.1.3). */
  | { kind: 'unusable'; records: TlsaRecord[]; ttl: number }
  /** The TLSA lookup failed (bogus DNSSEC, SERVFAIL, timeout): this host must not be used (RFC 7672 §2.2). */
  | { kind: 'failed'; message: string };

export function isUsable(record: TlsaRecord): boolean {
  return (record.usage === 2 || record.usage === 3) && (record.selector === 0 || record.selector === 1) && record.matchingType >= 0 && record.matchingType <= 2;
}

/** `_25._tcp.mx.example.org. IN TLSA 3 1 1 ab12...` style presentation (for logs and TLS-RPT policy strings). */
export function presentTlsa(name: string, record: TlsaRecord): string {
  return `${name} IN TLSA ${record.usage} ${record.selector} ${record.matchingType} ${record.data.toString('hex')}`;
}

export interface DaneLookupOptions {
  resolver: SecureResolver;
  /** Upper bound for caching (seconds); answers are kept for their TTL at most this long. */
  cacheMaxSeconds: number;
  now?: () => number;
}

export interface DaneLookup {
  /**
   * The requirement for `host` (reached on `port`) of recipient `domain`. `viaMx`: the host
   * came from the domain's MX records (their validation counts too); false for an implicit
   * MX (the domain's own address records).
   */
  requirementFor(domain: string, host: string, port: number, viaMx: boolean): Promise<DaneRequirement>;
}

const MAX_CACHED = 10_000;
const MIN_NONE_SECONDS = 60;

export function createDaneLookup(options: DaneLookupOptions): DaneLookup {
  const now = options.now ?? Date.now;
  const cache = new Map<string, { value: DaneRequirement; expiresAt: number }>();

  function remember(key: string, value: DaneRequirement, ttl: number): DaneRequirement {
    const keepMs = Math.min(ttl, options.cacheMaxSeconds) * 1000;
    if (keepMs > 0) {
      if (cache.size >= MAX_CACHED) cache.clear();
      cache.set(key, { value, expiresAt: now() + keepMs });
    }
    return value;
  }

  async function secure(name: string, type: 'MX' | 'A' | 'AAAA'): Promise<{ secure: boolean; ttl: number }> {
    const result = await options.resolver.query(name, type);
    if (!result.ok) return { secure: false, ttl: 0 };
    return { secure: result.answer.authenticated && result.answer.rcode === 'NOERROR', ttl: result.answer.ttl };
  }

  async function lookup(domain: string, host: string, port: number, viaMx: boolean): Promise<{ value: DaneRequirement; ttl: number }> {
    // RFC 7672 §2.2.1: TLSA records of MX hosts named by an insecure MX RRset are not used.
    if (viaMx) {
      const mx = await secure(domain, 'MX');
      if (!mx.secure) return { value: { kind: 'none', reason: 'insecure' }, ttl: mx.ttl };
    }
    // RFC 7672 §2.2.2: nor those of a host whose address records are insecure.
    const [a, aaaa] = await Promise.all([secure(host, 'A'), secure(host, 'AAAA')]);
    if (!a.secure && !aaaa.secure) return { value: { kind: 'none', reason: 'insecure' }, ttl: Math.max(a.ttl, aaaa.ttl) };
    const name = `_${port}._tcp.${host}`;
    const tlsa = await options.resolver.query(name, 'TLSA');
    if (!tlsa.ok) return { value: { kind: 'failed', message: `TLSA lookup of ${name} failed: ${tlsa.message}` }, ttl: 0 };
    const answer = tlsa.answer;
    if (answer.rcode !== 'NOERROR' && answer.rcode !== 'NXDOMAIN') {
      // A validating resolver answers SERVFAIL for bogus data: never a reason to go on without TLS.
      return { value: { kind: 'failed', message: `TLSA lookup of ${name} answered ${answer.rcode} (DNSSEC validation failure?)` }, ttl: 0 };
    }
    if (!answer.authenticated) return { value: { kind: 'none', reason: 'insecure' }, ttl: answer.ttl };
    const records = answer.records.map((r) => {
      const data = (r as { data: TlsaData }).data;
      return { usage: data.usage, selector: data.selector, matchingType: data.matchingType, data: Buffer.from(data.certificate) };
    });
    // A validated NXDOMAIN/NODATA: the host has no TLSA records, DANE does not apply.
    if (records.length === 0) return { value: { kind: 'none', reason: 'no-tlsa' }, ttl: 300 };
    const usable = records.filter(isUsable);
    if (usable.length === 0) return { value: { kind: 'unusable', records, ttl: answer.ttl }, ttl: answer.ttl };
    return { value: { kind: 'match', records: usable, ttl: answer.ttl }, ttl: answer.ttl };
  }

  return {
    async requirementFor(domain, host, port, viaMx) {
      const key = `${domain.toLowerCase()}|${host.toLowerCase()}|${port}|${viaMx}`;
      const cached = cache.get(key);
      if (cached && cached.expiresAt > now()) return cached.value;
      cache.delete(key);
      const { value, ttl } = await lookup(domain.toLowerCase(), host.toLowerCase(), port, viaMx);
      if (value.kind === 'failed') return value;
      // "No DANE" is kept at least a minute even without a TTL (a resolver that does not answer
      // DNSSEC queries, an NXDOMAIN without SOA): otherwise every message would ask again and wait.
      return remember(key, value, value.kind === 'none' ? Math.max(ttl, MIN_NONE_SECONDS) : ttl);
    },
  };
}

/** The bytes a record's selector picks from a certificate. */
function selected(cert: X509Certificate, selector: number): Buffer {
  return selector === 0 ? cert.raw : (cert.publicKey.export({ type: 'spki', format: 'der' }) as Buffer);
}

function digest(data: Buffer, matchingType: number): Buffer {
  if (matchingType === 1) return createHash('sha256').update(data).digest();
  if (matchingType === 2) return createHash('sha512').update(data).digest();
  return data;
}

function matches(cert: X509Certificate, record: TlsaRecord): boolean {
  return digest(selected(cert, record.selector), record.matchingType).equals(record.data);
}

export type DaneVerdict = { ok: true; usage: 2 | 3 } | { ok: false; resultType: 'validation-failure' | 'certificate-host-mismatch' | 'certificate-expired'; message: string };

function withinDates(cert: X509Certificate, at: number): boolean {
  return Date.parse(cert.validFrom) <= at && at <= Date.parse(cert.validTo);
}

/**
 * Checks the chain the server sent (its own certificate first) against validated TLSA
 * records of `mxName`. Only DANE-EE and DANE-TA records count (`records` is expected to
 * hold usable ones; others are skipped).
 */
export function verifyDane(chain: X509Certificate[], records: TlsaRecord[], mxName: string, at: number = Date.now()): DaneVerdict {
  const leaf = chain[0];
  if (!leaf) return { ok: false, resultType: 'validation-failure', message: 'the server sent no certificate' };
  if (records.some((r) => r.usage === 3 && isUsable(r) && matches(leaf, r))) return { ok: true, usage: 3 };

  let why = 'its certificate matches no TLSA record';
  for (const record of records.filter((r) => r.usage === 2 && isUsable(r))) {
    // The trust anchor: a certificate the server sent above its own, or a public key the record carries in full.
    let anchorIndex = chain.findIndex((cert, i) => i > 0 && matches(cert, record));
    let anchorKey = anchorIndex > 0 ? chain[anchorIndex]!.publicKey : undefined;
    if (anchorIndex < 0 && record.matchingType === 0) {
      try {
        anchorKey = record.selector === 0 ? new X509Certificate(record.data).publicKey : createPublicKey({ key: record.data, format: 'der', type: 'spki' });
        anchorIndex = chain.length;
      } catch {
        continue;
      }
    }
    if (anchorIndex < 0 || !anchorKey) continue;
    // Every link below the anchor must be issued and signed by the next certificate up.
    const anchor = anchorKey;
    const keyAbove = (i: number) => (i + 1 === anchorIndex ? anchor : chain[i + 1]!.publicKey);
    let linked = true;
    for (let i = 0; i < anchorIndex && linked; i++) {
      const issuer = chain[i + 1];
      linked = chain[i]!.verify(keyAbove(i)) && (i + 1 === chain.length || issuer === undefined || chain[i]!.checkIssued(issuer));
    }
    if (!linked) {
      why = 'its chain does not lead to the TLSA trust anchor';
      continue;
    }
    // The anchor's own dates are not checked (RFC 7672 §3.1.2 leaves them to the domain's TLSA records).
    if (!chain.slice(0, anchorIndex).every((cert) => withinDates(cert, at))) {
      return { ok: false, resultType: 'certificate-expired', message: `the certificate chain of ${mxName} is outside its validity dates` };
    }
    if (leaf.checkHost(mxName) === undefined) {
      return { ok: false, resultType: 'certificate-host-mismatch', message: `the certificate of ${mxName} does not name it (DANE-TA)` };
    }
    return { ok: true, usage: 2 };
  }
  return { ok: false, resultType: 'validation-failure', message: `${mxName}: ${why}` };
}
