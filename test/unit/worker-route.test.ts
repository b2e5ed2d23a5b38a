import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { startDns, type DnsServer } from '../helpers/dns.ts';
import { createRouteResolver, type Route, type RouteSettings } from '../../worker/route.ts';

/** MX resolution against a real DNS server (dnsmasq on loopback); names exist only there. */
describe('routeFor', { timeout: 60_000 }, () => {
  let dns: DnsServer;

  before(async () => {
    dns = await startDns({
      mx: {
        'multi.test': [
          { host: 'backup.multi.test', preference: 20 },
          { host: 'primary.multi.test', preference: 10 },
          { host: 'backup2.multi.test', preference: 20 },
        ],
        'mixed.test': [
          { host: 'internal.mixed.test', preference: 10 },
          { host: 'public.mixed.test', preference: 20 },
        ],
        'dangling.test': [{ host: 'nowhere.dangling.test', preference: 10 }],
        'halfbroken.test': [
          { host: 'nowhere.halfbroken.test', preference: 5 },
          { host: 'mx.halfbroken.test', preference: 10 },
        ],
      },
      hosts: {
        'primary.multi.test': ['127.0.0.11', '::1'],
        'backup.multi.test': ['127.0.0.12'],
        'backup2.multi.test': ['127.0.0.13'],
        'implicit.test': ['127.0.0.20'],
        'internal.mixed.test': ['10.1.2.3'],
        'public.mixed.test': ['8.8.4.4'],
        'mx.halfbroken.test': ['127.0.0.30'],
        'relay.internal.test': ['127.0.0.40'],
      },
      nullMx: ['nullmx.test'],
      servfail: ['broken.test'],
      unanswered: ['silent.test'],
    });
  });

  after(async () => {
    await dns?.stop();
  });

  function resolverWith(overrides: Partial<RouteSettings> = {}) {
    return createRouteResolver({ servers: [dns.server], timeoutMs: 600, routes: {}, smtpPort: 2525, allowPrivateAddresses: true, ...overrides });
  }

  function assertFailure(route: Route, expected: { temporary: boolean; enhanced: string }) {
    assert.equal(route.ok, false, `expected a failure, got ${JSON.stringify(route)}`);
    if (route.ok) return;
    const { verdict } = route;
    assert.equal(verdict.outcome, expected.temporary ? 'deferred' : 'bounced', verdict.response);
    assert.equal(verdict.enhancedCode, expected.enhanced, verdict.response);
    assert.equal(Math.floor(verdict.responseCode! / 100), expected.temporary ? 4 : 5);
  }

  it('orders MX hosts by preference and resolves their addresses through the configured server', async () => {
    const destination = await resolverWith().routeFor('multi.test');
    assert.ok(destination.ok, JSON.stringify(destination));
    assert.equal(destination.hosts[0]!.name, 'primary.multi.test');
    assert.deepEqual(destination.hosts[0], { name: 'primary.multi.test', preference: 10, addresses: ['127.0.0.11', '::1'], port: 2525, origin: 'mx' });
    assert.deepEqual(new Set(destination.hosts.slice(1).map((h) => h.name)), new Set(['backup.multi.test', 'backup2.multi.test']));
    assert.ok(destination.hosts.slice(1).every((h) => h.preference === 20));
  });

  it('shuffles hosts of equal preference', async () => {
    const orders = new Set<string>();
    for (const value of [0, 0.99]) {
      const destination = await resolverWith({ random: () => value }).routeFor('multi.test');
      assert.ok(destination.ok);
      assert.equal(destination.hosts[0]!.name, 'primary.multi.test', 'the shuffle never beats preference');
      orders.add(destination.hosts.map((h) => h.name).join(' '));
    }
    assert.equal(orders.size, 2, `both orders of the two backups should occur: ${[...orders].join(' | ')}`);
  });

  it('domain names are case-insensitive', async () => {
    const destination = await resolverWith().routeFor('MULTI.Test');
    assert.ok(destination.ok);
    assert.equal(destination.hosts[0]!.name, 'primary.multi.test');
  });

  it('without MX records the domain itself is the mail host (implicit MX)', async () => {
    const destination = await resolverWith().routeFor('implicit.test');
    assert.deepEqual(destination, { ok: true, hosts: [{ name: 'implicit.test', preference: 0, addresses: ['127.0.0.20'], port: 2525, origin: 'implicit' }] });
  });

  it('a null MX (RFC 7505) is a permanent failure, 5.1.10', async () => {
    assertFailure(await resolverWith().routeFor('nullmx.test'), { temporary: false, enhanced: '5.1.10' });
  });

  it('NXDOMAIN is a permanent failure, 5.1.2', async () => {
    assertFailure(await resolverWith().routeFor('no-such-domain.test'), { temporary: false, enhanced: '5.1.2' });
  });

  it('an address literal can never resolve: it bounces with 5.1.2 at once instead of being retried for days', async () => {
    for (const literal of ['[127.0.0.1]', '[ipv6:::1]', '[192.0.2.1]']) {
      assertFailure(await resolverWith().routeFor(literal), { temporary: false, enhanced: '5.1.2' });
    }
  });

  it('SERVFAIL is a temporary failure, 4.4.3', async () => {
    assertFailure(await resolverWith().routeFor('broken.test'), { temporary: true, enhanced: '4.4.3' });
  });

  it('a DNS timeout is a temporary failure, 4.4.3', async () => {
    assertFailure(await resolverWith({ timeoutMs: 300 }).routeFor('silent.test'), { temporary: true, enhanced: '4.4.3' });
  });

  it('an MX host without an address is skipped; with none left the domain is unroutable', async () => {
    const halfBroken = await resolverWith().routeFor('halfbroken.test');
    assert.ok(halfBroken.ok);
    assert.deepEqual(
      halfBroken.hosts.map((h) => h.name),
      ['mx.halfbroken.test'],
    );
    assertFailure(await resolverWith().routeFor('dangling.test'), { temporary: false, enhanced: '5.4.4' });
  });

  it('refuses private addresses unless allowed', async () => {
    const strict = resolverWith({ allowPrivateAddresses: false });
    assertFailure(await strict.routeFor('multi.test'), { temporary: false, enhanced: '5.4.4' });
    const mixed = await strict.routeFor('mixed.test');
    assert.ok(mixed.ok, JSON.stringify(mixed));
    assert.deepEqual(
      mixed.hosts.map((h) => [h.name, h.addresses]),
      [['public.mixed.test', ['8.8.4.4']]],
    );
  });

  it('a static route bypasses MX, by IP or by a name resolved through the same server', async () => {
    const resolver = resolverWith({
      allowPrivateAddresses: false,
      routes: { 'multi.test': '127.0.0.99:2600', 'corp.test': 'relay.internal.test', 'bad.test': 'missing.internal.test:25' },
    });
    assert.deepEqual(await resolver.routeFor('multi.test'), {
      ok: true,
      hosts: [{ name: '127.0.0.99', preference: 0, addresses: ['127.0.0.99'], port: 2600, origin: 'route' }],
    });
    assert.deepEqual(await resolver.routeFor('corp.test'), {
      ok: true,
      hosts: [{ name: 'relay.internal.test', preference: 0, addresses: ['127.0.0.40'], port: 2525, origin: 'route' }],
    });
    assertFailure(await resolver.routeFor('bad.test'), { temporary: false, enhanced: '5.4.4' });
  });
});
