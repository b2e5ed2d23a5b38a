import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { pino } from 'pino';
import { BeanstalkClient } from '../../shared/beanstalk.ts';
import { encodeJob, TUBE, type OutboundJob } from '../../shared/job.ts';
import { readConfiguredFiles } from '../../worker/config.ts';
import { startWorker, type RunningWorker } from '../../worker/server.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { startDns, type DnsRecords, type DnsServer } from '../helpers/dns.ts';
import { freePort, waitFor } from '../helpers/ports.ts';
import { startSmtpSink, type SmtpSink } from '../helpers/smtp-sink.ts';
import { makeTestCa, type TestCa } from '../helpers/test-ca.ts';
import { testWorkerConfig } from '../helpers/worker-config.ts';

/**
 * MTA-STS (RFC 8461) and TLS-RPT (RFC 8460) through a real worker: MX records and TXT
 * records from dnsmasq, policies from an HTTPS server on loopback with a certificate of a
 * private test CA (the worker trusts it through tls.caFile), receiving servers on loopback
 * addresses. Reports go to an HTTPS receiver and, as mail queued through the worker itself,
 * to the report domain's MX; the test parses both.
 */
describe('MTA-STS and TLS-RPT', { timeout: 120_000 }, () => {
  let ca: TestCa;
  let otherCa: TestCa;
  let beanstalkd: BeanstalkdProcess;
  let dns: DnsServer;
  let policyServer: Server;
  let reportReceiver: Server;
  let worker: RunningWorker | undefined;
  const sinks: Record<string, SmtpSink> = {};
  const posted: Array<{ type: string | undefined; body: Buffer }> = [];
  const logs: Array<Record<string, unknown>> = [];
  const stateDir = mkdtempSync(join(tmpdir(), 'hedwig-sts-state-'));
  let smtpPort: number;
  let policyPort: number;
  let records: DnsRecords;

  const policies: Record<string, string> = {
    'mta-sts.enforce.test': 'version: STSv1\nmode: enforce\nmx: mx1.enforce.test\nmax_age: 86400\n',
    'mta-sts.badcert.test': 'version: STSv1\nmode: enforce\nmx: mx.badcert.test\nmax_age: 86400\n',
    'mta-sts.notls.test': 'version: STSv1\nmode: enforce\nmx: mx.notls.test\nmax_age: 86400\n',
    'mta-sts.testing.test': 'version: STSv1\nmode: testing\nmx: mx.testing.test\nmax_age: 86400\n',
    'mta-sts.strict.test': 'version: STSv1\nmode: testing\nmx: mx.strict.test\nmax_age: 86400\n',
  };

  before(async () => {
    ca = await makeTestCa(['mx1.enforce.test', 'mx.testing-good.test', 'reports.test', ...Object.keys(policies)]);
    const tls = { key: readFileSync(ca.key), cert: readFileSync(ca.cert) };
    // A certificate for the right name from a CA the worker does not trust.
    otherCa = await makeTestCa(['mx.testing.test']);
    smtpPort = await freePort('127.0.0.1');
    // One port, one loopback address per receiving server, as MX hosts on port 25 would be.
    sinks.enforce = await startSmtpSink({ host: '127.0.0.11', port: smtpPort, starttls: true, tls });
    sinks.rogue = await startSmtpSink({ host: '127.0.0.12', port: smtpPort, starttls: true, tls });
    sinks.badcert = await startSmtpSink({ host: '127.0.0.13', port: smtpPort, starttls: true }); // smtp-server's self-signed certificate
    sinks.notls = await startSmtpSink({ host: '127.0.0.14', port: smtpPort });
    sinks.testing = await startSmtpSink({ host: '127.0.0.15', port: smtpPort, starttls: true, tls: { key: readFileSync(otherCa.key), cert: readFileSync(otherCa.cert) } });
    sinks.reports = await startSmtpSink({ host: '127.0.0.16', port: smtpPort });
    sinks.strict = await startSmtpSink({ host: '127.0.0.17', port: smtpPort, starttls: true });

    policyServer = createServer(tls, (req, res) => {
      const body = policies[String(req.headers.host).replace(/:\d+$/, '')];
      if (!body || req.url !== '/.well-known/mta-sts.txt') res.writeHead(404).end();
      else res.writeHead(200, { 'content-type': 'text/plain' }).end(body);
    });
    await new Promise<void>((resolve) => policyServer.listen(0, '127.0.0.1', resolve));
    policyPort = (policyServer.address() as { port: number }).port;
    reportReceiver = createServer(tls, (req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        posted.push({ type: req.headers['content-type'], body: Buffer.concat(chunks) });
        res.writeHead(200).end();
      });
    });
    await new Promise<void>((resolve) => reportReceiver.listen(0, '127.0.0.1', resolve));
    const reportPort = (reportReceiver.address() as { port: number }).port;

    records = {
      mx: {
        // The rogue MX is preferred: an attacker's record that the policy does not list.
        'enforce.test': [{ host: 'mx-rogue.enforce.test', preference: 5 }, { host: 'mx1.enforce.test', preference: 10 }],
        'badcert.test': [{ host: 'mx.badcert.test', preference: 10 }],
        'notls.test': [{ host: 'mx.notls.test', preference: 10 }],
        'testing.test': [{ host: 'mx.testing.test', preference: 10 }],
        'strict.test': [{ host: 'mx.strict.test', preference: 10 }],
        'reports.test': [{ host: 'mx.reports.test', preference: 10 }],
      },
      hosts: {
        'mx1.enforce.test': ['127.0.0.11'],
        'mx-rogue.enforce.test': ['127.0.0.12'],
        'mx.badcert.test': ['127.0.0.13'],
        'mx.notls.test': ['127.0.0.14'],
        'mx.testing.test': ['127.0.0.15'],
        'mx.reports.test': ['127.0.0.16'],
        'mx.strict.test': ['127.0.0.17'],
        'reports.test': ['127.0.0.1'],
        ...Object.fromEntries(Object.keys(policies).map((host) => [host, ['127.0.0.1']])),
      },
      txt: {
        '_mta-sts.enforce.test': ['v=STSv1; id=e1;'],
        '_mta-sts.badcert.test': ['v=STSv1; id=b1;'],
        '_mta-sts.notls.test': ['v=STSv1; id=n1;'],
        '_mta-sts.testing.test': ['v=STSv1; id=t1;'],
        '_mta-sts.strict.test': ['v=STSv1; id=s1;'],
        '_smtp._tls.enforce.test': [`v=TLSRPTv1; rua=https://reports.test:${reportPort}/tlsrpt`],
        '_smtp._tls.testing.test': [`v=TLSRPTv1; rua=mailto:tlsrpt@reports.test,https://reports.test:${reportPort}/tlsrpt`],
      },
    };
    dns = await startDns(records);
    beanstalkd = await startBeanstalkd();
  });

  after(async () => {
    await worker?.stop();
    await beanstalkd?.stop();
    await dns?.stop();
    await Promise.all(Object.values(sinks).map((sink) => sink.stop()));
    for (const server of [policyServer, reportReceiver]) await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  });

  async function start(dnsServer: string, extra: Record<string, unknown> = {}): Promise<RunningWorker> {
    const config = testWorkerConfig(beanstalkd.address, {
      concurrency: 4,
      dns: { servers: [dnsServer], cacheMaxSeconds: 0 },
      smtpPort,
      allowPrivateAddresses: true,
      tls: { policy: 'may', caFile: ca.caCert, domains: { 'strict.test': 'verify' } },
      mtaSts: { port: policyPort, fetchTimeoutMs: 5000 },
      tlsRpt: { enabled: true, intervalSeconds: 3, from: 'tlsrpt@sender.test', organizationName: 'hedwig test' },
      stateDir,
      ...extra,
    });
    const logger = pino({ level: 'info' }, { write: (line: string) => logs.push(JSON.parse(line)) });
    return startWorker(config, { logger, files: readConfiguredFiles(config, '(test)') });
  }

  async function send(domain: string): Promise<string> {
    const client = new BeanstalkClient({ host: '127.0.0.1', port: beanstalkd.port });
    await client.connect();
    const job: OutboundJob = {
      v: 1,
      id: randomUUID(),
      fqdn: 'app.sender.test',
      mailfrom: 'app@sender.test',
      rcpttos: [`rcpt@${domain}`],
      data: Buffer.from(`From: app@sender.test\r\nTo: rcpt@${domain}\r\nSubject: sts ${domain}\r\n\r\nsecret for ${domain}\r\n`).toString('base64'),
      receivedAt: Date.now(),
      attempts: 0,
    };
    await client.putTo(TUBE.outbound, encodeJob(job));
    await client.close();
    return job.id;
  }

  const outcomeOf = (messageId: string) =>
    waitFor(() => logs.find((l) => l.messageId === messageId && ['delivered', 'deferred', 'bounced'].includes(String(l.event))), { timeoutMs: 30_000, intervalMs: 50, what: `an outcome for ${messageId}` });

  it('enforce: skips an MX host the policy does not list and delivers over verified TLS to one it does', async () => {
    worker = await start(dns.server);
    const id = await send('enforce.test');
    const outcome = await outcomeOf(id);
    assert.equal(outcome.event, 'delivered', JSON.stringify(outcome));
    assert.equal(outcome.mx, 'mx1.enforce.test');
    assert.equal(sinks.rogue!.messages.length, 0, 'nothing went to the unlisted MX');
    assert.equal(sinks.enforce!.messages.at(-1)?.secure, true);
    const skipped = logs.find((l) => l.event === 'attempt' && l.stage === 'tls-policy' && l.mx === 'mx-rogue.enforce.test');
    assert.match(String(skipped?.response), /^451 4\.7\.5 MTA-STS policy enforce for enforce\.test: mx-rogue\.enforce\.test is not among the policy's MX hosts/);
    const attempt = logs.find((l) => l.messageId === id && l.event === 'attempt' && l.stage === 'transaction');
    assert.equal(attempt?.tlsPolicy, 'verify');
  });

  it('enforce: a certificate that does not verify, or no STARTTLS, defers with an enhanced code; never plaintext', async () => {
    const bad = await outcomeOf(await send('badcert.test'));
    assert.equal(bad.event, 'deferred');
    assert.match(String(bad.response), /^451 4\.7\.5 MTA-STS policy enforce for badcert\.test: the certificate of mx\.badcert\.test could not be verified/);
    const notls = await outcomeOf(await send('notls.test'));
    assert.equal(notls.event, 'deferred');
    assert.match(String(notls.response), /^451 4\.7\.10 MTA-STS policy enforce for notls\.test: mx\.notls\.test did not complete STARTTLS/);
    assert.equal(sinks.badcert!.messages.length + sinks.notls!.messages.length, 0);
  });

  it('testing: delivers as configured (may) although the certificate does not verify; a stricter per-domain tls setting still wins', async () => {
    const testing = await outcomeOf(await send('testing.test'));
    assert.equal(testing.event, 'delivered', JSON.stringify(testing));
    assert.equal(sinks.testing!.messages.at(-1)?.secure, true);
    const strict = await outcomeOf(await send('strict.test'));
    assert.equal(strict.event, 'deferred');
    assert.match(String(strict.response), /^451 4\.7\.5 TLS policy verify for strict\.test: the certificate of mx\.strict\.test could not be verified/);
    assert.equal(sinks.strict!.messages.length, 0);
  });

  it('TLS-RPT: reports each policy domain with a _smtp._tls record, POSTed (gzip JSON) and mailed through the worker', async () => {
    const reportOf = (body: Buffer) => JSON.parse(gunzipSync(body).toString()) as { policies: Array<{ policy: Record<string, unknown>; summary: Record<string, number>; 'failure-details'?: Array<Record<string, unknown>> }> };
    const byDomain = (domain: string) => posted.map((p) => reportOf(p.body)).filter((r) => r.policies.some((p) => p.policy['policy-domain'] === domain));
    await waitFor(() => byDomain('enforce.test').length > 0 && byDomain('testing.test').length > 0, { timeoutMs: 20_000, intervalMs: 100, what: 'TLS reports POSTed' });
    assert.ok(posted.every((p) => p.type === 'application/tlsrpt+gzip'));

    const enforce = byDomain('enforce.test').flatMap((r) => r.policies);
    const total = (key: string) => enforce.reduce((n, p) => n + p.summary[key]!, 0);
    assert.ok(total('total-successful-session-count') >= 1);
    const failures = enforce.flatMap((p) => p['failure-details'] ?? []);
    assert.ok(failures.some((f) => f['result-type'] === 'validation-failure' && f['receiving-mx-hostname'] === 'mx-rogue.enforce.test'), JSON.stringify(failures));
    assert.deepEqual(enforce[0]!.policy['policy-string'], ['version: STSv1', 'mode: enforce', 'mx: mx1.enforce.test', 'max_age: 86400']);

    const testing = byDomain('testing.test').flatMap((r) => r.policies);
    const testingFailures = testing.flatMap((p) => p['failure-details'] ?? []);
    assert.ok(testingFailures.some((f) => f['result-type'] === 'certificate-not-trusted' && f['receiving-ip'] === '127.0.0.15' && f['sending-mta-ip'] === '127.0.0.1'), JSON.stringify(testingFailures));
    // smtp-server's built-in certificate has expired: the enforce failure of badcert.test says so.
    const badcert = posted.map((p) => reportOf(p.body)).flatMap((r) => r.policies).filter((p) => p.policy['policy-domain'] === 'badcert.test');
    assert.equal(badcert.length, 0, 'badcert.test publishes no _smtp._tls record: no report');

    // The mailto: report went through the outbound queue and the worker's own delivery.
    await waitFor(() => sinks.reports!.messages.length > 0, { timeoutMs: 20_000, intervalMs: 100, what: 'the TLS report mail' });
    const mail = sinks.reports!.messages[0]!;
    assert.equal(mail.mailFrom, '');
    assert.deepEqual(mail.rcptTo, ['tlsrpt@reports.test']);
    const text = mail.raw.toString('latin1');
    assert.match(text, /^Subject: Report Domain: testing\.test Submitter: worker\.hedwig\.test Report-ID: </m);
    assert.match(text, /^Content-Type: multipart\/report; report-type="tlsrpt"/m);
    const attachment = /Content-Type: application\/tlsrpt\+gzip\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: [^\r]+\r\n\r\n([A-Za-z0-9+/=\r\n]+?)\r\n\r\n--/.exec(text)?.[1];
    assert.ok(attachment, text.slice(0, 2000));
    const mailed = reportOf(Buffer.from(attachment.replace(/\r\n/g, ''), 'base64'));
    assert.equal(mailed.policies[0]!.policy['policy-domain'], 'testing.test');
    assert.ok(logs.some((l) => l.event === 'tls_rpt_sent' && l.via === 'mailto'));
  });

  it('keeps an enforce policy across a restart: a worker whose DNS lost the TXT record and cannot reach the policy server still enforces it', async () => {
    await worker?.stop();
    worker = undefined;
    assert.ok(existsSync(join(stateDir, 'mta-sts-policies.json')));
    const stripped = await startDns({ ...records, txt: {} });
    await new Promise<void>((resolve) => policyServer.close(() => resolve()));
    try {
      worker = await start(stripped.server);
      const before = sinks.rogue!.messages.length;
      const outcome = await outcomeOf(await send('enforce.test'));
      assert.equal(outcome.event, 'delivered');
      assert.equal(outcome.mx, 'mx1.enforce.test');
      assert.equal(sinks.rogue!.messages.length, before, 'the rogue MX is still skipped');
    } finally {
      await worker?.stop();
      worker = undefined;
      await stripped.stop();
    }
  });
});
