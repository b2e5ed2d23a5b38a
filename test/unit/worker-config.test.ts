import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { hostname } from 'node:os';
import { loadConfig } from '../../shared/config.ts';
import { TUBE } from '../../shared/job.ts';
import { workerConfigSchema } from '../../worker/config.ts';

const load = (env: NodeJS.ProcessEnv) => loadConfig(workerConfigSchema, { tier: 'worker', env });

describe('worker config', () => {
  it('has safe defaults', () => {
    const config = load({});
    assert.deepEqual(config.beanstalk, { servers: [{ host: '127.0.0.1', port: 11300 }], tube: TUBE.outbound, failedTube: TUBE.failed });
    assert.equal(config.concurrency, 4);
    assert.equal(config.ehloName, hostname());
    assert.deepEqual(config.dns, { servers: [], timeoutMs: 5000, cacheMaxSeconds: 300 });
    assert.deepEqual(config.routes, {});
    assert.equal(config.smtpPort, 25);
    assert.equal(config.allowPrivateAddresses, false, 'never deliver to private addresses unless told to');
    assert.deepEqual(config.timeouts, {
      connectMs: 30_000,
      greetingMs: 30_000,
      socketMs: 300_000,
      // RFC 5321 §4.5.3.2 and Postfix's smtp_*_timeout.
      heloMs: 300_000,
      starttlsMs: 300_000,
      mailMs: 300_000,
      rcptMs: 300_000,
      dataInitMs: 120_000,
      dataDoneMs: 600_000,
      rsetMs: 20_000,
      quitMs: 300_000,
      deliveryMs: 900_000,
    });
    assert.deepEqual(config.retry, { delaysSeconds: [300, 1800, 3600, 7200, 14400], maxLifetimeSeconds: 432_000 }, 'RFC 5321: minutes, then 30 min or more, 5 days');
    assert.deepEqual(config.bounces, { enabled: true, delayWarningSeconds: 14_400 }, 'bounces on, from MAILER-DAEMON@<ehloName>, a warning after 4 h');
    assert.deepEqual(config.ops, { host: '127.0.0.1', port: 9103 });
  });

  it('takes overrides from the environment', () => {
    const config = load({
      HEDWIG_WORKER__RETRY__DELAYS_SECONDS: '[1, 2]',
      HEDWIG_WORKER__DNS__SERVERS: '["127.0.0.1:5353", "::1"]',
      HEDWIG_WORKER__ROUTES: '{Example.COM: "relay.internal:2525"}',
      HEDWIG_WORKER__ALLOW_PRIVATE_ADDRESSES: 'true',
    });
    assert.deepEqual(config.retry.delaysSeconds, [1, 2]);
    assert.deepEqual(config.dns.servers, ['127.0.0.1:5353', '::1']);
    assert.deepEqual(config.routes, { 'example.com': 'relay.internal:2525' }, 'route domains are matched in lower case');
    assert.equal(config.allowPrivateAddresses, true);
  });

  it('rejects DNS servers given by name, bad routes, an empty retry schedule and unknown keys', () => {
    assert.throws(() => load({ HEDWIG_WORKER__DNS__SERVERS: '["dns.example.com"]' }), /dns\.servers/);
    assert.throws(() => load({ HEDWIG_WORKER__ROUTES: '{a.test: "host:notaport"}' }), /routes/);
    assert.throws(() => load({ HEDWIG_WORKER__ROUTES: '{a.test: "host:70000"}' }), /routes/);
    assert.throws(() => load({ HEDWIG_WORKER__RETRY__DELAYS_SECONDS: '[]' }), /retry\.delaysSeconds/);
    assert.throws(() => load({ HEDWIG_WORKER__CONCURENCY: '3' }), /Unrecognized key|concurency/);
  });
});
