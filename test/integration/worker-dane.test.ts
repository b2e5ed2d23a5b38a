import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes, randomUUID, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { pino } from 'pino';
import { BeanstalkClient } from '../../shared/beanstalk.ts';
import { encodeJob, TUBE, type OutboundJob } from '../../shared/job.ts';
import { readConfiguredFiles } from '../../worker/config.ts';
import { startWorker, type RunningWorker } from '../../worker/server.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { startDnssecResolver, type DnssecResolver } from '../helpers/dnssec.ts';
import { freePort, waitFor } from '../helpers/ports.ts';
import { startSmtpSink, type SmtpSink } from '../helpers/smtp-sink.ts';
import { makeTestCa, type TestCa } from '../helpers/test-ca.ts';
import { testWorkerConfig } from '../helpers/worker-config.ts';

/**
 * DANE for SMTP (RFC 7672) through a real worker whose resolver is unbound validating a
 * zone signed for the test (ldns-signzone, served by nsd), all on loopback. The MX hosts'
 * TLSA records match their certificate (DANE-EE 3 1 1), their CA (DANE-TA 2 0 1), or
 * nothing; one TLSA record was changed after signing (bogus); one zone is not signed
 * (insecure: DANE does not apply there, whatever its TLSA records say).
 */
describe('DANE towards MX hosts', { timeout: 120_000 }, () => {
  let ca: TestCa;
  let resolver: DnssecResolver;
  let beanstalkd: BeanstalkdProcess;
  let worker: RunningWorker;
  let smtpPort: number;
  const sinks: Record<string, SmtpSink> = {};
  const logs: Array<Record<string, unknown>> = [];

  before(async () => {
    ca = await makeTestCa(['mx-ee.dane.test', 'mx-ta.dane.test', 'mx-bad.dane.test', 'mx-bogus.dane.test', 'mx-wrongname.dane.test', 'mx.plain.test']);
    const leaf = readFileSync(ca.cert);
    const key = readFileSync(ca.key);
    // The server sends its CA along, as DANE-TA needs (RFC 7672 §3.1.2).
    const withChain = { key, cert: Buffer.concat([leaf, readFileSync(ca.caCert)]) };
    const other = await makeTestCa(['mx-wrongname.elsewhere.test']);
    smtpPort = await freePort('127.0.0.1');
    sinks.ee = await startSmtpSink({ host: '127.0.0.31', port: smtpPort, starttls: true, tls: { key, cert: leaf } });
    sinks.ta = await startSmtpSink({ host: '127.0.0.32', port: smtpPort, starttls: true, tls: withChain });
    sinks.bad = await startSmtpSink({ host: '127.0.0.33', port: smtpPort, starttls: true, tls: { key, cert: leaf } });
    sinks.bogus = await startSmtpSink({ host: '127.0.0.34', port: smtpPort, starttls: true, tls: { key, cert: leaf } });
    sinks.notls = await startSmtpSink({ host: '127.0.0.35', port: smtpPort });
    sinks.plain = await startSmtpSink({ host: '127.0.0.36', port: smtpPort, starttls: true, tls: { key, cert: leaf } });
    sinks.wrongname = await startSmtpSink({ host: '127.0.0.37', port: smtpPort, starttls: true, tls: { key: readFileSync(other.key), cert: Buffer.concat([readFileSync(other.cert), readFileSync(other.caCert)]) } });

    const hex = (data: Buffer) => createHash('sha256').update(data).digest('hex');
    const spki = hex(new X509Certificate(leaf).publicKey.export({ type: 'spki', format: 'der' }) as Buffer);
    const caDigest = hex(new X509Certificate(readFileSync(ca.caCert)).raw);
    const otherCaDigest = hex(new X509Certificate(readFileSync(other.caCert)).raw);
    const tlsa = (host: string, rdata: string) => `_${smtpPort}._tcp.${host} IN TLSA ${rdata}`;
    const mx = (domain: string, host: string, address: string) => [`${domain} IN MX 10 ${host}`, `${host} IN A ${address}`];
    resolver = await startDnssecResolver({
      signed: {
        name: 'dane.test',
        records: [
          ...mx('ee', 'mx-ee', '127.0.0.31'),
          tlsa('mx-ee', `3 1 1 ${spki}`),
          ...mx('ta', 'mx-ta', '127.0.0.32'),
          tlsa('mx-ta', `2 0 1 ${caDigest}`),
          ...mx('bad', 'mx-bad', '127.0.0.33'),
          tlsa('mx-bad', `3 1 1 ${randomBytes(32).toString('hex')}`),
          ...mx('bogus', 'mx-bogus', '127.0.0.34'),
          tlsa('mx-bogus', `3 1 1 ${spki}`),
          ...mx('notls', 'mx-notls', '127.0.0.35'),
          tlsa('mx-notls', `3 1 1 ${spki}`),
          // DANE-TA: the anchor matches, but the certificate names another host.
          ...mx('wrongname', 'mx-wrongname', '127.0.0.37'),
          tlsa('mx-wrongname', `2 0 1 ${otherCaDigest}`),
          ...mx('none', 'mx-none', '127.0.0.31'),
        ],
      },
      unsigned: { name: 'plain.test', records: ['@ IN MX 10 mx', 'mx IN A 127.0.0.36', `_${smtpPort}._tcp.mx IN TLSA 3 1 1 ${randomBytes(32).toString('hex')}`] },
      tamper: [{ owner: `_${smtpPort}._tcp.mx-bogus`, type: 'TLSA', rdata: `3 1 1 ${randomBytes(32).toString('hex')}` }],
    });
    beanstalkd = await startBeanstalkd();
    const config = testWorkerConfig(beanstalkd.address, {
      concurrency: 4,
      dns: { servers: [resolver.server], cacheMaxSeconds: 0 },
      smtpPort,
      allowPrivateAddresses: true,
      mtaSts: { enabled: false },
    });
    const logger = pino({ level: 'info' }, { write: (line: string) => logs.push(JSON.parse(line)) });
    worker = await startWorker(config, { logger, files: readConfiguredFiles(config, '(test)') });
  });

  after(async () => {
    await worker?.stop();
    await beanstalkd?.stop();
    await resolver?.stop();
    await Promise.all(Object.values(sinks).map((sink) => sink.stop()));
  });

  async function deliver(domain: string): Promise<Record<string, unknown>> {
    const client = new BeanstalkClient({ host: '127.0.0.1', port: beanstalkd.port });
    await client.connect();
    const job: OutboundJob = {
      v: 1,
      id: randomUUID(),
      fqdn: 'app.sender.test',
      mailfrom: 'app@sender.test',
      rcpttos: [`rcpt@${domain}`],
      data: Buffer.from(`From: app@sender.test\r\nTo: rcpt@${domain}\r\nSubject: dane\r\n\r\nsecret\r\n`).toString('base64'),
      receivedAt: Date.now(),
      attempts: 0,
    };
    await client.putTo(TUBE.outbound, encodeJob(job));
    await client.close();
    return waitFor(() => logs.find((l) => l.messageId === job.id && ['delivered', 'deferred', 'bounced'].includes(String(l.event))), {
      timeoutMs: 30_000,
      intervalMs: 50,
      what: `the outcome for ${domain}\n${resolver.log().slice(-2000)}`,
    });
  }

  it('DANE-EE 3 1 1: delivers over TLS to a server whose key matches, its certificate unverifiable by any CA', async () => {
    const outcome = await deliver('ee.dane.test');
    assert.equal(outcome.event, 'delivered', JSON.stringify(outcome));
    assert.equal(sinks.ee!.messages.at(-1)?.secure, true);
    const attempt = logs.find((l) => l.event === 'attempt' && l.stage === 'transaction' && l.mx === 'mx-ee.dane.test');
    assert.equal(attempt?.tlsPolicy, 'encrypt', 'TLS was required');
  });

  it('DANE-TA 2 0 1: delivers when the chain leads to the TLSA trust anchor and names the MX host', async () => {
    const outcome = await deliver('ta.dane.test');
    assert.equal(outcome.event, 'delivered', JSON.stringify(outcome));
    assert.equal(sinks.ta!.messages.at(-1)?.secure, true);
    const wrongName = await deliver('wrongname.dane.test');
    assert.equal(wrongName.event, 'deferred');
    assert.match(String(wrongName.response), /^451 4\.7\.5 DANE for wrongname\.dane\.test: the certificate of mx-wrongname\.dane\.test matches no TLSA record \(.*does not name it/);
    assert.equal(sinks.wrongname!.messages.length, 0);
  });

  it('a certificate that matches no TLSA record, or no STARTTLS, defers with an enhanced code and sends nothing', async () => {
    const bad = await deliver('bad.dane.test');
    assert.equal(bad.event, 'deferred');
    assert.match(String(bad.response), /^451 4\.7\.5 DANE for bad\.dane\.test: the certificate of mx-bad\.dane\.test matches no TLSA record/);
    const notls = await deliver('notls.dane.test');
    assert.equal(notls.event, 'deferred');
    assert.match(String(notls.response), /^451 4\.7\.10 DANE for notls\.dane\.test: mx-notls\.dane\.test did not complete STARTTLS/);
    assert.equal(sinks.bad!.messages.length + sinks.notls!.messages.length, 0, 'never plaintext, never to the wrong server');
  });

  it('DNSSEC-bogus TLSA records: the host is not used at all', async () => {
    const bogus = await deliver('bogus.dane.test');
    assert.equal(bogus.event, 'deferred');
    assert.match(String(bogus.response), /^451 4\.7\.5 DANE for bogus\.dane\.test: TLSA lookup of _\d+\._tcp\.mx-bogus\.dane\.test answered SERVFAIL/);
    assert.equal(sinks.bogus!.connections, 0, 'no connection to the host');
  });

  it('insecure zone, or a signed zone without TLSA records: behaviour unchanged (may)', async () => {
    const plain = await deliver('plain.test');
    assert.equal(plain.event, 'delivered', JSON.stringify(plain));
    assert.equal(sinks.plain!.messages.at(-1)?.secure, true);
    const attempt = logs.find((l) => l.event === 'attempt' && l.stage === 'transaction' && l.mx === 'mx.plain.test');
    assert.equal(attempt?.tlsPolicy, 'may');
    const none = await deliver('none.dane.test');
    assert.equal(none.event, 'delivered');
    const noneAttempt = logs.find((l) => l.event === 'attempt' && l.stage === 'transaction' && l.mx === 'mx-none.dane.test');
    assert.equal(noneAttempt?.tlsPolicy, 'may');
  });
});
