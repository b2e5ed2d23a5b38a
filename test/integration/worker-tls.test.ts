import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { pino } from 'pino';
import { createDeliverer, type DeliveryRequest } from '../../worker/deliver.ts';
import type { TlsMode, TlsPolicySettings } from '../../worker/tls-policy.ts';
import { startSmtpSink, type SmtpSink } from '../helpers/smtp-sink.ts';
import { makeTestCa, type TestCa } from '../helpers/test-ca.ts';

/**
 * TLS policy per destination against real SMTP servers on loopback: one offering
 * STARTTLS with smtp-server's self-signed certificate, one with a certificate from a test
 * CA made with openssl, one without STARTTLS, and one whose TLS handshake always fails.
 * The sink records whether each session was encrypted.
 */
describe('TLS policy towards receiving servers', { timeout: 60_000 }, () => {
  let selfSigned: SmtpSink;
  let caSigned: SmtpSink;
  let plain: SmtpSink;
  let brokenTls: SmtpSink;
  let ca: TestCa;
  const MESSAGE = Buffer.from('From: a@example.com\r\nSubject: tls\r\nMessage-ID: <t@example.com>\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\n\r\nsecret\r\n');

  before(async () => {
    ca = await makeTestCa(['mx.verify.test']);
    selfSigned = await startSmtpSink({ starttls: true });
    caSigned = await startSmtpSink({ starttls: true, tls: { key: readFileSync(ca.key), cert: readFileSync(ca.cert) } });
    plain = await startSmtpSink();
    // The sink only speaks TLS 1.0, which Node's client refuses: every handshake fails.
    brokenTls = await startSmtpSink({ starttls: true, tlsMaxVersion: 'TLSv1' });
  });

  after(async () => {
    await Promise.all([selfSigned, caSigned, plain, brokenTls].map((sink) => sink?.stop()));
  });

  function deliverer(domains: Record<string, TlsMode>, extra: Partial<TlsPolicySettings> = {}) {
    const lines: Array<Record<string, unknown>> = [];
    const logger = pino({ level: 'info' }, { write: (line: string) => lines.push(JSON.parse(line)) });
    let connections = 0;
    const instance = createDeliverer({
      ehloName: 'out.example.com',
      timeouts: { connectMs: 3000, greetingMs: 3000, socketMs: 5000 },
      logger,
      onConnection: () => connections++,
      tls: { policy: 'may', domains, ca: readFileSync(ca.caCert), brokenHostMemoryMs: 60_000, ...extra },
    });
    return { instance, lines, connections: () => connections };
  }

  function request(domain: string, sink: SmtpSink, mxName = `mx.${domain}`): DeliveryRequest {
    return { messageId: `m-${domain}`, domain, from: 'a@example.com', recipients: [`rcpt@${domain}`], raw: MESSAGE, hosts: [{ name: mxName, preference: 0, addresses: [sink.host], port: sink.port }] };
  }

  it('may (the default): upgrades with STARTTLS even to a self-signed certificate, and logs version and cipher', async () => {
    const { instance, lines } = deliverer({});
    const before = selfSigned.messages.length;
    const [result] = await instance.deliver(request('may.test', selfSigned));
    assert.equal(result?.outcome, 'delivered', result?.response);
    assert.equal(selfSigned.messages[before]?.secure, true, 'the sink saw an encrypted session');
    const attempt = lines.find((l) => l.event === 'attempt' && l.stage === 'transaction');
    assert.equal(attempt?.tls, true);
    assert.match(String(attempt?.tlsVersion), /^TLSv1\.[23]$/);
    assert.match(String(attempt?.tlsCipher), /\w/);
    assert.equal(attempt?.tlsPolicy, 'may');
  });

  it('none: stays in plaintext although STARTTLS is offered', async () => {
    const { instance } = deliverer({ 'none.test': 'none' });
    const before = selfSigned.messages.length;
    const [result] = await instance.deliver(request('none.test', selfSigned));
    assert.equal(result?.outcome, 'delivered');
    assert.equal(selfSigned.messages[before]?.secure, false);
  });

  it('encrypt: delivers over TLS with any certificate, and defers with a clear reason when STARTTLS is missing', async () => {
    const { instance } = deliverer({ 'enc.test': 'encrypt' });
    const before = selfSigned.messages.length;
    const [ok] = await instance.deliver(request('enc.test', selfSigned));
    assert.equal(ok?.outcome, 'delivered');
    assert.equal(selfSigned.messages[before]?.secure, true);

    const plainBefore = plain.messages.length;
    const [refused] = await instance.deliver(request('enc.test', plain));
    assert.equal(refused?.outcome, 'deferred');
    assert.equal(refused?.enhancedCode, '4.7.10');
    assert.match(refused!.response, /^451 4\.7\.10 TLS policy encrypt for enc\.test: mx\.enc\.test did not complete STARTTLS/);
    assert.equal(plain.messages.length, plainBefore, 'nothing was sent in plaintext');
  });

  it('verify: delivers when the certificate chains to the configured CA and names the MX host', async () => {
    const { instance } = deliverer({ 'verify.test': 'verify' });
    const before = caSigned.messages.length;
    const [result] = await instance.deliver(request('verify.test', caSigned, 'mx.verify.test'));
    assert.equal(result?.outcome, 'delivered', result?.response);
    assert.equal(caSigned.messages[before]?.secure, true);
  });

  it('verify: defers (never plaintext) for an untrusted certificate or one for another name', async () => {
    const { instance } = deliverer({ 'verify.test': 'verify' });
    const untrusted = await instance.deliver(request('verify.test', selfSigned, 'mx.verify.test'));
    assert.equal(untrusted[0]?.outcome, 'deferred');
    assert.equal(untrusted[0]?.enhancedCode, '4.7.5');
    assert.match(untrusted[0]!.response, /TLS policy verify for verify\.test: the certificate of mx\.verify\.test could not be verified/);

    const wrongName = await instance.deliver(request('verify.test', caSigned, 'other.verify.test'));
    assert.equal(wrongName[0]?.outcome, 'deferred');
    assert.match(wrongName[0]!.response, /the certificate of other\.verify\.test could not be verified/);
  });

  it('may: a host whose handshake fails gets the message in plaintext, and is remembered for the next one', async () => {
    const { instance, connections } = deliverer({});
    const before = brokenTls.messages.length;
    const [first] = await instance.deliver(request('broken.test', brokenTls));
    assert.equal(first?.outcome, 'delivered', first?.response);
    assert.equal(brokenTls.messages[before]?.secure, false);
    assert.equal(connections(), 2, 'one failed TLS attempt, then plaintext');
    const [second] = await instance.deliver(request('broken.test', brokenTls));
    assert.equal(second?.outcome, 'delivered');
    assert.equal(connections(), 3, 'straight to plaintext the second time');
  });

  it('encrypt: a failing handshake is deferred, not retried in plaintext', async () => {
    const { instance, connections } = deliverer({ 'broken.test': 'encrypt' });
    const before = brokenTls.messages.length;
    const [result] = await instance.deliver(request('broken.test', brokenTls));
    assert.equal(result?.outcome, 'deferred');
    assert.match(result!.response, /^451 4\.7\.10 TLS policy encrypt for broken\.test/);
    assert.equal(connections(), 1);
    assert.equal(brokenTls.messages.length, before);
  });
});
