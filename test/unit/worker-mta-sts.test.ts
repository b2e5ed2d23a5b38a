import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { LookupFunction } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { createMtaSts, stsPolicyStrings, type MtaStsOptions } from '../../worker/mta-sts.ts';
import { createPolicyFileCache } from '../../worker/mta-sts-cache.ts';

/**
 * MTA-STS policy discovery, fetch, cache and persistence against a real HTTPS server on
 * loopback (fixture certificate for mta-sts.{a,b,c,d}.test from a fixture CA, valid for 100
 * years), with the TXT records answered from a table.
 */
const fixtures = join(import.meta.dirname, '../fixtures/tls');
const ca = readFileSync(join(fixtures, 'ca.crt'));
const silent = pino({ level: 'silent' });

describe('MTA-STS policies', () => {
  let server: Server;
  let port: number;
  const bodies: Record<string, { status?: number; type?: string; body: string }> = {};
  const requests: string[] = [];

  before(async () => {
    server = createServer({ cert: readFileSync(join(fixtures, 'sts.crt')), key: readFileSync(join(fixtures, 'sts.key')) }, (req, res) => {
      const host = String(req.headers.host).replace(/:\d+$/, '');
      requests.push(`${host}${req.url}`);
      const answer = bodies[host];
      if (!answer || req.url !== '/.well-known/mta-sts.txt') {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(answer.status ?? 200, { 'content-type': answer.type ?? 'text/plain' }).end(answer.body);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as { port: number }).port;
  });
  after(() => new Promise<void>((resolve) => server.close(() => resolve())));

  const loopback: LookupFunction = (_host, options, callback) => {
    if ((options as { all?: boolean }).all) (callback as (err: null, addresses: Array<{ address: string; family: number }>) => void)(null, [{ address: '127.0.0.1', family: 4 }]);
    else callback(null, '127.0.0.1', 4);
  };

  function sts(txt: Record<string, string[]>, overrides: Partial<MtaStsOptions> & { dir?: string; clock?: { t: number } } = {}) {
    const clock = overrides.clock ?? { t: Date.parse('2026-06-01T00:00:00Z') };
    const now = () => clock.t;
    const resolveTxt = async (name: string) => {
      const values = txt[name];
      if (!values) throw Object.assign(new Error(`queryTxt ENOTFOUND ${name}`), { code: 'ENOTFOUND' });
      return values.map((v) => [v]);
    };
    return createMtaSts({
      resolveTxt,
      lookup: loopback,
      ca,
      port,
      fetchTimeoutMs: 3000,
      refreshSeconds: 3600,
      negativeCacheSeconds: 60,
      cache: createPolicyFileCache(overrides.dir, silent, now),
      logger: silent,
      now,
      ...overrides,
    });
  }

  const enforce = 'version: STSv1\nmode: enforce\nmx: mx1.a.test\nmx: *.mail.a.test\nmax_age: 86400\n';

  it('finds, fetches and parses an enforce policy; matches MX hosts like RFC 8461 §4.1', async () => {
    bodies['mta-sts.a.test'] = { body: enforce };
    const policies = sts({ '_mta-sts.a.test': ['v=STSv1; id=20260601;'] });
    const found = await policies.policyFor('A.test');
    assert.equal(found.kind, 'policy');
    assert.ok(found.kind === 'policy');
    assert.deepEqual({ id: found.policy.id, mode: found.policy.mode, mx: found.policy.mx, maxAge: found.policy.maxAgeSeconds }, { id: '20260601', mode: 'enforce', mx: ['mx1.a.test', '*.mail.a.test'], maxAge: 86400 });
    assert.equal(policies.mxMatches(found.policy, 'mx1.a.test'), true);
    assert.equal(policies.mxMatches(found.policy, 'in.mail.a.test'), true);
    assert.equal(policies.mxMatches(found.policy, 'deep.in.mail.a.test'), false, 'a wildcard covers one label');
    assert.equal(policies.mxMatches(found.policy, 'mx2.a.test'), false);
    assert.deepEqual(stsPolicyStrings(found.policy), ['version: STSv1', 'mode: enforce', 'mx: mx1.a.test', 'mx: *.mail.a.test', 'max_age: 86400']);
  });

  it('no TXT record, several records, or mode none: no policy, and the answer is remembered for a while', async () => {
    bodies['mta-sts.b.test'] = { body: 'version: STSv1\nmode: none\nmax_age: 86400\n' };
    const clock = { t: Date.parse('2026-06-01T00:00:00Z') };
    const policies = sts({ '_mta-sts.b.test': ['v=STSv1; id=1;'], '_mta-sts.c.test': ['v=STSv1; id=1;', 'v=STSv1; id=2;'] }, { clock });
    assert.deepEqual(await policies.policyFor('nothing.test'), { kind: 'none' });
    assert.deepEqual(await policies.policyFor('b.test'), { kind: 'none' });
    const before = requests.length;
    assert.deepEqual(await policies.policyFor('c.test'), { kind: 'none' });
    assert.equal(requests.length, before, 'several TXT records: nothing fetched');
  });

  it('a TXT record whose policy cannot be had is a failure with its TLS-RPT result type (delivery goes on without MTA-STS)', async () => {
    const cases: Array<[string, { status?: number; type?: string; body: string } | undefined, string]> = [
      ['c.test', { status: 404, body: 'no' }, 'sts-policy-fetch-error'],
      ['c.test', { type: 'text/html', body: enforce }, 'sts-policy-invalid'],
      ['c.test', { body: 'version: STSv1\nmode: sometimes\nmx: x\nmax_age: 1\n' }, 'sts-policy-invalid'],
      ['e.test', undefined, 'sts-webpki-invalid'], // the certificate does not name mta-sts.e.test
    ];
    for (const [domain, body, resultType] of cases) {
      if (body) bodies[`mta-sts.${domain}`] = body;
      const result = await sts({ [`_mta-sts.${domain}`]: ['v=STSv1; id=9;'] }).policyFor(domain);
      assert.equal(result.kind, 'failed', `${domain} ${JSON.stringify(body)}`);
      assert.ok(result.kind === 'failed');
      assert.equal(result.resultType, resultType, result.message);
    }
    // A certificate from a CA the worker does not trust.
    bodies['mta-sts.d.test'] = { body: enforce };
    const untrusted = await sts({ '_mta-sts.d.test': ['v=STSv1; id=9;'] }, { ca: undefined }).policyFor('d.test');
    assert.ok(untrusted.kind === 'failed' && untrusted.resultType === 'sts-webpki-invalid', JSON.stringify(untrusted));
  });

  it('keeps policies across restarts in the state directory, until max_age runs out', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hedwig-sts-'));
    bodies['mta-sts.a.test'] = { body: enforce };
    const clock = { t: Date.parse('2026-06-01T00:00:00Z') };
    await sts({ '_mta-sts.a.test': ['v=STSv1; id=1;'] }, { dir, clock }).policyFor('a.test');
    const saved = JSON.parse(readFileSync(join(dir, 'mta-sts-policies.json'), 'utf8'));
    assert.equal(saved.policies[0].domain, 'a.test');

    // The restarted worker finds no TXT record (an attacker stripped it) and no policy server: the cached policy holds.
    delete bodies['mta-sts.a.test'];
    const restarted = sts({}, { dir, clock });
    const cached = await restarted.policyFor('a.test');
    assert.ok(cached.kind === 'policy' && cached.policy.mode === 'enforce');
    await restarted.idle();

    clock.t += 86_401_000;
    assert.deepEqual(await sts({}, { dir, clock }).policyFor('a.test'), { kind: 'none' }, 'expired after max_age');
    // A corrupt file is ignored, not fatal.
    writeFileSync(join(dir, 'mta-sts-policies.json'), '{not json');
    assert.deepEqual(await sts({}, { dir, clock }).policyFor('a.test'), { kind: 'none' });
  });

  it('refreshes a policy in the background after refreshSeconds: a new TXT id fetches the new policy', async () => {
    bodies['mta-sts.b.test'] = { body: enforce.replace('mode: enforce', 'mode: testing') };
    const clock = { t: Date.parse('2026-06-01T00:00:00Z') };
    const txt: Record<string, string[]> = { '_mta-sts.b.test': ['v=STSv1; id=1;'] };
    const policies = sts(txt, { clock });
    const first = await policies.policyFor('b.test');
    assert.ok(first.kind === 'policy' && first.policy.mode === 'testing');

    bodies['mta-sts.b.test'] = { body: enforce };
    txt['_mta-sts.b.test'] = ['v=STSv1; id=2;'];
    clock.t += 3_601_000;
    const during = await policies.policyFor('b.test');
    assert.ok(during.kind === 'policy' && during.policy.mode === 'testing', 'the cached policy answers at once');
    await policies.idle();
    const after = await policies.policyFor('b.test');
    assert.ok(after.kind === 'policy' && after.policy.mode === 'enforce' && after.policy.id === '2', JSON.stringify(after));
  });
});
