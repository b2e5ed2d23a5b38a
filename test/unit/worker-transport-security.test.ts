import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate, createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import type { DaneLookup, DaneRequirement } from '../../worker/dane.ts';
import type { MtaSts, StsLookup, StsPolicy } from '../../worker/mta-sts.ts';
import { stsMxMatches } from '../../worker/mta-sts.ts';
import type { TlsSessionView, TlsTarget } from '../../worker/tls-policy.ts';
import type { PolicyDescription, SessionFailure } from '../../worker/tls-rpt.ts';
import { createTransportSecurity, resultTypeOf } from '../../worker/transport-security.ts';

/** The TLS decision with MTA-STS and DANE on top of the configured policy, with fake policy sources. */
const silent = pino({ level: 'silent' });
const leaf = new X509Certificate(readFileSync(join(import.meta.dirname, '../fixtures/dane/leaf.crt')));
const policy = (mode: StsPolicy['mode']): StsPolicy => ({ domain: 'a.test', id: '1', mode, mx: ['mx.a.test'], maxAgeSeconds: 86400, fetchedAt: 0, expiresAt: Number.MAX_SAFE_INTEGER });
const fakeSts = (lookup: StsLookup): MtaSts => ({ policyFor: async () => lookup, mxMatches: stsMxMatches, idle: async () => {} });
const fakeDane = (requirement: DaneRequirement): DaneLookup => ({ requirementFor: async () => requirement });
const target = (mxName = 'mx.a.test', origin: TlsTarget['origin'] = 'mx'): TlsTarget => ({ domain: 'a.test', mxName, address: '192.0.2.1', port: 25, origin });
const session = (overrides: Partial<TlsSessionView> = {}): TlsSessionView => ({
  secure: true,
  localAddress: '198.51.100.1',
  peerCertificates: () => [leaf],
  peerAuthorization: () => ({ authorized: true }),
  ...overrides,
});

function security(options: { sts?: StsLookup; dane?: DaneRequirement; policy?: 'none' | 'may' | 'encrypt' | 'verify'; domains?: Record<string, 'none' | 'may' | 'encrypt' | 'verify'> }) {
  const reports: Array<{ policy: PolicyDescription; result: 'success' | SessionFailure }> = [];
  const tls = createTransportSecurity({
    settings: { policy: options.policy ?? 'may', domains: options.domains ?? {}, brokenHostMemoryMs: 60_000 },
    ...(options.sts ? { mtaSts: fakeSts(options.sts) } : {}),
    ...(options.dane ? { dane: fakeDane(options.dane) } : {}),
    report: (p, result) => reports.push({ policy: p, result }),
    logger: silent,
  });
  return { tls, reports };
}

describe('transport security (MTA-STS and DANE on the TLS decision)', () => {
  it('MTA-STS enforce raises may to verify for listed hosts and refuses the others before connecting', async () => {
    const { tls, reports } = security({ sts: { kind: 'policy', policy: policy('enforce') } });
    const listed = await tls.decide(target());
    assert.equal(listed.mode, 'verify');
    assert.equal(listed.refuse, undefined);
    assert.equal(listed.options.tls.rejectUnauthorized, true);
    const rogue = await tls.decide(target('mx.evil.test'));
    assert.match(String(rogue.refuse?.response), /^451 4\.7\.5 MTA-STS policy enforce for a\.test: mx\.evil\.test is not among/);
    assert.equal((reports[0]?.result as SessionFailure).resultType, 'validation-failure');
  });

  it('policies never lower the configured mode, and do not apply to static routes', async () => {
    const { tls } = security({ sts: { kind: 'policy', policy: policy('testing') }, domains: { 'a.test': 'verify' } });
    assert.equal((await tls.decide(target())).mode, 'verify');
    const enforce = security({ sts: { kind: 'policy', policy: policy('enforce') }, policy: 'none' });
    assert.equal((await enforce.tls.decide(target())).mode, 'verify', 'enforce raises none');
    assert.equal((await enforce.tls.decide(target('relay.internal', 'route'))).mode, 'none', 'a route is the operator’s choice');
    const dane = security({ dane: { kind: 'match', records: [{ usage: 3, selector: 1, matchingType: 1, data: Buffer.alloc(32) }], ttl: 60 }, policy: 'verify' });
    assert.equal((await dane.tls.decide(target())).mode, 'verify', 'DANE keeps a configured verify');
  });

  it('MTA-STS testing keeps the configured mode and reports what enforce would have refused', async () => {
    const { tls, reports } = security({ sts: { kind: 'policy', policy: policy('testing') } });
    const decision = await tls.decide(target());
    assert.equal(decision.mode, 'may');
    assert.deepEqual(tls.afterHandshake!(target(), decision, session({ peerAuthorization: () => ({ authorized: false, error: 'DEPTH_ZERO_SELF_SIGNED_CERT' }) })), { ok: true });
    assert.deepEqual(reports.map((r) => (r.result === 'success' ? 'success' : r.result.resultType)), ['certificate-not-trusted']);
    tls.afterHandshake!(target(), decision, session());
    assert.equal(reports[1]?.result, 'success');
    assert.equal(reports[1]?.policy.type, 'sts');
  });

  it('DANE decides before MTA-STS: TLS required, and a certificate matching no TLSA record closes the session unused', async () => {
    const spki = createHash('sha256').update(leaf.publicKey.export({ type: 'spki', format: 'der' }) as Buffer).digest();
    const matching = security({ dane: { kind: 'match', records: [{ usage: 3, selector: 1, matchingType: 1, data: spki }], ttl: 60 }, sts: { kind: 'policy', policy: policy('enforce') } });
    const decision = await matching.tls.decide(target('mx.unlisted.test'));
    assert.equal(decision.mode, 'encrypt');
    assert.equal(decision.refuse, undefined, 'MTA-STS does not override DANE');
    assert.deepEqual(matching.tls.afterHandshake!(target('mx.unlisted.test'), decision, session()), { ok: true });

    const other = security({ dane: { kind: 'match', records: [{ usage: 3, selector: 1, matchingType: 1, data: Buffer.alloc(32, 1) }], ttl: 60 } });
    const d2 = await other.tls.decide(target());
    const judged = other.tls.afterHandshake!(target(), d2, session());
    assert.equal(judged.ok, false);
    if (!judged.ok) assert.match(judged.verdict.response, /^451 4\.7\.5 DANE for a\.test: the certificate of mx\.a\.test matches no TLSA record/);
    assert.equal((other.reports[0]?.result as SessionFailure).sendingMtaIp, '198.51.100.1');

    const failed = security({ dane: { kind: 'failed', message: 'TLSA lookup of _25._tcp.mx.a.test answered SERVFAIL' } });
    assert.match(String((await failed.tls.decide(target())).refuse?.response), /^451 4\.7\.5 DANE for a\.test: TLSA lookup/);
  });

  it('a failed STARTTLS under enforce or DANE is the policy’s verdict, never a plaintext retry; under testing the may fallback stays', async () => {
    const noStarttls = { message: 'Error initiating TLS', code: 'ETLS', command: 'STARTTLS', response: '502 5.5.1 no' };
    const enforce = security({ sts: { kind: 'policy', policy: policy('enforce') } });
    const e = enforce.tls.afterHandshakeFailure(target(), await enforce.tls.decide(target()), noStarttls);
    assert.ok('verdict' in e && /^451 4\.7\.10 MTA-STS policy enforce for a\.test/.test(e.verdict.response));
    const testing = security({ sts: { kind: 'policy', policy: policy('testing') } });
    const t = testing.tls.afterHandshakeFailure(target(), await testing.tls.decide(target()), noStarttls);
    assert.ok('retry' in t && t.retry.plaintext === true);
    assert.equal((testing.reports[0]?.result as SessionFailure).resultType, 'starttls-not-supported');
  });

  it('maps TLS failure texts to RFC 8460 result types', () => {
    assert.equal(resultTypeOf('CERT_HAS_EXPIRED certificate has expired'), 'certificate-expired');
    assert.equal(resultTypeOf("Hostname/IP does not match certificate's altnames"), 'certificate-host-mismatch');
    assert.equal(resultTypeOf('self-signed certificate'), 'certificate-not-trusted');
    assert.equal(resultTypeOf('UNABLE_TO_VERIFY_LEAF_SIGNATURE'), 'certificate-not-trusted');
    assert.equal(resultTypeOf('STARTTLS answered: 502'), 'starttls-not-supported');
    assert.equal(resultTypeOf('something else'), 'validation-failure');
  });
});
