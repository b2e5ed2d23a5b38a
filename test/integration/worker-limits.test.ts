import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';
import { BeanstalkClient } from '../../shared/beanstalk.ts';
import { encodeJob, TUBE, type OutboundJob } from '../../shared/job.ts';
import { createDeliverer } from '../../worker/deliver.ts';
import { createLimiter, type LimitBucket, type LimitSettings, type Limiter } from '../../worker/limits.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { freePort, waitFor } from '../helpers/ports.ts';
import { startSmtpSink, type SmtpSink } from '../helpers/smtp-sink.ts';
import { startTier, type TierProcess } from '../helpers/tiers.ts';

/**
 * Per-destination limits hold across worker processes because their state is in
 * beanstalkd. First the limiter itself, several instances (each its own beanstalkd
 * connection, as separate workers have) against a real beanstalkd; then two real worker
 * processes against sinks that record concurrent sessions and message times.
 */
describe('per-destination limits shared through beanstalkd', { timeout: 120_000 }, () => {
  let beanstalkd: BeanstalkdProcess;
  const limiters: Limiter[] = [];
  const silent = pino({ level: 'silent' });

  before(async () => {
    beanstalkd = await startBeanstalkd();
  });

  after(async () => {
    await Promise.all(limiters.map((l) => l.close()));
    await beanstalkd?.stop();
  });

  function limiter(overrides: Partial<LimitSettings> = {}): Limiter {
    const instance = createLimiter(
      { server: { host: '127.0.0.1', port: beanstalkd.port }, default: {}, domains: {}, groups: {}, windowSeconds: 1, maxWaitMs: 10_000, backoffSeconds: 5, ...overrides },
      { logger: silent },
    );
    limiters.push(instance);
    return instance;
  }

  it('never lets more than maxConnections be held at once, across instances, and admits everyone in the end', async () => {
    const bucket: LimitBucket = { key: `conn-${randomUUID().slice(0, 8)}.test`, limit: { maxConnections: 2 } };
    const workers = [limiter(), limiter(), limiter()];
    let held = 0;
    let maxHeld = 0;
    let admitted = 0;
    await Promise.all(
      workers.flatMap((worker) =>
        Array.from({ length: 4 }, async () => {
          const slot = await worker.connectionSlot(bucket);
          assert.ok(slot.ok, slot.ok ? '' : slot.verdict.response);
          held++;
          maxHeld = Math.max(maxHeld, held);
          await sleep(100);
          held--;
          admitted++;
          slot.release();
        }),
      ),
    );
    assert.equal(admitted, 12);
    assert.equal(maxHeld, 2);
  });

  it('frees the slots of a worker that dies: its reservations end with its beanstalkd connection', async () => {
    const bucket: LimitBucket = { key: `crash-${randomUUID().slice(0, 8)}.test`, limit: { maxConnections: 2 } };
    const dying = limiter();
    assert.ok((await dying.connectionSlot(bucket)).ok);
    assert.ok((await dying.connectionSlot(bucket)).ok);
    const other = limiter({ maxWaitMs: 300 });
    const whileAlive = await other.connectionSlot(bucket);
    assert.equal(whileAlive.ok, false, 'both slots are taken');
    if (!whileAlive.ok) assert.match(whileAlive.verdict.response, /^451 4\.4\.5 hedwig: connection limit for crash-.*: all 2 connection slots in use/);
    await dying.close(); // the process is gone: beanstalkd sees its connection close
    assert.equal((await other.connectionSlot(bucket)).ok, true);
  });

  it('admits at most messagesPerMinute x window / 60 messages per sliding window, across instances', async () => {
    // 120 a minute over a 1 s window: 2 per second.
    const bucket: LimitBucket = { key: `rate-${randomUUID().slice(0, 8)}.test`, limit: { messagesPerMinute: 120 } };
    const workers = [limiter(), limiter()];
    const admittedAt: number[] = [];
    await Promise.all(
      workers.flatMap((worker) =>
        Array.from({ length: 3 }, async () => {
          const slot = await worker.messageSlot(bucket);
          assert.ok(slot.ok);
          admittedAt.push(Date.now());
        }),
      ),
    );
    admittedAt.sort((a, b) => a - b);
    for (let i = 0; i + 2 < admittedAt.length; i++) {
      // beanstalkd measures the window; our clock may read it a few ms apart.
      assert.ok(admittedAt[i + 2]! - admittedAt[i]! >= 950, `3 messages within one window: ${admittedAt.map((t) => t - admittedAt[0]!).join(', ')} ms`);
    }
  });

  it('a 421 / too many connections reply makes every worker back off, not only the one that got it', async () => {
    const sink = await startSmtpSink({ script: { greeting: { code: 421, message: '4.7.0 Too many connections, slow down', times: 1 } } });
    try {
      const domain = `busy-${randomUUID().slice(0, 8)}.test`;
      const settings = { domains: { [domain]: { maxConnections: 5 } }, maxWaitMs: 300, backoffSeconds: 30 };
      const make = () =>
        createDeliverer({ ehloName: 'out.example.com', timeouts: { connectMs: 3000, greetingMs: 3000, socketMs: 5000 }, logger: silent, limiter: limiter(settings) });
      const request = {
        messageId: 'm1',
        domain,
        from: 'app@example.com',
        recipients: [`rcpt@${domain}`],
        raw: Buffer.from('Subject: x\r\n\r\nx\r\n'),
        hosts: [{ name: `mx.${domain}`, preference: 0, addresses: [sink.host], port: sink.port }],
      };
      const [first] = await make().deliver(request);
      assert.equal(first?.outcome, 'deferred');
      assert.match(first!.response, /^421 4\.7\.0 Too many connections/);
      const connectionsAfter421 = sink.connections;
      // Another worker: its own limiter and beanstalkd connection.
      const [second] = await waitFor(async () => {
        const results = await make().deliver({ ...request, messageId: 'm2' });
        return /backing off \(shared\)/.test(results[0]!.response) ? results : undefined;
      }, { timeoutMs: 5000, what: 'the shared back-off to show' });
      assert.equal(second?.outcome, 'deferred');
      assert.match(second!.response, /^451 4\.4\.5 hedwig: connection limit for busy-.*: backing off \(shared\) after a 421/);
      assert.equal(sink.connections, connectionsAfter421, 'no connection while backing off');
    } finally {
      await sink.stop();
    }
  });

  describe('two worker processes', () => {
    let connSink: SmtpSink;
    let rateSink: SmtpSink;
    const workers: TierProcess[] = [];
    let producer: BeanstalkClient;

    before(async () => {
      // Sessions last at least 300 ms, so eight delivery loops would overlap if nothing held them back.
      connSink = await startSmtpSink({ script: { dataDelayMs: 300 } });
      rateSink = await startSmtpSink({ host: '127.0.0.2' });
      for (let i = 0; i < 2; i++) {
        workers.push(
          await startTier('worker', {
            beanstalk: { servers: [beanstalkd.address] },
            concurrency: 4,
            ehloName: `worker${i}.example.com`,
            routes: { 'conn.test': `127.0.0.1:${connSink.port}`, 'rate.test': `127.0.0.2:${rateSink.port}` },
            connections: { idleTimeoutMs: 200 },
            limits: {
              domains: { 'conn.test': { maxConnections: 2 }, 'rate.test': { messagesPerMinute: 60 } },
              // 60 a minute over a 2 s window: 2 per 2 s, so the test runs in seconds.
              windowSeconds: 2,
              maxWaitMs: 30_000,
            },
            retry: { delaysSeconds: [1], maxLifetimeSeconds: 600 },
            ops: { host: '127.0.0.1', port: await freePort() },
          }),
        );
      }
      producer = new BeanstalkClient({ host: '127.0.0.1', port: beanstalkd.port });
      await producer.connect();
      await producer.use(TUBE.outbound);
    });

    after(async () => {
      await producer?.close();
      await Promise.all(workers.map((w) => w.stop()));
      await connSink?.stop();
      await rateSink?.stop();
    });

    async function queue(domain: string, count: number): Promise<void> {
      for (let i = 0; i < count; i++) {
        const job: OutboundJob = {
          v: 1,
          id: randomUUID(),
          fqdn: 'app1.example.com',
          mailfrom: 'app@example.com',
          rcpttos: [`rcpt${i}@${domain}`],
          data: Buffer.from(`Subject: ${domain} ${i}\r\n\r\nx\r\n`).toString('base64'),
          receivedAt: Date.now(),
          attempts: 0,
        };
        await producer.put(encodeJob(job), { ttrSeconds: 120 });
      }
    }

    function deliveredBy(domain: string): number[] {
      return workers.map((w) => w.logs.filter((l) => l.event === 'delivered' && String(l.domain) === domain).length);
    }

    it('hold maxConnections for a destination across both processes', async () => {
      await queue('conn.test', 12);
      await connSink.waitForMessages(12, 30_000);
      assert.equal(connSink.maxConcurrentConnections, 2, 'the sink saw at most 2 sessions at once, and the limit was reached');
      const perWorker = deliveredBy('conn.test');
      assert.ok(perWorker.every((n) => n > 0), `both workers delivered: ${perWorker.join(' + ')}`);
    });

    it('hold messagesPerMinute for a destination across both processes', async () => {
      await queue('rate.test', 6);
      const messages = await rateSink.waitForMessages(6, 30_000);
      const times = messages.map((m) => m.receivedAt.getTime()).sort((a, b) => a - b);
      for (let i = 0; i + 2 < times.length; i++) {
        // Admission is measured in beanstalkd before MAIL FROM; the sink stamps the end of DATA a little later.
        assert.ok(times[i + 2]! - times[i]! >= 1500, `3 messages within 2 s: ${times.map((t) => t - times[0]!).join(', ')} ms`);
      }
      const perWorker = deliveredBy('rate.test');
      assert.ok(perWorker.every((n) => n > 0), `both workers delivered: ${perWorker.join(' + ')}`);
    });
  });
});
