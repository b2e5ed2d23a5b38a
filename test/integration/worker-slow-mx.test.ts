import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { BeanstalkClient } from '../../shared/beanstalk.ts';
import { encodeJob, TUBE, type OutboundJob } from '../../shared/job.ts';
import type { RecipientResult } from '../../worker/classify.ts';
import { workerConfigSchema } from '../../worker/config.ts';
import { createDeliverer } from '../../worker/deliver.ts';
import { startWorker, type RunningWorker } from '../../worker/server.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { waitFor } from '../helpers/ports.ts';
import { startSmtpSink, type SmtpSink } from '../helpers/smtp-sink.ts';
import { testStoreUrl } from '../helpers/store.ts';
import { startTarpit, type Tarpit } from '../helpers/tarpit.ts';

/**
 * Slow MX hosts (issue 12.5): a tarpit greets at once and then answers one byte at a time,
 * so the socket is never idle. Each command has a deadline, a delivery has a bound, and a
 * slow destination holds only its share of a worker's reserve loops.
 */
const MESSAGE = Buffer.from('From: app@example.com\r\nSubject: slow\r\nMessage-ID: <slow@example.com>\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\n\r\nhello\r\n');
const silent = pino({ level: 'silent' });

/** The deliverer's answer, or a failure when it has none within `ms` (a hung delivery). */
async function within(ms: number, delivery: Promise<RecipientResult[]>): Promise<RecipientResult[]> {
  let timer: NodeJS.Timeout | undefined;
  const hung = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no verdict within ${ms} ms: the slow server held the delivery`)), ms);
  });
  try {
    return await Promise.race([delivery, hung]);
  } finally {
    clearTimeout(timer);
  }
}

describe('a slow MX: deadlines per command and per delivery', { timeout: 60_000 }, () => {
  const tarpits: Tarpit[] = [];
  after(() => Promise.all(tarpits.map((t) => t.stop())));

  async function deliverTo(trickleAt: 'EHLO' | 'MAIL', timeouts: Record<string, number>): Promise<RecipientResult[]> {
    const tarpit = await startTarpit({ trickleAt, byteEveryMs: 200 });
    tarpits.push(tarpit);
    const deliverer = createDeliverer({ ehloName: 'out.example.com', timeouts: { connectMs: 2000, greetingMs: 2000, socketMs: 10_000, ...timeouts }, logger: silent });
    const results = await within(
      20_000,
      deliverer.deliver({ messageId: 'm', domain: 'slow.test', from: 'app@example.com', recipients: ['a@slow.test'], raw: MESSAGE, hosts: [{ name: 'mx.slow.test', preference: 0, addresses: ['127.0.0.1'], port: tarpit.port }] }),
    );
    await deliverer.close?.();
    return results;
  }

  it('gives up on EHLO at its deadline although bytes keep coming, and defers', async () => {
    const [result] = await deliverTo('EHLO', { heloMs: 1500 });
    assert.equal(result?.outcome, 'deferred');
    assert.match(result!.response, /ETIMEDOUT: no complete reply to EHLO within 1500 ms/);
  });

  it('gives up on MAIL FROM at its deadline', async () => {
    const [result] = await deliverTo('MAIL', { mailMs: 1500 });
    assert.equal(result?.outcome, 'deferred');
    assert.match(result!.response, /no complete reply to MAIL FROM within 1500 ms/);
  });

  it('cuts a delivery off at timeouts.deliveryMs when every command is still within its own deadline', async () => {
    const [result] = await deliverTo('MAIL', { mailMs: 60_000, deliveryMs: 1500 });
    assert.equal(result?.outcome, 'deferred');
    assert.equal(result?.enhancedCode, '4.4.2');
    assert.match(result!.response, /took longer than 1500 ms \(timeouts\.deliveryMs\)/);
  });
});

describe('a tarpit domain with more messages than the worker has reserve loops', { timeout: 90_000 }, () => {
  let beanstalkd: BeanstalkdProcess;
  let tarpit: Tarpit;
  let sink: SmtpSink;
  let worker: RunningWorker;
  let producer: BeanstalkClient;
  const CONCURRENCY = 4;

  before(async () => {
    beanstalkd = await startBeanstalkd({ maxJobSize: 1_048_576 });
    tarpit = await startTarpit({ trickleAt: 'EHLO', byteEveryMs: 1000 });
    sink = await startSmtpSink();
    const config = workerConfigSchema.parse({
      store: { url: testStoreUrl() },
      beanstalk: { servers: [beanstalkd.address] },
      concurrency: CONCURRENCY,
      ehloName: 'worker.hedwig.test',
      routes: { 'tarpit.test': `127.0.0.1:${tarpit.port}`, 'healthy.test': `127.0.0.1:${sink.port}` },
      // Long enough that no tarpitted delivery ends during the test.
      timeouts: { connectMs: 2000, greetingMs: 2000, socketMs: 120_000, heloMs: 120_000 },
      limits: { maxWaitMs: 300 },
      retry: { delaysSeconds: [300], maxLifetimeSeconds: 3600 },
      bounces: { enabled: false },
      connections: { idleTimeoutMs: 0 },
      ops: { host: '127.0.0.1', port: 0 },
      shutdownGraceMs: 500,
    });
    worker = await startWorker(config, { logger: silent, registry: new Registry() });
    producer = new BeanstalkClient({ host: beanstalkd.host, port: beanstalkd.port });
    await producer.connect();
  });

  after(async () => {
    await worker?.stop();
    await producer?.close();
    await beanstalkd?.stop();
    await tarpit?.stop();
    await sink?.stop();
  });

  async function queue(recipient: string): Promise<void> {
    const job: OutboundJob = { v: 1, id: randomUUID(), fqdn: 'app1.example.com', mailfrom: 'app@example.com', rcpttos: [recipient], data: MESSAGE.toString('base64'), receivedAt: Date.now(), attempts: 0 };
    await producer.putTo(TUBE.outbound, encodeJob(job), { ttrSeconds: 120 });
  }

  it('delivers healthy mail while tarpitted deliveries are still in flight, which hold only their share of the loops', async () => {
    for (let i = 0; i < CONCURRENCY * 2; i++) await queue(`user${i}@tarpit.test`);
    await queue('someone@healthy.test');
    await sink.waitForMessages(1, 30_000);
    assert.deepEqual(sink.messages[0]!.rcptTo, ['someone@healthy.test']);
    assert.ok(tarpit.openConnections > 0, 'the tarpitted deliveries are still in flight');
    assert.ok(tarpit.connections <= CONCURRENCY / 2, `at most half of the ${CONCURRENCY} loops went to the tarpit (${tarpit.connections})`);
  });
});
