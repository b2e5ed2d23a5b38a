import { after, before, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { BeanstalkClient } from '../../shared/beanstalk.ts';
import { decodeFailedJob, encodeJob, type FailedJob, type OutboundJob } from '../../shared/job.ts';
import { workerConfigSchema } from '../../worker/config.ts';
import { startWorker, type RunningWorker } from '../../worker/server.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { startDns, type DnsServer } from '../helpers/dns.ts';
import { freePort, waitFor } from '../helpers/ports.ts';
import { startSmtpSink, type SmtpSink } from '../helpers/smtp-sink.ts';
import { parseDsn, type ParsedDsn } from '../helpers/worker-dsn.ts';
import { testStoreUrl } from '../helpers/store.ts';

/**
 * The worker as a mail transfer agent, end to end: every recipient of every message ends
 * delivered, bounced (reported) or expired (reported), and the job is gone.
 *
 * Real peers on loopback: beanstalkd, dnsmasq (MX, A, null MX, NXDOMAIN) and one scripted
 * SMTP sink per MX host (127.0.0.x, all on the same port as real MX hosts are all on 25).
 * Time is shrunk by configuration: retries after 1 s, a 3-second maximum lifetime.
 */

const SENDER = 'app@sender.test';
const MAILER_DAEMON = 'mailer-daemon@hedwig.test';

const MESSAGE = Buffer.from(
  'From: App <app@sender.test>\r\nTo: someone\r\nSubject: monthly report\r\nMessage-ID: <report-1@sender.test>\r\n\r\nbody that never comes back in a bounce\r\n',
);

describe('the worker as an MTA', { timeout: 120_000 }, () => {
  let beanstalkd: BeanstalkdProcess;
  let dns: DnsServer;
  let port: number;
  const sinks = {} as Record<'ok' | 'greet421' | 'data552' | 'data554' | 'drop' | 'sender' | 'grey' | 'reject', SmtpSink>;
  let client: BeanstalkClient;
  const workers: RunningWorker[] = [];
  const logs: Array<Record<string, unknown>> = [];

  before(async () => {
    port = await freePort();
    const hosts = { ok: '127.0.0.2', greet421: '127.0.0.3', data552: '127.0.0.4', data554: '127.0.0.5', drop: '127.0.0.6', sender: '127.0.0.7', grey: '127.0.0.8', reject: '127.0.0.10' };
    for (const [name, host] of Object.entries(hosts)) sinks[name as keyof typeof sinks] = await startSmtpSink({ host, port });
    const mx = (host: string) => [{ host, preference: 10 }];
    dns = await startDns({
      mx: {
        'ok.test': mx('mx.ok.test'),
        'greet421.test': mx('mx.greet421.test'),
        'data552.test': mx('mx.data552.test'),
        'data554.test': mx('mx.data554.test'),
        'drop.test': mx('mx.drop.test'),
        'sender.test': mx('mx.sender.test'),
        'bad-sender.test': mx('mx.ok.test'),
        'fallback.test': [
          { host: 'dead.fallback.test', preference: 10 },
          { host: 'mx.ok.test', preference: 20 },
        ],
        'accept.test': mx('mx.ok.test'),
        'greylist.test': mx('mx.grey.test'),
        'reject.test': mx('mx.reject.test'),
      },
      hosts: {
        'mx.ok.test': [hosts.ok],
        'mx.greet421.test': [hosts.greet421],
        'mx.data552.test': [hosts.data552],
        'mx.data554.test': [hosts.data554],
        'mx.drop.test': [hosts.drop],
        'mx.sender.test': [hosts.sender],
        'mx.grey.test': [hosts.grey],
        'mx.reject.test': [hosts.reject],
        'dead.fallback.test': ['127.0.0.9'], // nothing listens there: connection refused
        'a-only.test': [hosts.ok], // no MX: the domain itself is the mail host
      },
      nullMx: ['nullmx.test'],
      // nxdomain.test: no record at all, dnsmasq answers NXDOMAIN
    });
    beanstalkd = await startBeanstalkd();
    client = new BeanstalkClient({ host: beanstalkd.host, port: beanstalkd.port });
    await client.connect();
  });

  after(async () => {
    for (const worker of workers) await worker.stop();
    await client?.close();
    await beanstalkd?.stop();
    await dns?.stop();
    for (const sink of Object.values(sinks)) await sink.stop();
  });

  beforeEach(() => {
    for (const sink of Object.values(sinks)) {
      sink.script = {};
      sink.messages.length = 0;
    }
  });

  async function startMta(tube: string, bounces: { delayWarningSeconds: number }, retry = { delaysSeconds: [1], maxLifetimeSeconds: 3 }) {
    const config = workerConfigSchema.parse({ store: { url: testStoreUrl() },
      beanstalk: { servers: [beanstalkd.address], tube, failedTube: `${tube}-failed` },
      concurrency: 4,
      ehloName: 'worker.hedwig.test',
      dns: { servers: [dns.server], timeoutMs: 2000, cacheMaxSeconds: 0 },
      smtpPort: port,
      allowPrivateAddresses: true,
      timeouts: { connectMs: 2000, greetingMs: 2000, socketMs: 5000 },
      retry,
      // Each retry must meet the MX's script anew (and be counted as a connection): no kept connections.
      connections: { idleTimeoutMs: 0 },
      bounces: { enabled: true, from: MAILER_DAEMON, ...bounces },
      ops: { host: '127.0.0.1', port: 0 },
      shutdownGraceMs: 2000,
    });
    const logger = pino({ level: 'info' }, { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) });
    workers.push(await startWorker(config, { logger, registry: new Registry() }));
    return { tube, failedTube: `${tube}-failed` };
  }

  async function queue(tube: string, rcpttos: string[], mailfrom = SENDER): Promise<OutboundJob> {
    const job: OutboundJob = {
      v: 1,
      id: randomUUID(),
      fqdn: 'app1.sender.test',
      mailfrom,
      rcpttos,
      data: MESSAGE.toString('base64'),
      receivedAt: Date.now(),
      attempts: 0,
    };
    await client.use(tube);
    await client.put(encodeJob(job), { ttrSeconds: 60 });
    return job;
  }

  async function jobsIn(tube: string): Promise<number> {
    try {
      const stats = await client.statsTube(tube);
      return ['current-jobs-ready', 'current-jobs-delayed', 'current-jobs-reserved', 'current-jobs-buried'].reduce((n, k) => n + Number(stats[k]), 0);
    } catch {
      return 0; // the tube does not exist (yet, or any more)
    }
  }

  /** Every job settled: retries and notices are put before the job they come from is deleted. */
  async function waitUntilEmpty(tube: string): Promise<void> {
    await waitFor(async () => (await jobsIn(tube)) === 0, { timeoutMs: 30_000, intervalMs: 100, what: `tube ${tube} to empty` });
  }

  async function takeFailedRecords(failedTube: string): Promise<FailedJob[]> {
    const reader = new BeanstalkClient({ host: beanstalkd.host, port: beanstalkd.port });
    await reader.connect();
    try {
      await reader.watch(failedTube);
      await reader.ignore('default');
      const records: FailedJob[] = [];
      for (let reserved = await reader.reserve(0); reserved; reserved = await reader.reserve(0)) {
        records.push(decodeFailedJob(reserved.payload));
        await reserved.delete();
      }
      return records;
    } finally {
      await reader.close();
    }
  }

  async function noticesAtSender(): Promise<ParsedDsn[]> {
    for (const message of sinks.sender.messages) {
      assert.equal(message.mailFrom, '', 'notices are sent from the null sender');
      assert.deepEqual(message.rcptTo, [SENDER]);
    }
    return Promise.all(sinks.sender.messages.map((m) => parseDsn(m.raw)));
  }

  function deliveredTo(sink: SmtpSink): string[] {
    return sink.messages.flatMap((m) => m.rcptTo).sort();
  }

  describe('outcomes (retries after 1 s, give up after 3 s, no delay warnings)', () => {
    let tubes: { tube: string; failedTube: string };
    before(async () => {
      tubes = await startMta('mta-outcomes', { delayWarningSeconds: 0 });
    });

    interface Failed {
      outcome: 'bounced' | 'expired';
      status: string;
      diagnostic: string;
      mx?: string;
    }
    const CASES: Array<{ name: string; recipient: string; delivered?: keyof typeof sinks; failed?: Failed }> = [
      { name: '250', recipient: 'ok@ok.test', delivered: 'ok' },
      { name: '450 until the end of the lifetime', recipient: 'busy@ok.test', failed: { outcome: 'expired', status: '4.2.1', diagnostic: 'smtp; 450 4.2.1 mailbox busy', mx: 'mx.ok.test' } },
      { name: '451 greylisted once', recipient: 'grey@ok.test', delivered: 'ok' },
      { name: '452 until the end of the lifetime', recipient: 'full@ok.test', failed: { outcome: 'expired', status: '4.2.2', diagnostic: 'smtp; 452 4.2.2 mailbox full', mx: 'mx.ok.test' } },
      { name: '421 at greeting, only MX', recipient: 'x@greet421.test', failed: { outcome: 'expired', status: '4.3.2', diagnostic: 'smtp; 421 4.3.2 too busy', mx: 'mx.greet421.test' } },
      { name: '550 to RCPT', recipient: 'nobody@ok.test', failed: { outcome: 'bounced', status: '5.1.1', diagnostic: 'smtp; 550 5.1.1 no such user', mx: 'mx.ok.test' } },
      { name: '552 at DATA', recipient: 'x@data552.test', failed: { outcome: 'bounced', status: '5.3.4', diagnostic: 'smtp; 552 5.3.4 message too big', mx: 'mx.data552.test' } },
      { name: '554 at DATA', recipient: 'x@data554.test', failed: { outcome: 'bounced', status: '5.7.1', diagnostic: 'smtp; 554 5.7.1 rejected as spam', mx: 'mx.data554.test' } },
      { name: 'connection dropped mid-DATA once', recipient: 'x@drop.test', delivered: 'drop' },
      { name: 'several MX, the primary down', recipient: 'x@fallback.test', delivered: 'ok' },
      { name: 'no MX but an A record', recipient: 'x@a-only.test', delivered: 'ok' },
      {
        name: 'null MX',
        recipient: 'x@nullmx.test',
        failed: { outcome: 'bounced', status: '5.1.10', diagnostic: 'X-Hedwig; 556 5.1.10 nullmx.test does not accept mail (null MX, RFC 7505)' },
      },
      { name: 'NXDOMAIN', recipient: 'x@nxdomain.test', failed: { outcome: 'bounced', status: '5.1.2', diagnostic: 'X-Hedwig; 550 5.1.2 nxdomain.test: no such domain (NXDOMAIN)' } },
    ];

    it('ends every recipient delivered, bounced or expired, with a failed-tube record and a DSN for each failure', async () => {
      sinks.ok.script = {
        recipients: {
          'busy@ok.test': { code: 450, message: '4.2.1 mailbox busy' },
          'grey@ok.test': { code: 451, message: '4.7.1 greylisted, try again later', times: 1 },
          'full@ok.test': { code: 452, message: '4.2.2 mailbox full' },
          'nobody@ok.test': { code: 550, message: '5.1.1 no such user' },
        },
      };
      sinks.greet421.script = { greeting: { code: 421, message: '4.3.2 too busy' } };
      sinks.data552.script = { data: { code: 552, message: '5.3.4 message too big' } };
      sinks.data554.script = { data: { code: 554, message: '5.7.1 rejected as spam' } };
      sinks.drop.script = { dropDuringData: { times: 1 } };

      const jobs = new Map<string, OutboundJob>();
      for (const c of CASES) jobs.set(c.recipient, await queue(tubes.tube, [c.recipient]));
      await waitUntilEmpty(tubes.tube);

      // Delivered: each exactly once, at the MX it belongs to.
      for (const sink of ['ok', 'drop'] as const) {
        assert.deepEqual(deliveredTo(sinks[sink]), CASES.filter((c) => c.delivered === sink).map((c) => c.recipient).sort(), `delivered at ${sink}`);
      }
      const retried = logs.filter((l) => l.event === 'delivered' && (l.recipient === 'grey@ok.test' || l.recipient === 'x@drop.test'));
      assert.deepEqual(retried.map((l) => l.attempts), [2, 2], 'greylisting and the dropped connection cost one retry each');

      // Failed: one record per failed recipient, with the full reason.
      const failedCases = CASES.filter((c) => c.failed);
      const records = await takeFailedRecords(tubes.failedTube);
      assert.deepEqual(records.flatMap((r) => r.job.rcpttos).sort(), failedCases.map((c) => c.recipient).sort());
      for (const c of failedCases) {
        const record = records.find((r) => r.job.rcpttos[0] === c.recipient)!;
        const [failure] = record.failures;
        assert.equal(record.failures.length, 1);
        assert.equal(record.job.id, jobs.get(c.recipient)!.id, c.name);
        assert.equal(record.job.data, MESSAGE.toString('base64'), 'the message is kept for a requeue');
        assert.equal(failure!.outcome, c.failed!.outcome, c.name);
        assert.equal(failure!.enhancedCode, c.failed!.status, c.name);
        assert.equal(failure!.mx, c.failed!.mx, c.name);
        assert.equal(c.failed!.diagnostic.endsWith(failure!.response), true, `${c.name}: ${failure!.response}`);
        assert.equal(failure!.responseCode, Number(failure!.response.slice(0, 3)), c.name);
        if (c.failed!.outcome === 'bounced') assert.equal(failure!.attempts, 1, `${c.name}: a permanent failure is not retried`);
        else assert.ok(failure!.attempts >= 2 && failure!.lastAttemptAt > failure!.firstAttemptAt, `${c.name}: retried until the lifetime ran out`);
        assert.ok(failure!.firstAttemptAt >= jobs.get(c.recipient)!.receivedAt);
      }

      // Reported: one RFC 3464 notice per failed message, to the envelope sender.
      const notices = await noticesAtSender();
      assert.equal(notices.length, failedCases.length);
      for (const c of failedCases) {
        const dsn = notices.find((n) => n.perRecipient[0]?.['Final-Recipient'] === `rfc822; ${c.recipient}`);
        assert.ok(dsn, `a notice about ${c.recipient}`);
        assert.equal(dsn.contentType, 'multipart/report');
        assert.equal(dsn.reportType, 'delivery-status');
        assert.equal(dsn.headers['From'], `Mail Delivery System <${MAILER_DAEMON}>`);
        assert.equal(dsn.perMessage['Reporting-MTA'], 'dns; worker.hedwig.test');
        assert.ok(dsn.perMessage['Arrival-Date']);
        assert.equal(dsn.perRecipient.length, 1);
        const fields = dsn.perRecipient[0]!;
        assert.equal(fields.Action, 'failed', c.name);
        assert.equal(fields.Status, c.failed!.status, c.name);
        assert.equal(fields['Diagnostic-Code'], c.failed!.diagnostic, c.name);
        assert.equal(fields['Remote-MTA'], c.failed!.mx ? `dns; ${c.failed!.mx}` : undefined, c.name);
        assert.ok(fields['Last-Attempt-Date'], c.name);
        assert.match(dsn.parts[2]!.text, /^From: App <app@sender\.test>/, 'the original headers come back');
        assert.doesNotMatch(dsn.parts[2]!.text, /never comes back/, 'the body does not');
      }
    });

    it('never answers a notice with a notice: a bounce that bounces ends in the failed tube', async () => {
      sinks.ok.script = {
        recipients: {
          'gone@ok.test': { code: 550, message: '5.1.1 gone' },
          'app@bad-sender.test': { code: 550, message: '5.1.1 no such sender either' },
        },
      };
      const job = await queue(tubes.tube, ['gone@ok.test'], 'app@bad-sender.test');
      await waitUntilEmpty(tubes.tube);

      const records = await takeFailedRecords(tubes.failedTube);
      assert.equal(records.length, 2, JSON.stringify(records.map((r) => r.job.rcpttos)));
      const original = records.find((r) => r.job.id === job.id)!;
      assert.deepEqual(original.job.rcpttos, ['gone@ok.test']);
      const bounce = records.find((r) => r.job.id !== job.id)!;
      assert.equal(bounce.job.mailfrom, '', 'the notice, sent from <>');
      assert.deepEqual(bounce.job.rcpttos, ['app@bad-sender.test']);
      assert.equal(bounce.failures[0]!.response, '550 5.1.1 no such sender either');
      assert.equal(sinks.ok.messages.length, 0);
      assert.equal(logs.filter((l) => l.event === 'notice_queued' && l.messageId === bounce.job.id).length, 0, 'no notice about the notice');
    });

    it('three domains: one accepts, one greylists once, one rejects; one bounce, and exactly the rejected recipient in the failed tube', async () => {
      sinks.grey.script = { recipients: { 'g@greylist.test': { code: 451, message: '4.7.1 greylisted, come back in a second', times: 1 } } };
      sinks.reject.script = { recipients: { 'r@reject.test': { code: 550, message: '5.1.1 <r@reject.test>: no such user' } } };
      const job = await queue(tubes.tube, ['a@accept.test', 'g@greylist.test', 'r@reject.test']);
      await waitUntilEmpty(tubes.tube);

      assert.deepEqual(sinks.ok.messages.map((m) => m.rcptTo), [['a@accept.test']], 'one delivery');
      assert.deepEqual(sinks.grey.messages.map((m) => m.rcptTo), [['g@greylist.test']], 'one delivery, after the retry');
      assert.ok(sinks.grey.connections >= 2);
      assert.equal(sinks.reject.messages.length, 0);
      const delivered = logs.filter((l) => l.event === 'delivered' && l.messageId === job.id).map((l) => [l.recipient, l.attempts]);
      assert.deepEqual(delivered, [
        ['a@accept.test', 1],
        ['g@greylist.test', 2],
      ]);

      const records = await takeFailedRecords(tubes.failedTube);
      assert.equal(records.length, 1);
      assert.deepEqual(records[0]!.job.rcpttos, ['r@reject.test']);
      assert.deepEqual(
        records[0]!.failures.map((f) => [f.recipient, f.outcome, f.responseCode, f.enhancedCode, f.mx, f.attempts]),
        [['r@reject.test', 'bounced', 550, '5.1.1', 'mx.reject.test', 1]],
      );

      const notices = await noticesAtSender();
      assert.equal(notices.length, 1, 'one bounce');
      assert.deepEqual(notices[0]!.perRecipient, [
        {
          'Final-Recipient': 'rfc822; r@reject.test',
          Action: 'failed',
          Status: '5.1.1',
          'Remote-MTA': 'dns; mx.reject.test',
          'Diagnostic-Code': 'smtp; 550 5.1.1 <r@reject.test>: no such user',
          'Last-Attempt-Date': notices[0]!.perRecipient[0]!['Last-Attempt-Date']!,
        },
      ]);
      assert.equal(await jobsIn(tubes.tube), 0, 'the job is gone');
    });
  });

  describe('delay warning (after 1 s; give up after 4 s)', () => {
    it('warns the sender once while retrying, then reports the expiry', async () => {
      const tubes = await startMta('mta-warning', { delayWarningSeconds: 1 }, { delaysSeconds: [1], maxLifetimeSeconds: 4 });
      sinks.ok.script = { recipients: { 'busy@ok.test': { code: 450, message: '4.2.1 mailbox busy' } } };
      const job = await queue(tubes.tube, ['busy@ok.test']);
      await waitUntilEmpty(tubes.tube);

      const notices = await noticesAtSender();
      assert.deepEqual(
        notices.map((n) => [n.headers['Subject'], n.perRecipient[0]!.Action, n.perRecipient[0]!.Status]),
        [
          ['Delayed Mail (still being retried)', 'delayed', '4.2.1'],
          ['Undelivered Mail Returned to Sender', 'failed', '4.2.1'],
        ],
        'one warning, then the failure',
      );
      const [warning] = notices;
      assert.equal(warning!.perRecipient[0]!['Final-Recipient'], 'rfc822; busy@ok.test');
      assert.equal(warning!.perRecipient[0]!['Diagnostic-Code'], 'smtp; 450 4.2.1 mailbox busy');
      assert.equal(Date.parse(warning!.perRecipient[0]!['Will-Retry-Until']!), Math.floor((job.receivedAt + 4000) / 1000) * 1000);
      const [record] = await takeFailedRecords(tubes.failedTube);
      assert.equal(record!.failures[0]!.outcome, 'expired');
      assert.ok(record!.failures[0]!.attempts >= 3);
    });
  });
});
