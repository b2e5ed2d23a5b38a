import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, X509Certificate } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { readFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import dnsPacket, { type Answer } from 'dns-packet';
import { createDaneLookup, verifyDane, type TlsaRecord } from '../../worker/dane.ts';
import { createSecureResolver, type SecureResolver, type SecureQueryResult } from '../../worker/secure-dns.ts';

/**
 * DANE (RFC 7672): which TLSA records count (only validated ones, behind validated MX and
 * address records), and how a certificate chain is matched against them. Certificates are
 * fixtures made once with openssl (test/fixtures/dane, valid for 100 years): the unit tests
 * need no openssl.
 */
const fixture = (name: string) => new X509Certificate(readFileSync(join(import.meta.dirname, '../fixtures/dane', name)));
const ca = fixture('ca.crt');
const otherCa = fixture('other-ca.crt');
const leaf = fixture('leaf.crt');
const selfSigned = fixture('self-signed.crt');
const sha256 = (data: Buffer) => createHash('sha256').update(data).digest();
const spki = (cert: X509Certificate) => cert.publicKey.export({ type: 'spki', format: 'der' }) as Buffer;
const tlsa = (usage: number, selector: number, matchingType: number, data: Buffer): TlsaRecord => ({ usage, selector, matchingType, data });

describe('DANE certificate matching', () => {
  it('DANE-EE 3 1 1 matches the server key, whatever its name, issuer or dates', () => {
    assert.deepEqual(verifyDane([selfSigned], [tlsa(3, 1, 1, sha256(spki(selfSigned)))], 'other-name.test'), { ok: true, usage: 3 });
    assert.deepEqual(verifyDane([leaf, ca], [tlsa(3, 0, 1, sha256(leaf.raw))], 'mx.dane.test', Date.parse('2200-01-01')), { ok: true, usage: 3 });
    assert.deepEqual(verifyDane([leaf], [tlsa(3, 1, 0, spki(leaf))], 'mx.dane.test'), { ok: true, usage: 3 });
    const wrong = verifyDane([selfSigned], [tlsa(3, 1, 1, sha256(spki(leaf)))], 'mx.dane.test');
    assert.equal(wrong.ok, false);
    if (!wrong.ok) assert.equal(wrong.resultType, 'validation-failure');
  });

  it('DANE-TA 2 x x: the chain must lead to the anchor and the certificate must name the MX host', () => {
    assert.deepEqual(verifyDane([leaf, ca], [tlsa(2, 0, 1, sha256(ca.raw))], 'mx.dane.test'), { ok: true, usage: 2 });
    assert.deepEqual(verifyDane([leaf, ca], [tlsa(2, 1, 2, createHash('sha512').update(spki(ca)).digest())], 'mx.dane.test'), { ok: true, usage: 2 });
    // A full trust-anchor key in the record: the server need not send the CA.
    assert.deepEqual(verifyDane([leaf], [tlsa(2, 1, 0, spki(ca))], 'mx.dane.test'), { ok: true, usage: 2 });
    assert.deepEqual(verifyDane([leaf], [tlsa(2, 0, 0, ca.raw)], 'mx.dane.test'), { ok: true, usage: 2 });

    const nameMismatch = verifyDane([leaf, ca], [tlsa(2, 0, 1, sha256(ca.raw))], 'mx.elsewhere.test');
    assert.ok(!nameMismatch.ok && nameMismatch.resultType === 'certificate-host-mismatch');
    const expired = verifyDane([leaf, ca], [tlsa(2, 0, 1, sha256(ca.raw))], 'mx.dane.test', Date.parse('2200-01-01'));
    assert.ok(!expired.ok && expired.resultType === 'certificate-expired');
    // The anchor of another CA: the leaf is not issued by it, even when the server sends it along.
    const otherAnchor = verifyDane([leaf, otherCa], [tlsa(2, 0, 1, sha256(otherCa.raw))], 'mx.dane.test');
    assert.ok(!otherAnchor.ok && /does not lead to the TLSA trust anchor/.test(otherAnchor.message), JSON.stringify(otherAnchor));
    assert.equal(verifyDane([leaf], [tlsa(2, 1, 0, spki(otherCa))], 'mx.dane.test').ok, false);
    // A 2 x x record never matches the server's own certificate as its anchor.
    assert.equal(verifyDane([selfSigned], [tlsa(2, 0, 1, sha256(selfSigned.raw))], 'mx.dane.test').ok, false);
  });

  it('ignores PKIX usages (0, 1) and unknown selectors or matching types', () => {
    assert.equal(verifyDane([leaf, ca], [tlsa(1, 1, 1, sha256(spki(leaf))), tlsa(0, 0, 1, sha256(ca.raw)), tlsa(3, 2, 1, sha256(spki(leaf)))], 'mx.dane.test').ok, false);
    assert.equal(verifyDane([], [tlsa(3, 1, 1, sha256(spki(leaf)))], 'mx.dane.test').ok, false);
  });
});

/** A resolver that answers from a table: name|type -> result. */
function tableResolver(table: Record<string, { authenticated: boolean; rcode?: string; records?: Answer[]; ttl?: number } | 'timeout'>): SecureResolver & { asked: string[] } {
  const asked: string[] = [];
  return {
    asked,
    async query(name, type): Promise<SecureQueryResult> {
      asked.push(`${name}|${type}`);
      const entry = table[`${name}|${type}`];
      if (entry === 'timeout') return { ok: false, code: 'DNS_TIMEOUT', message: 'timeout' };
      if (!entry) return { ok: true, answer: { rcode: 'NXDOMAIN', authenticated: true, records: [], ttl: 0 } };
      return { ok: true, answer: { rcode: entry.rcode ?? 'NOERROR', authenticated: entry.authenticated, records: entry.records ?? [], ttl: entry.ttl ?? 300 } };
    },
  };
}

const tlsaAnswer = (name: string, record: TlsaRecord): Answer =>
  ({ type: 'TLSA', name, ttl: 300, class: 'IN', data: { usage: record.usage, selector: record.selector, matchingType: record.matchingType, certificate: record.data } }) as Answer;

describe('DANE requirement of an MX host', () => {
  const ee = tlsa(3, 1, 1, sha256(spki(leaf)));
  const secureHost = { 'dane.test|MX': { authenticated: true }, 'mx.dane.test|A': { authenticated: true }, 'mx.dane.test|AAAA': { authenticated: true } };

  it('uses validated TLSA records behind a validated MX and address lookup', async () => {
    const resolver = tableResolver({ ...secureHost, '_25._tcp.mx.dane.test|TLSA': { authenticated: true, records: [tlsaAnswer('_25._tcp.mx.dane.test', ee)] } });
    const lookup = createDaneLookup({ resolver, cacheMaxSeconds: 300 });
    const requirement = await lookup.requirementFor('dane.test', 'mx.dane.test', 25, true);
    assert.equal(requirement.kind, 'match');
    assert.ok(requirement.kind === 'match' && requirement.records[0]!.data.equals(ee.data));
    const asked = resolver.asked.length;
    await lookup.requirementFor('dane.test', 'mx.dane.test', 25, true);
    assert.equal(resolver.asked.length, asked, 'cached for its TTL');
  });

  it('does not apply DANE when the MX, the address or the TLSA answer is not validated', async () => {
    const unsignedTlsa = { '_25._tcp.mx.dane.test|TLSA': { authenticated: false, records: [tlsaAnswer('_25._tcp.mx.dane.test', ee)] } };
    const cases = [
      { ...secureHost, 'dane.test|MX': { authenticated: false }, ...unsignedTlsa },
      { ...secureHost, 'mx.dane.test|A': { authenticated: false }, 'mx.dane.test|AAAA': { authenticated: false }, ...unsignedTlsa },
      { ...secureHost, ...unsignedTlsa },
    ];
    for (const table of cases) {
      const requirement = await createDaneLookup({ resolver: tableResolver(table), cacheMaxSeconds: 0 }).requirementFor('dane.test', 'mx.dane.test', 25, true);
      assert.deepEqual(requirement, { kind: 'none', reason: 'insecure' });
    }
    // A resolver that never answers DNSSEC queries: "no DANE", and not asked again for every message.
    const silentResolver = tableResolver({ 'dane.test|MX': 'timeout' });
    const cached = createDaneLookup({ resolver: silentResolver, cacheMaxSeconds: 300 });
    assert.deepEqual(await cached.requirementFor('dane.test', 'mx.dane.test', 25, true), { kind: 'none', reason: 'insecure' });
    await cached.requirementFor('dane.test', 'mx.dane.test', 25, true);
    assert.equal(silentResolver.asked.length, 1);
    // An implicit MX (no MX records) only needs its address records validated.
    const implicit = tableResolver({ 'mx.dane.test|A': { authenticated: true }, '_25._tcp.mx.dane.test|TLSA': { authenticated: true, records: [tlsaAnswer('x', ee)] } });
    assert.equal((await createDaneLookup({ resolver: implicit, cacheMaxSeconds: 0 }).requirementFor('mx.dane.test', 'mx.dane.test', 25, false)).kind, 'match');
    assert.ok(!implicit.asked.includes('mx.dane.test|MX'));
  });

  it('a validated denial means no DANE; SERVFAIL (bogus) or a timeout fails the host, never a plaintext fallback', async () => {
    assert.deepEqual(await createDaneLookup({ resolver: tableResolver(secureHost), cacheMaxSeconds: 0 }).requirementFor('dane.test', 'mx.dane.test', 25, true), { kind: 'none', reason: 'no-tlsa' });
    const bogus = await createDaneLookup({ resolver: tableResolver({ ...secureHost, '_25._tcp.mx.dane.test|TLSA': { authenticated: false, rcode: 'SERVFAIL' } }), cacheMaxSeconds: 0 }).requirementFor('dane.test', 'mx.dane.test', 25, true);
    assert.equal(bogus.kind, 'failed');
    const timeout = await createDaneLookup({ resolver: tableResolver({ ...secureHost, '_25._tcp.mx.dane.test|TLSA': 'timeout' }), cacheMaxSeconds: 0 }).requirementFor('dane.test', 'mx.dane.test', 25, true);
    assert.equal(timeout.kind, 'failed');
  });

  it('validated records that are all unusable for SMTP (PKIX usages) still require TLS', async () => {
    const pkix = tlsa(1, 1, 1, sha256(spki(leaf)));
    const requirement = await createDaneLookup({
      resolver: tableResolver({ ...secureHost, '_25._tcp.mx.dane.test|TLSA': { authenticated: true, records: [tlsaAnswer('x', pkix)] } }),
      cacheMaxSeconds: 0,
    }).requirementFor('dane.test', 'mx.dane.test', 25, true);
    assert.equal(requirement.kind, 'unusable');
  });
});

describe('secure DNS queries (AD bit)', () => {
  const closers: Array<() => void> = [];
  after(() => closers.forEach((close) => close()));

  /** A UDP "resolver" that answers with AD set and, for TLSA, a truncated UDP answer that TCP then completes. */
  async function fakeResolver(): Promise<string> {
    const answerFor = (query: dnsPacket.DecodedPacket, truncated: boolean): Buffer => {
      const q = query.questions![0]!;
      const answers: Answer[] = q.type === 'TLSA' && !truncated ? [tlsaAnswer(q.name, tlsa(3, 1, 1, Buffer.alloc(32, 7)))] : q.type === 'A' ? [{ type: 'A', name: q.name, ttl: 60, data: '192.0.2.1' } as Answer] : [];
      const flags = dnsPacket.RECURSION_AVAILABLE | (q.name.startsWith('secure') ? dnsPacket.AUTHENTIC_DATA : 0) | (truncated ? dnsPacket.TRUNCATED_RESPONSE : 0);
      return dnsPacket.encode({ type: 'response', id: query.id, flags, questions: query.questions, answers });
    };
    // The OS picks the TCP port; the UDP socket then takes the same number (a resolver is one
    // address for both). Picking UDP first raced other processes for the TCP port on a busy machine.
    const tcp = createServer((socket) => {
      socket.once('data', (data) => socket.end(dnsPacket.streamEncode({ ...dnsPacket.decode(answerFor(dnsPacket.streamDecode(data) as dnsPacket.DecodedPacket, false)), type: 'response' })));
    });
    closers.push(() => tcp.close());
    await new Promise<void>((resolve, reject) => tcp.once('error', reject).listen(0, '127.0.0.1', resolve));
    const port = (tcp.address() as AddressInfo).port;
    const udp = createSocket('udp4');
    udp.on('message', (message, peer) => {
      const query = dnsPacket.decode(message);
      udp.send(answerFor(query, query.questions![0]!.type === 'TLSA'), peer.port, peer.address);
    });
    closers.push(() => udp.close());
    await new Promise<void>((resolve, reject) => udp.once('error', reject).bind(port, '127.0.0.1', resolve));
    return `127.0.0.1:${port}`;
  }

  it('reports the AD bit, the records of the asked type and their TTL; retries a truncated answer over TCP', async () => {
    const resolver = createSecureResolver({ servers: [await fakeResolver()], timeoutMs: 2000 });
    const a = await resolver.query('secure.example', 'A');
    assert.ok(a.ok);
    assert.deepEqual({ ad: a.answer.authenticated, rcode: a.answer.rcode, n: a.answer.records.length, ttl: a.answer.ttl }, { ad: true, rcode: 'NOERROR', n: 1, ttl: 60 });
    const insecure = await resolver.query('plain.example', 'A');
    assert.ok(insecure.ok && insecure.answer.authenticated === false);
    const viaTcp = await resolver.query('secure.example', 'TLSA');
    assert.ok(viaTcp.ok && viaTcp.answer.records.length === 1, JSON.stringify(viaTcp));
  });

  it('a server that never answers is a timeout value, not an exception', async () => {
    const silent = createSocket('udp4');
    await new Promise<void>((resolve) => silent.bind(0, '127.0.0.1', resolve));
    closers.push(() => silent.close());
    const result = await createSecureResolver({ servers: [`127.0.0.1:${silent.address().port}`], timeoutMs: 200 }).query('x.example', 'TLSA');
    assert.equal(result.ok, false);
    if (!result.ok) assert.equal(result.code, 'DNS_TIMEOUT');
  });
});
