import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { LookupFunction } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { pino } from 'pino';
import type { OutboundJob } from '../../shared/job.ts';
import { createTlsRptAggregator, periodStartOf, type PolicyDescription } from '../../worker/tls-rpt.ts';
import { buildReport, parseTlsRptRecord } from '../../worker/tls-rpt-report.ts';
import { sendPeriod } from '../../worker/tls-rpt-sender.ts';
import { tlsRptReportingId } from '../../worker/transport-security-setup.ts';

/** TLS-RPT (RFC 8460): counting sessions per policy, the report format, and where reports go. */
const silent = pino({ level: 'silent' });
const fixtures = join(import.meta.dirname, '../fixtures/tls');
const day = 86_400;
const sts: PolicyDescription = { type: 'sts', domain: 'a.test', strings: ['version: STSv1', 'mode: testing', 'mx: mx.a.test', 'max_age: 86400'], mxHosts: ['mx.a.test'] };
const tlsa: PolicyDescription = { type: 'tlsa', domain: 'b.test', strings: ['_25._tcp.mx.b.test IN TLSA 3 1 1 00ff'], mxHosts: ['mx.b.test'] };
const identity = { organizationName: 'Example Sender', contactInfo: 'mailto:postmaster@sender.test', submitter: 'out.sender.test' };

describe('TLS-RPT aggregation', () => {
  it('counts successes and each failure kind per policy, and hands over a period once it ended (UTC days)', () => {
    const clock = { t: Date.parse('2026-06-01T10:00:00Z') };
    const aggregator = createTlsRptAggregator({ intervalSeconds: day, reportingId: 'w1', logger: silent, now: () => clock.t });
    aggregator.success(sts);
    aggregator.success(sts);
    aggregator.failure(sts, { resultType: 'certificate-not-trusted', sendingMtaIp: '192.0.2.1', receivingMxHostname: 'mx.a.test', receivingIp: '198.51.100.1' });
    aggregator.failure(sts, { resultType: 'certificate-not-trusted', sendingMtaIp: '192.0.2.1', receivingMxHostname: 'mx.a.test', receivingIp: '198.51.100.1' });
    aggregator.failure(tlsa, { resultType: 'validation-failure', receivingMxHostname: 'mx.b.test' });
    assert.deepEqual(aggregator.takeEnded(), [], 'the day is not over');

    clock.t = Date.parse('2026-06-02T00:00:01Z');
    aggregator.success(sts); // belongs to the new day
    const [period, ...rest] = aggregator.takeEnded();
    assert.equal(rest.length, 0);
    assert.equal(new Date(period!.start).toISOString(), '2026-06-01T00:00:00.000Z');
    const report = buildReport('a.test', period!, identity, 'r1');
    assert.deepEqual(report, {
      'organization-name': 'Example Sender',
      'date-range': { 'start-datetime': '2026-06-01T00:00:00Z', 'end-datetime': '2026-06-01T23:59:59Z' },
      'contact-info': 'mailto:postmaster@sender.test',
      'report-id': 'r1',
      policies: [
        {
          policy: { 'policy-type': 'sts', 'policy-string': sts.strings, 'policy-domain': 'a.test', 'mx-host': ['mx.a.test'] },
          summary: { 'total-successful-session-count': 2, 'total-failure-session-count': 2 },
          'failure-details': [{ 'result-type': 'certificate-not-trusted', 'sending-mta-ip': '192.0.2.1', 'receiving-mx-hostname': 'mx.a.test', 'receiving-ip': '198.51.100.1', 'failed-session-count': 2 }],
        },
      ],
    });
    assert.equal(buildReport('b.test', period!, identity).policies[0]?.policy['policy-type'], 'tlsa');
  });

  it('keeps the counts across a restart; a period that ended while the worker was down is reported at the next start', () => {
    const dir = mkdtempSync(join(tmpdir(), 'hedwig-tlsrpt-'));
    const clock = { t: Date.parse('2026-06-01T10:00:00Z') };
    const first = createTlsRptAggregator({ intervalSeconds: day, stateDir: dir, reportingId: 'w1', logger: silent, now: () => clock.t });
    first.success(sts);
    first.save();
    const again = createTlsRptAggregator({ intervalSeconds: day, stateDir: dir, reportingId: 'w1', logger: silent, now: () => clock.t });
    again.success(sts);
    clock.t = Date.parse('2026-06-03T08:00:00Z');
    again.save();
    const later = createTlsRptAggregator({ intervalSeconds: day, stateDir: dir, reportingId: 'w1', logger: silent, now: () => clock.t });
    const ended = later.takeEnded();
    assert.equal(ended.length, 1);
    assert.equal(ended[0]!.policies[0]!.successes, 2);
    assert.deepEqual(later.takeEnded(), [], 'reported once');
  });

  it('periods are aligned to the epoch, so a daily one starts at UTC midnight', () => {
    assert.equal(new Date(periodStartOf(Date.parse('2026-06-01T23:59:59Z'), day)).toISOString(), '2026-06-01T00:00:00.000Z');
    assert.equal(periodStartOf(12_345, 10), 10_000);
  });

  it('reads rua from the _smtp._tls record', () => {
    assert.deepEqual(parseTlsRptRecord('v=TLSRPTv1; rua=mailto:tls@a.test,https://r.a.test/v1'), { mailto: ['tls@a.test'], https: ['https://r.a.test/v1'] });
    assert.deepEqual(parseTlsRptRecord('v=TLSRPTv1;rua=mailto:x%2Btls@a.test'), { mailto: ['x+tls@a.test'], https: [] });
    assert.equal(parseTlsRptRecord('v=spf1 -all'), null);
    assert.equal(parseTlsRptRecord('v=TLSRPTv1'), null);
  });
});

describe('TLS-RPT delivery', () => {
  let server: Server;
  let port: number;
  const received: Array<{ type: string | undefined; body: Buffer }> = [];

  before(async () => {
    server = createServer({ cert: readFileSync(join(fixtures, 'sts.crt')), key: readFileSync(join(fixtures, 'sts.key')) }, (req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        received.push({ type: req.headers['content-type'], body: Buffer.concat(chunks) });
        res.writeHead(req.url === '/refuse' ? 500 : 201).end();
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as { port: number }).port;
  });
  after(() => new Promise<void>((resolve) => server.close(() => resolve())));

  const loopback: LookupFunction = (_host, options, callback) => {
    if ((options as { all?: boolean }).all) (callback as (err: null, a: Array<{ address: string; family: number }>) => void)(null, [{ address: '127.0.0.1', family: 4 }]);
    else callback(null, '127.0.0.1', 4);
  };

  it('POSTs the gzipped JSON to https: URIs and queues a multipart/report message for mailto: URIs', async () => {
    const aggregator = createTlsRptAggregator({ intervalSeconds: 1, reportingId: 'w', logger: silent, now: () => 1_000 });
    aggregator.success(sts);
    aggregator.failure(sts, { resultType: 'starttls-not-supported', receivingMxHostname: 'mx.a.test' });
    const period = { start: 1_000, end: 2_000, policies: [{ policy: sts, successes: 1, failures: [{ resultType: 'starttls-not-supported', receivingMxHostname: 'mx.a.test', count: 1 }] }] };
    const queued: OutboundJob[] = [];
    const outcomes: string[] = [];
    await sendPeriod(period, {
      aggregator,
      resolveTxt: async (name) => {
        if (name !== '_smtp._tls.a.test') throw Object.assign(new Error('none'), { code: 'ENOTFOUND' });
        return [['v=TLSRPTv1; rua=mailto:tls-reports@a.test,', `https://mta-sts.a.test:${port}/v1,https://mta-sts.a.test:${port}/refuse`]];
      },
      identity,
      from: 'tlsrpt@sender.test',
      queue: async (job) => {
        queued.push(job);
        return '42';
      },
      lookup: loopback,
      ca: readFileSync(join(fixtures, 'ca.crt')),
      timeoutMs: 3000,
      logger: silent,
      onReport: (via, result) => outcomes.push(`${via}:${result}`),
    });
    assert.deepEqual(outcomes.sort(), ['https:failed', 'https:sent', 'mailto:sent']);
    const posted = received.find((r) => r.type === 'application/tlsrpt+gzip')!;
    const report = JSON.parse(gunzipSync(posted.body).toString());
    assert.equal(report.policies[0].summary['total-failure-session-count'], 1);
    assert.equal(report.policies[0]['failure-details'][0]['result-type'], 'starttls-not-supported');

    assert.equal(queued.length, 1);
    const job = queued[0]!;
    assert.deepEqual([job.mailfrom, job.rcpttos, job.senderDomains], ['', ['tls-reports@a.test'], ['sender.test']]);
    const message = Buffer.from(job.data, 'base64').toString('latin1');
    assert.match(message, /^Subject: Report Domain: a\.test Submitter: out\.sender\.test Report-ID: <[^>]+>\r$/m);
    assert.match(message, /^TLS-Report-Domain: a\.test\r$/m);
    assert.match(message, /^Content-Type: multipart\/report; report-type="tlsrpt"; boundary="/m);
    assert.match(message, /^Content-Disposition: attachment; filename="out\.sender\.test!a\.test!1!2!.+\.json\.gz"\r$/m);
    const attachment = /Content-Transfer-Encoding: base64\r\nContent-Disposition: [^\r]+\r\n\r\n([A-Za-z0-9+/=\r\n]+?)\r\n\r\n--/.exec(message)![1]!;
    assert.deepEqual(JSON.parse(gunzipSync(Buffer.from(attachment.replace(/\r\n/g, ''), 'base64')).toString()).policies, report.policies);
  });
});

describe('TLS-RPT counts file per worker', () => {
  it('differs between workers that share stateDir, ehloName and ops port but not the host (compose replicas), and stays the same across restarts', () => {
    const config = { ehloName: 'mail-out.example.com', ops: { host: '0.0.0.0', port: 9103 } };
    assert.notEqual(tlsRptReportingId(config, 'a1b2c3d4e5f6'), tlsRptReportingId(config, 'f6e5d4c3b2a1'));
    assert.equal(tlsRptReportingId(config, 'a1b2c3d4e5f6'), tlsRptReportingId(config, 'a1b2c3d4e5f6'));
    assert.equal(tlsRptReportingId(config, 'h'), 'mail-out.example.com-h-9103');
  });
});
