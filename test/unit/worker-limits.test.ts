import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readConfiguredFiles, workerConfigSchema } from '../../worker/config.ts';
import { asksToBackOff, bucketFor, limitSettingsFrom } from '../../worker/limits.ts';
import { createSourceSelector } from '../../worker/source-ip.ts';
import { connectionTlsOptions, tlsModeFor, tlsPolicySettingsFrom } from '../../worker/tls-policy.ts';

/** The pure parts of traffic shaping: which limits apply, when to back off, source and TLS choices, config. */
describe('traffic shaping rules', () => {
  const limits = {
    default: { messagesPerMinute: 600 },
    domains: { 'small.example': { maxConnections: 1 } },
    groups: { google: { domains: ['customer.example'], mxSuffixes: ['.google.com'], maxConnections: 20, messagesPerMinute: 1000 } },
  };

  it('a domain gets its own limits, else its group (by name or by MX host), else the default', () => {
    assert.deepEqual(bucketFor(limits, 'Small.Example', ['mx.small.example']), { key: 'small.example', limit: { maxConnections: 1 } });
    assert.equal(bucketFor(limits, 'customer.example', ['mx.customer.example']).key, 'group.google');
    assert.deepEqual(bucketFor(limits, 'gmail.com', ['gmail-smtp-in.l.google.com']), { key: 'group.google', limit: { maxConnections: 20, messagesPerMinute: 1000 } });
    assert.deepEqual(bucketFor(limits, 'other.example', ['mx.other.example']), { key: 'other.example', limit: { messagesPerMinute: 600 } });
  });

  it('backs off after a 421 or a "too many connections" reply, not after other temporary failures', () => {
    assert.equal(asksToBackOff('421 4.7.0 Try again later, closing connection'), true);
    assert.equal(asksToBackOff('450 4.7.1 Too many concurrent connections from your IP'), true);
    assert.equal(asksToBackOff('554 5.7.1 too many connections'), true);
    assert.equal(asksToBackOff('451 4.7.1 greylisted, try again'), false);
    assert.equal(asksToBackOff('ECONNECTION: connect ECONNREFUSED 127.0.0.1:25'), false);
  });

  it('picks source addresses of the destination family only', () => {
    const selector = createSourceSelector(
      { addresses: [{ address: '192.0.2.1', ehloName: 'a.example', weight: 1 }, { address: '2001:db8::1', ehloName: 'b.example', weight: 1 }], selection: 'round-robin', senderDomains: {} },
      'default.example',
    );
    assert.deepEqual(selector.pick('example.com', '198.51.100.7'), { localAddress: '192.0.2.1', ehloName: 'a.example' });
    assert.deepEqual(selector.pick('example.com', '2001:db8::25'), { localAddress: '2001:db8::1', ehloName: 'b.example' });
    const v4only = createSourceSelector({ addresses: [{ address: '192.0.2.1', ehloName: 'a.example', weight: 1 }], selection: 'round-robin', senderDomains: {} }, 'd.example');
    assert.equal(v4only.pick('example.com', '2001:db8::25'), undefined);
  });

  it('maps each TLS mode to the client options that enforce it', () => {
    assert.equal(tlsModeFor({ policy: 'may', domains: { 'bank.example': 'verify' } }, 'Bank.Example'), 'verify');
    assert.deepEqual(connectionTlsOptions('none', 'mx.example', {}, false).ignoreTLS, true);
    const may = connectionTlsOptions('may', 'mx.example', {}, false);
    assert.deepEqual([may.requireTLS, may.opportunisticTLS, may.tls.rejectUnauthorized, may.tls.servername], [false, true, false, 'mx.example']);
    assert.equal(connectionTlsOptions('may', 'mx.example', {}, true).ignoreTLS, true, 'a remembered broken host gets plaintext');
    const encrypt = connectionTlsOptions('encrypt', 'mx.example', {}, true);
    assert.deepEqual([encrypt.requireTLS, encrypt.ignoreTLS, encrypt.tls.rejectUnauthorized], [true, false, false], 'never plaintext under encrypt');
    const verify = connectionTlsOptions('verify', 'mx.example', { ca: Buffer.from('pem') }, false);
    assert.deepEqual([verify.requireTLS, verify.tls.rejectUnauthorized, verify.tls.servername, String(verify.tls.ca)], [true, true, 'mx.example', 'pem']);
  });

  it('config: defaults, and errors that name the key', () => {
    const config = workerConfigSchema.parse({ beanstalk: { servers: ['127.0.0.1:11400'] } });
    assert.deepEqual(config.connections, { maxMessagesPerConnection: 100, idleTimeoutMs: 2000 });
    const tls = tlsPolicySettingsFrom(config.tls, undefined);
    assert.equal(tls.policy, 'may');
    assert.equal(tls.brokenHostMemoryMs, 3_600_000);
    assert.deepEqual(config.source, { addresses: [], selection: 'round-robin', senderDomains: {} });
    const limitSettings = limitSettingsFrom(config.limits, config.beanstalk.servers);
    assert.deepEqual(limitSettings.server, { host: '127.0.0.1', port: 11400 }, 'the limits live on the first beanstalkd by default');
    assert.deepEqual([limitSettings.windowSeconds, limitSettings.maxWaitMs, limitSettings.backoffSeconds], [60, 10_000, 60]);

    const issue = (input: unknown) => {
      const result = workerConfigSchema.safeParse(input);
      assert.equal(result.success, false);
      return result.error!.issues[0]!;
    };
    assert.deepEqual(issue({ tls: { domains: { 'a.example': 'sometimes' } } }).path, ['tls', 'domains', 'a.example']);
    // Files are read at start-up, not while parsing: the error still names the key.
    assert.throws(
      () => readConfiguredFiles(workerConfigSchema.parse({ tls: { caFile: '/nonexistent/ca.pem' } }), '/etc/hedwig/worker.yaml'),
      { code: 'CONFIG_INVALID', message: /worker\.yaml: tls\.caFile: cannot read \/nonexistent\/ca\.pem/ },
    );
    assert.deepEqual(issue({ source: { addresses: [{ address: '192.0.2.1', ehloName: 'a.example' }], senderDomains: { 'x.example': ['192.0.2.9'] } } }).path, ['source', 'senderDomains', 'x.example', 0]);
    assert.deepEqual(issue({ limits: { domains: { 'x.example': { maxConnections: 0 } } } }).path, ['limits', 'domains', 'x.example', 'maxConnections']);
  });
});

describe('delivery slots: one destination holds at most its share of a worker', () => {
  it('queues deliveries over the cap, passes the slot on in order, and defers one that waited too long', async () => {
    const { createLimiter } = await import('../../worker/limits.ts');
    const { pino } = await import('pino');
    const limiter = createLimiter({ default: {}, domains: {}, groups: {}, windowSeconds: 60, maxWaitMs: 200, backoffSeconds: 0, maxInFlight: 1 }, { logger: pino({ level: 'silent' }) });
    const slow = { key: 'slow.example', limit: {} };
    const first = await limiter.deliverySlot(slow);
    assert.ok(first.ok);
    const other = await limiter.deliverySlot({ key: 'other.example', limit: {} });
    assert.ok(other.ok, 'another destination is not held up');
    const second = limiter.deliverySlot(slow);
    first.release();
    const passed = await second;
    assert.ok(passed.ok, 'the slot passed on when the first delivery ended');
    const third = await limiter.deliverySlot(slow);
    assert.equal(third.ok, false);
    if (!third.ok) assert.match(third.verdict.response, /^451 4\.4\.5 hedwig: 1 deliveries to slow\.example already in flight/);
    passed.release();
    assert.ok((await limiter.deliverySlot(slow)).ok);
    await limiter.close();
  });

  it('the cap is the share of the concurrency, at least one', () => {
    const config = workerConfigSchema.parse({});
    assert.equal(config.limits.workerShare, 0.5);
    assert.equal(limitSettingsFrom(config.limits, config.beanstalk.servers, 64).maxInFlight, 32);
    assert.equal(limitSettingsFrom(config.limits, config.beanstalk.servers, 1).maxInFlight, 1);
  });
});
