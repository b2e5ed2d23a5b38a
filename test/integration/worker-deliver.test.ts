import { after, before, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { startDns, type DnsServer } from '../helpers/dns.ts';
import { freePort } from '../helpers/ports.ts';
import { startSmtpSink, type SmtpSink } from '../helpers/smtp-sink.ts';
import { createDeliverer, type DeliveryRequest } from '../../worker/deliver.ts';
import { createRouteResolver, type RouteResolver } from '../../worker/route.ts';

/**
 * One delivery attempt for one domain, against real SMTP servers (smtp-server sinks on
 * 127.0.0.x) found through a real DNS server (dnsmasq). Every MX host listens on the same
 * port, as real MX hosts all listen on 25.
 */
describe('deliver to one domain', { timeout: 60_000 }, () => {
  const MESSAGE = Buffer.concat([
    // With Message-ID and Date present the worker adds no header, so the bytes must match exactly.
    Buffer.from('From: Sender <sender@example.com>\r\nTo: rcpt@dest.test\r\nSubject: =?UTF-8?Q?caf=C3=A9?=\r\n'),
    Buffer.from('Message-ID: <deliver-1@example.com>\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\n'),
    Buffer.from('Content-Type: text/plain; charset=ISO-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n'),
    Buffer.from([0x63, 0x61, 0x66, 0xe9, 0x0d, 0x0a]), // "café" in Latin-1: 8-bit bytes must survive
    Buffer.from('.a line starting with a dot\r\n\r\nbye\r\n'),
  ]);

  let dns: DnsServer;
  let port: number;
  let primary: SmtpSink; // 127.0.0.2, preference 10 for most domains
  let secondary: SmtpSink; // 127.0.0.3, preference 20
  let resolver: RouteResolver;
  const logger = pino({ level: 'silent' });
  let connections = 0;
  const deliverer = createDeliverer({
    ehloName: 'worker.hedwig.test',
    timeouts: { connectMs: 3000, greetingMs: 3000, socketMs: 5000 },
    logger,
    onConnection: () => connections++,
  });

  before(async () => {
    port = await freePort();
    primary = await startSmtpSink({ host: '127.0.0.2', port });
    secondary = await startSmtpSink({ host: '127.0.0.3', port });
    dns = await startDns({
      mx: {
        'dest.test': [
          { host: 'mx1.dest.test', preference: 10 },
          { host: 'mx2.dest.test', preference: 20 },
        ],
        'down.test': [
          { host: 'dead.down.test', preference: 10 },
          { host: 'mx2.dest.test', preference: 20 },
        ],
        'alldown.test': [{ host: 'dead.down.test', preference: 10 }],
      },
      hosts: { 'mx1.dest.test': ['127.0.0.2'], 'mx2.dest.test': ['127.0.0.3'], 'dead.down.test': ['127.0.0.4'] },
    });
    resolver = createRouteResolver({ servers: [dns.server], timeoutMs: 2000, routes: {}, smtpPort: port, allowPrivateAddresses: true });
  });

  after(async () => {
    await primary?.stop();
    await secondary?.stop();
    await dns?.stop();
  });

  beforeEach(() => {
    for (const sink of [primary, secondary]) {
      sink.script = {};
      sink.messages.length = 0;
    }
    connections = 0;
  });

  async function deliver(domain: string, recipients: string[], from = 'sender@example.com') {
    const route = await resolver.routeFor(domain);
    assert.ok(route.ok, JSON.stringify(route));
    const request: DeliveryRequest = { messageId: 'm-1', domain, from, recipients, raw: MESSAGE, hosts: route.hosts };
    const results = await deliverer.deliver(request);
    return Object.fromEntries(results.map((r) => [r.recipient, r]));
  }

  it('delivers all recipients of a domain in one transaction to the preferred MX, byte for byte', async () => {
    const results = await deliver('dest.test', ['a@dest.test', 'b@dest.test']);
    assert.equal(results['a@dest.test']?.outcome, 'delivered');
    assert.equal(results['b@dest.test']?.outcome, 'delivered');
    assert.equal(results['a@dest.test']?.mx, 'mx1.dest.test');
    assert.equal(primary.messages.length, 1);
    assert.equal(secondary.messages.length, 0);
    const [message] = primary.messages;
    assert.deepEqual(message!.rcptTo, ['a@dest.test', 'b@dest.test']);
    assert.equal(message!.mailFrom, 'sender@example.com');
    assert.equal(message!.clientHostname, 'worker.hedwig.test', 'EHLO uses the configured name');
    assert.ok(message!.raw.equals(MESSAGE), 'the message arrives byte for byte');
  });

  it('sends the null reverse-path as MAIL FROM:<>', async () => {
    await deliver('dest.test', ['a@dest.test'], '');
    assert.equal(primary.messages[0]?.mailFrom, '');
  });

  it('reports a per-recipient rejection with its reply and delivers the others', async () => {
    primary.script = { recipients: { 'nobody@dest.test': { code: 550, message: '5.1.1 no such user' } } };
    const results = await deliver('dest.test', ['a@dest.test', 'nobody@dest.test']);
    assert.equal(results['a@dest.test']?.outcome, 'delivered');
    assert.deepEqual(
      { ...results['nobody@dest.test'] },
      { recipient: 'nobody@dest.test', mx: 'mx1.dest.test', outcome: 'bounced', greylisted: false, responseCode: 550, enhancedCode: '5.1.1', response: '550 5.1.1 no such user' },
    );
    assert.deepEqual(primary.messages[0]?.rcptTo, ['a@dest.test']);
  });

  it('a greylisting reply defers the recipient and marks it greylisted', async () => {
    primary.script = { recipients: { 'a@dest.test': { code: 450, message: '4.2.0 greylisted, come back later' } } };
    const results = await deliver('dest.test', ['a@dest.test']);
    assert.equal(results['a@dest.test']?.outcome, 'deferred');
    assert.equal(results['a@dest.test']?.greylisted, true);
    assert.equal(primary.messages.length + secondary.messages.length, 0);
  });

  it('a rejected DATA is the outcome of every accepted recipient; RCPT rejections keep their own', async () => {
    primary.script = {
      recipients: { 'nobody@dest.test': { code: 550, message: '5.1.1 no such user' } },
      data: { code: 451, message: '4.3.0 temporary local problem' },
    };
    const results = await deliver('dest.test', ['a@dest.test', 'b@dest.test', 'nobody@dest.test']);
    assert.equal(results['a@dest.test']?.outcome, 'deferred');
    assert.equal(results['a@dest.test']?.response, '451 4.3.0 temporary local problem');
    assert.equal(results['b@dest.test']?.outcome, 'deferred');
    assert.equal(results['nobody@dest.test']?.outcome, 'bounced');

    primary.script = { data: { code: 554, message: '5.7.1 message rejected as spam' } };
    const permanent = await deliver('dest.test', ['a@dest.test', 'b@dest.test']);
    assert.equal(permanent['a@dest.test']?.outcome, 'bounced');
    assert.equal(permanent['b@dest.test']?.enhancedCode, '5.7.1');
    assert.equal(secondary.messages.length, 0, 'a verdict after MAIL FROM is final for this attempt: no second MX');
  });

  it('a connection dropped during DATA defers the recipients', async () => {
    primary.script = { dropDuringData: true };
    const results = await deliver('dest.test', ['a@dest.test']);
    assert.equal(results['a@dest.test']?.outcome, 'deferred');
    assert.match(results['a@dest.test']!.response, /ECONNECTION/);
  });

  it('a primary MX that greets with 4xx is skipped for the secondary in the same attempt', async () => {
    primary.script = { greeting: { code: 421, message: '4.3.2 too busy, try another MX' } };
    const results = await deliver('dest.test', ['a@dest.test']);
    assert.equal(results['a@dest.test']?.outcome, 'delivered');
    assert.equal(results['a@dest.test']?.mx, 'mx2.dest.test');
    assert.equal(primary.connections > 0, true);
    assert.equal(primary.messages.length, 0);
    assert.equal(secondary.messages.length, 1);
  });

  it('a primary MX that refuses connections is skipped for the secondary', async () => {
    const results = await deliver('down.test', ['a@down.test']);
    assert.equal(results['a@down.test']?.outcome, 'delivered');
    assert.equal(results['a@down.test']?.mx, 'mx2.dest.test');
    assert.equal(connections, 2);
    assert.deepEqual(secondary.messages[0]?.rcptTo, ['a@down.test']);
  });

  it('when no MX can be reached the recipients are deferred with the connection error', async () => {
    const results = await deliver('alldown.test', ['a@alldown.test', 'b@alldown.test']);
    for (const recipient of ['a@alldown.test', 'b@alldown.test']) {
      assert.equal(results[recipient]?.outcome, 'deferred');
      assert.match(results[recipient]!.response, /ECONNREFUSED/);
    }
  });

  it('when every MX greets with 4xx the recipients are deferred with the last reply', async () => {
    primary.script = { greeting: { code: 421, message: '4.3.2 busy' } };
    secondary.script = { greeting: { code: 421, message: '4.3.2 busy too' } };
    const results = await deliver('dest.test', ['a@dest.test']);
    assert.equal(results['a@dest.test']?.outcome, 'deferred');
    assert.equal(results['a@dest.test']?.response, '421 4.3.2 busy too');
    assert.equal(results['a@dest.test']?.mx, 'mx2.dest.test');
  });
});

describe('deliver over STARTTLS', { timeout: 30_000 }, () => {
  it('upgrades when the server offers STARTTLS, even with a self-signed certificate', async (t) => {
    const sink = await startSmtpSink({ starttls: true });
    t.after(() => sink.stop());
    const deliverer = createDeliverer({ ehloName: 'worker.hedwig.test', timeouts: { connectMs: 3000, greetingMs: 3000, socketMs: 5000 }, logger: pino({ level: 'silent' }) });
    const results = await deliverer.deliver({
      messageId: 'm-tls',
      domain: 'tls.test',
      from: 'sender@example.com',
      recipients: ['a@tls.test'],
      raw: Buffer.from('Subject: tls\r\n\r\nsecret\r\n'),
      hosts: [{ name: 'mx.tls.test', preference: 0, addresses: [sink.host], port: sink.port }],
    });
    assert.equal(results[0]?.outcome, 'delivered', results[0]?.response);
    assert.equal(sink.messages[0]?.secure, true);
  });
});
