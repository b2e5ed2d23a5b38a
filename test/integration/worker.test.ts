import { after, before, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { BeanstalkClient } from '../../shared/beanstalk.ts';
import { decodeFailedJob, decodeOutboundJob, encodeJob, TUBE, type OutboundJob } from '../../shared/job.ts';
import { workerConfigSchema } from '../../worker/config.ts';
import { startWorker, type RunningWorker } from '../../worker/server.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { startDns, type DnsServer } from '../helpers/dns.ts';
import { freePort, waitFor } from '../helpers/ports.ts';
import { startSmtpSink, type SmtpSink } from '../helpers/smtp-sink.ts';
import { testStoreUrl } from '../helpers/store.ts';

/**
 * The worker as a whole: jobs from a real beanstalkd, MX from a real DNS server (dnsmasq),
 * delivery to real SMTP servers (smtp-server sinks on 127.0.0.2 and 127.0.0.3).
 * Retries are delayed by a minute, so a test can look at the deferred job at leisure and
 * then `kick` it instead of waiting.
 */
describe('worker', { timeout: 90_000 }, () => {
  let beanstalkd: BeanstalkdProcess;
  let dns: DnsServer;
  let mx1: SmtpSink; // 127.0.0.2: preference 10 for one.test and two.test
  let mx2: SmtpSink; // 127.0.0.3: preference 20 for one.test, the only MX of other.test
  let worker: RunningWorker;
  let producer: BeanstalkClient; // uses the outbound tube
  let failedReader: BeanstalkClient; // watches the failed tube
  const logs: Array<Record<string, unknown>> = [];

  before(async () => {
    const port = await freePort();
    mx1 = await startSmtpSink({ host: '127.0.0.2', port });
    mx2 = await startSmtpSink({ host: '127.0.0.3', port });
    dns = await startDns({
      mx: {
        'one.test': [
          { host: 'mx1.hosting.test', preference: 10 },
          { host: 'mx2.hosting.test', preference: 20 },
        ],
        'other.test': [{ host: 'mx2.hosting.test', preference: 10 }],
      },
      hosts: { 'mx1.hosting.test': ['127.0.0.2'], 'mx2.hosting.test': ['127.0.0.3'] },
    });
    beanstalkd = await startBeanstalkd({ maxJobSize: 1_048_576 });

    const config = workerConfigSchema.parse({ store: { url: testStoreUrl() },
      beanstalk: { servers: [beanstalkd.address] },
      concurrency: 2,
      ehloName: 'worker.hedwig.test',
      dns: { servers: [dns.server], timeoutMs: 2000 },
      smtpPort: port,
      allowPrivateAddresses: true,
      timeouts: { connectMs: 3000, greetingMs: 3000, socketMs: 5000 },
      retry: { delaysSeconds: [60], maxLifetimeSeconds: 3600 },
      // Tests script each new session (e.g. a 421 greeting): a kept connection would skip the script.
      connections: { idleTimeoutMs: 0 },
      ops: { host: '127.0.0.1', port: 0 },
      shutdownGraceMs: 3000,
    });
    const logger = pino({ level: 'info' }, { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) });
    worker = await startWorker(config, { logger, registry: new Registry() });

    producer = new BeanstalkClient({ host: beanstalkd.host, port: beanstalkd.port });
    await producer.connect();
    await producer.use(TUBE.outbound);
    failedReader = new BeanstalkClient({ host: beanstalkd.host, port: beanstalkd.port });
    await failedReader.connect();
    await failedReader.watch(TUBE.failed);
    await failedReader.ignore('default');
  });

  after(async () => {
    await worker?.stop();
    await producer?.close();
    await failedReader?.close();
    await beanstalkd?.stop();
    await dns?.stop();
    await mx1?.stop();
    await mx2?.stop();
  });

  beforeEach(() => {
    for (const sink of [mx1, mx2]) {
      sink.script = {};
      sink.messages.length = 0;
    }
  });

  const MESSAGE = Buffer.concat([
    // With Message-ID and Date present the worker adds no header, so the bytes must match exactly.
    Buffer.from('From: app@example.com\r\nTo: a@one.test, b@other.test\r\nSubject: report\r\nMIME-Version: 1.0\r\n'),
    Buffer.from('Message-ID: <report-1@example.com>\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\n'),
    Buffer.from('Content-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n'),
    Buffer.from('Grüße aus Köln\r\n.leading dot\r\n', 'utf8'),
  ]);

  async function queue(rcpttos: string[]): Promise<{ jobId: string; job: OutboundJob }> {
    const job: OutboundJob = {
      v: 1,
      id: randomUUID(),
      fqdn: 'app1.example.com',
      mailfrom: 'app@example.com',
      rcpttos,
      data: MESSAGE.toString('base64'),
      receivedAt: Date.now(),
      attempts: 0,
    };
    const jobId = await producer.put(encodeJob(job), { ttrSeconds: 60 });
    return { jobId, job };
  }

  async function waitForJobGone(jobId: string): Promise<void> {
    await waitFor(async () => (await producer.peek(jobId)) === null, { timeoutMs: 15_000, what: `job ${jobId} deleted` });
  }

  function waitForLog(match: (line: Record<string, unknown>) => boolean, what: string) {
    return waitFor(() => logs.find(match), { timeoutMs: 15_000, what });
  }

  async function nextFailedJob() {
    const reserved = await failedReader.reserve(15);
    assert.ok(reserved, 'a record in the failed tube');
    await reserved.delete();
    return decodeFailedJob(reserved.payload);
  }

  it('delivers a job with recipients at two domains, byte for byte, then deletes it', async () => {
    const { jobId, job } = await queue(['a@one.test', 'b@other.test', 'c@one.test']);

    await mx1.waitForMessages(1);
    await mx2.waitForMessages(1);
    assert.deepEqual(mx1.messages[0]!.rcptTo, ['a@one.test', 'c@one.test'], 'one transaction for both one.test recipients');
    assert.deepEqual(mx2.messages[0]!.rcptTo, ['b@other.test']);
    for (const message of [mx1.messages[0]!, mx2.messages[0]!]) {
      assert.ok(message.raw.equals(MESSAGE), 'the message arrives exactly as queued');
      assert.equal(message.mailFrom, 'app@example.com');
      assert.equal(message.clientHostname, 'worker.hedwig.test');
    }
    await waitForJobGone(jobId);
    const delivered = logs.filter((l) => l.event === 'delivered' && l.messageId === job.id).map((l) => l.recipient);
    assert.deepEqual(new Set(delivered), new Set(['a@one.test', 'b@other.test', 'c@one.test']));
  });

  it('puts a recipient rejected with 550 into the failed tube with the reason, and deletes the job', async () => {
    mx1.script = { recipients: { 'nobody@one.test': { code: 550, message: '5.1.1 no such user here' } } };
    const { jobId, job } = await queue(['a@one.test', 'nobody@one.test']);

    const failed = await nextFailedJob();
    assert.equal(failed.job.id, job.id);
    assert.deepEqual(failed.job.rcpttos, ['nobody@one.test'], 'requeuing the record must not resend to a@one.test');
    assert.equal(failed.job.data, job.data, 'the message is kept so it can be requeued');
    assert.equal(failed.failures.length, 1);
    const [failure] = failed.failures;
    assert.equal(failure!.recipient, 'nobody@one.test');
    assert.equal(failure!.outcome, 'bounced');
    assert.equal(failure!.responseCode, 550);
    assert.equal(failure!.enhancedCode, '5.1.1');
    assert.equal(failure!.response, '550 5.1.1 no such user here');
    assert.equal(failure!.mx, 'mx1.hosting.test');
    assert.equal(failure!.attempts, 1);
    assert.ok(failure!.firstAttemptAt >= job.receivedAt);

    await waitForJobGone(jobId);
    assert.deepEqual(mx1.messages.map((m) => m.rcptTo), [['a@one.test']]);
  });

  it('requeues a recipient answered 450 with attempts=1, and delivers it on the retry', async () => {
    mx1.script = { recipients: { 'later@one.test': { code: 450, message: '4.2.1 mailbox busy' } } };
    const { jobId, job } = await queue(['a@one.test', 'later@one.test']);

    const deferred = await waitForLog((l) => l.event === 'deferred' && l.messageId === job.id, 'the deferred log line');
    await waitForJobGone(jobId);
    assert.deepEqual(mx1.messages.map((m) => m.rcptTo), [['a@one.test']]);

    const retryJobId = String(deferred.retryJobId);
    const retry = await producer.peek(retryJobId);
    assert.ok(retry, 'the retry job is queued');
    const retryJob = decodeOutboundJob(retry.payload);
    assert.equal(retryJob.id, job.id);
    assert.deepEqual(retryJob.rcpttos, ['later@one.test']);
    assert.equal(retryJob.attempts, 1);
    assert.equal(retryJob.data, job.data);
    assert.ok(retryJob.firstAttemptAt !== undefined && retryJob.lastAttemptAt !== undefined);
    assert.equal((await producer.statsJob(retryJobId)).state, 'delayed', 'the retry waits for its delay');

    // The mailbox frees up; skip the minute of delay.
    mx1.script = {};
    await producer.kickJob(retryJobId);
    const [message] = await mx1.waitForMessages(2).then((m) => m.slice(1));
    assert.deepEqual(message!.rcptTo, ['later@one.test']);
    assert.ok(message!.raw.equals(MESSAGE));
    await waitForJobGone(retryJobId);
    const deliveredLine = await waitForLog((l) => l.event === 'delivered' && l.recipient === 'later@one.test', 'delivered on retry');
    assert.equal(deliveredLine.attempts, 2);
  });

  it('falls back to the secondary MX in the same attempt when the primary greets with 421', async () => {
    mx1.script = { greeting: { code: 421, message: '4.3.2 overloaded, try another MX' } };
    const connectionsBefore = mx1.connections;
    const { jobId } = await queue(['a@one.test']);

    const [message] = await mx2.waitForMessages(1);
    assert.deepEqual(message!.rcptTo, ['a@one.test']);
    assert.ok(mx1.connections > connectionsBefore, 'the primary was tried first');
    assert.equal(mx1.messages.length, 0);
    await waitForJobGone(jobId);
  });

  it('buries a job it cannot decode instead of deleting it', async () => {
    const jobId = await producer.put(Buffer.from('{"not":"a job"}'));
    await waitForLog((l) => l.event === 'undecodable_job' && l.jobId === jobId, 'the undecodable_job log line');
    await waitFor(async () => (await producer.statsJob(jobId)).state === 'buried', { what: 'job buried' });
    await producer.deleteJob(jobId);
  });

  it("buries a job whose failed record would exceed beanstalkd's -z, instead of retrying it forever", async () => {
    const recipients = Array.from({ length: 10 }, (_, i) => `big${i}@one.test`);
    mx1.script = { recipients: Object.fromEntries(recipients.map((r) => [r, { code: 550, message: `5.7.1 ${'long explanation '.repeat(55)}` }])) };
    // A job just under this beanstalkd's -z (1 MiB): it fits, its failed record (the same job
    // plus ten failures with long replies) does not.
    const filler = Buffer.alloc(Math.floor(((1_048_576 - 4_000) * 3) / 4) - MESSAGE.length, 'x');
    const job: OutboundJob = {
      v: 1,
      id: randomUUID(),
      fqdn: 'app1.example.com',
      mailfrom: 'app@example.com',
      rcpttos: recipients,
      data: Buffer.concat([MESSAGE, filler]).toString('base64'),
      receivedAt: Date.now(),
      attempts: 0,
    };
    const jobId = await producer.put(encodeJob(job), { ttrSeconds: 60 });

    await waitForLog((l) => l.event === 'settle_failed' && l.jobId === jobId && l.code === 'JOB_TOO_BIG', 'settle_failed with JOB_TOO_BIG');
    await waitFor(async () => (await producer.statsJob(jobId)).state === 'buried', { what: 'job buried' });
    const stats = await producer.statsJob(jobId);
    assert.equal(stats.reserves, 1, 'reserved once, not retried in a loop');
    await producer.deleteJob(jobId);
  });

  it('keeps working after beanstalkd restarts (jobs survive in the binlog)', async () => {
    await beanstalkd.stop();
    await beanstalkd.restart();
    await waitFor(() => producer.connected, { timeoutMs: 15_000, what: 'producer reconnected' });
    const { jobId } = await queue(['after-restart@one.test']);
    const [message] = await mx1.waitForMessages(1, 20_000);
    assert.deepEqual(message!.rcptTo, ['after-restart@one.test']);
    await waitForJobGone(jobId);
  });

  it('counts outcomes per recipient on /metrics', async () => {
    const body = await fetch(`http://127.0.0.1:${worker.opsPort}/metrics`).then((r) => r.text());
    const count = (outcome: string) => Number(new RegExp(`hedwig_worker_deliveries_total\\{outcome="${outcome}"[^}]*\\} (\\d+)`).exec(body)?.[1] ?? 0);
    assert.ok(count('delivered') >= 6, body);
    assert.ok(count('bounced') >= 1);
    assert.ok(count('deferred') >= 1);
    assert.match(body, /^hedwig_worker_smtp_connections_total(\{[^}]*\})? [1-9]/m);
  });
});

describe('worker shutdown', { timeout: 60_000 }, () => {
  it('stop() cuts off a hung delivery after the grace period without losing the recipient', async (t) => {
    const sink = await startSmtpSink({ script: { stallAfterData: true } });
    t.after(() => sink.stop());
    const beanstalkd = await startBeanstalkd();
    t.after(() => beanstalkd.stop());
    const client = new BeanstalkClient({ host: beanstalkd.host, port: beanstalkd.port });
    await client.connect();
    t.after(() => client.close());
    await client.use(TUBE.outbound);

    const config = workerConfigSchema.parse({ store: { url: testStoreUrl() },
      beanstalk: { servers: [beanstalkd.address] },
      concurrency: 1,
      routes: { 'hung.test': `${sink.host}:${sink.port}` },
      timeouts: { connectMs: 3000, greetingMs: 3000, socketMs: 60_000 },
      retry: { delaysSeconds: [60] },
      ops: { host: '127.0.0.1', port: 0 },
      shutdownGraceMs: 500,
    });
    const worker = await startWorker(config, { logger: pino({ level: 'silent' }), registry: new Registry() });
    let stopped = false;
    t.after(() => (stopped ? undefined : worker.stop()));

    const job: OutboundJob = {
      v: 1,
      id: randomUUID(),
      fqdn: 'app1.example.com',
      mailfrom: 'app@example.com',
      rcpttos: ['someone@hung.test'],
      data: Buffer.from('Subject: hung\r\n\r\nx\r\n').toString('base64'),
      receivedAt: Date.now(),
      attempts: 0,
    };
    await client.put(encodeJob(job));
    await waitFor(() => sink.stalled === 1, { what: 'the message to reach the hung server' });

    await worker.stop();
    stopped = true;

    const stats = await client.statsTube(TUBE.outbound);
    const waiting = ['current-jobs-ready', 'current-jobs-delayed', 'current-jobs-reserved'].map((k) => Number(stats[k]));
    assert.deepEqual(waiting.reduce((a, b) => a + b), 1, `exactly one job still holds the recipient: ${JSON.stringify(stats)}`);
    const left = (await client.peekReady()) ?? (await client.peekDelayed());
    assert.ok(left);
    assert.deepEqual(decodeOutboundJob(left.payload).rcpttos, ['someone@hung.test']);
  });
});
