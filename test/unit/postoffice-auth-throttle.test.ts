import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { pino } from 'pino';
import { AuthThrottle, sourceOf } from '../../postoffice/auth-throttle.ts';

function setup(config = { windowSeconds: 60, maxPerAddress: 5, maxPerAddressAndFqdn: 3 }) {
  const lines: Array<Record<string, unknown>> = [];
  const logger = pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line)) });
  const clock = { now: 1_000_000 };
  const throttle = new AuthThrottle(config, { logger, now: () => clock.now });
  return { throttle, lines, clock };
}

describe('authentication failure throttle (postoffice/auth-throttle.ts, issue 12.11)', () => {
  it('counts IPv4 as is, IPv4-mapped IPv6 as IPv4, IPv6 per /64', () => {
    assert.equal(sourceOf('192.0.2.7'), '192.0.2.7');
    assert.equal(sourceOf('::ffff:192.0.2.7'), '192.0.2.7');
    assert.equal(sourceOf('2001:db8:1:2:3:4:5:6'), '2001:db8:1:2::/64');
    assert.equal(sourceOf('2001:db8:1:2::9'), '2001:db8:1:2::/64');
    assert.equal(sourceOf('2001:0db8::1'), '2001:db8:0:0::/64');
    assert.equal(sourceOf('::1'), '0:0:0:0::/64');
  });

  it('throttles one address for one fqdn after maxPerAddressAndFqdn failures, until the window ends', () => {
    const { throttle, clock } = setup();
    for (let i = 0; i < 3; i++) {
      assert.equal(throttle.retryAfter('192.0.2.1', 'app1.test'), undefined);
      throttle.failed('192.0.2.1', 'app1.test', 'bad_signature');
    }
    assert.equal(throttle.retryAfter('192.0.2.1', 'app1.test'), 60);
    clock.now += 45_000;
    assert.equal(throttle.retryAfter('192.0.2.1', 'App1.TEST'), 15, 'fqdns compare case-insensitively');
    // Someone else's failures do not lock the host out elsewhere; the address may still try other names.
    assert.equal(throttle.retryAfter('198.51.100.9', 'app1.test'), undefined);
    assert.equal(throttle.retryAfter('192.0.2.1', 'app2.test'), undefined);
    clock.now += 15_000;
    assert.equal(throttle.retryAfter('192.0.2.1', 'app1.test'), undefined, 'a new window');
    throttle.close();
  });

  it('throttles an address trying many names after maxPerAddress failures, for every name', () => {
    const { throttle } = setup();
    for (let i = 0; i < 5; i++) throttle.failed('192.0.2.1', `guess${i}.test`, 'unknown_fqdn');
    assert.equal(throttle.retryAfter('192.0.2.1'), 60);
    assert.equal(throttle.retryAfter('192.0.2.1', 'app1.test'), 60);
    assert.equal(throttle.retryAfter('192.0.2.2', 'app1.test'), undefined);
    throttle.close();
  });

  it('forgives an address its failures for a host once that host authenticates from it', () => {
    const { throttle } = setup();
    throttle.failed('192.0.2.1', 'app1.test', 'stale_timestamp');
    throttle.failed('192.0.2.1', 'app1.test', 'stale_timestamp');
    throttle.succeeded('192.0.2.1', 'app1.test');
    throttle.failed('192.0.2.1', 'app1.test', 'stale_timestamp');
    throttle.failed('192.0.2.1', 'app1.test', 'stale_timestamp');
    assert.equal(throttle.retryAfter('192.0.2.1', 'app1.test'), undefined);
    throttle.close();
  });

  it('logs one auth_failures line per address and fqdn per interval, with counts and reasons, never one per request', () => {
    const { throttle, lines } = setup({ windowSeconds: 60, maxPerAddress: 1000, maxPerAddressAndFqdn: 2 });
    for (let i = 0; i < 500; i++) throttle.failed('192.0.2.1', 'app1.test', i % 2 ? 'bad_signature' : 'unknown_fqdn');
    throttle.failed('192.0.2.9', undefined, 'missing_signature');
    for (let i = 0; i < 7; i++) throttle.retryAfter('192.0.2.1', 'app1.test');
    assert.equal(lines.length, 0, 'nothing logged per request');
    throttle.flush();
    const summary = lines.map(({ event, ip, fqdn, failures, throttled, reasons }) => ({ event, ip, fqdn, failures, throttled, reasons }));
    assert.deepEqual(summary, [
      { event: 'auth_failures', ip: '192.0.2.1', fqdn: 'app1.test', failures: 500, throttled: 7, reasons: { unknown_fqdn: 250, bad_signature: 250 } },
      { event: 'auth_failures', ip: '192.0.2.9', fqdn: undefined, failures: 1, throttled: 0, reasons: { missing_signature: 1 } },
    ]);
    throttle.flush();
    assert.equal(lines.length, 2, 'a quiet interval logs nothing');
    throttle.close();
  });
});
