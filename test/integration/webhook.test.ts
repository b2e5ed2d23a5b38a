import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { BeanstalkClient } from '../../shared/beanstalk.ts';
import { encodeJob, TUBE, type OutboundJob } from '../../shared/job.ts';
import { verifyWebhookSignature, WEBHOOK_SIGNATURE_HEADER } from '../../shared/webhook-signature.ts';
import { startWorker, type RunningWorker } from '../../worker/server.ts';
import { WEBHOOK_TUBE, type DeliveryEvent } from '../../worker/webhook.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { freePort, waitFor } from '../helpers/ports.ts';
import { startSmtpSink, type SmtpSink } from '../helpers/smtp-sink.ts';
import { testWorkerConfig } from '../helpers/worker-config.ts';

/**
 * Delivery events through the webhook, end to end: a real worker delivers to an SMTP sink
 * (one recipient accepted, one rejected, one deferred) and queues an event per recipient
 * in beanstalkd; a local receiver first hangs, then fails, and only then accepts, checking
 * every signature. Deliveries go on while the receiver fails, and the events wait in
 * their tube across a worker restart.
 */
const SECRET = 'webhook-secret-0123456789abcdef0123456789';

interface Received {
  eventId: string;
  signatureOk: boolean;
  answered: number | 'hung';
  event: DeliveryEvent;
}

describe('webhook delivery events', { timeout: 90_000 }, () => {
  let beanstalkd: BeanstalkdProcess;
  let sink: SmtpSink;
  let receiver: Server;
  let receiverUrl: string;
  let worker: RunningWorker | undefined;
  let producer: BeanstalkClient;
  const received: Received[] = [];
  /** How the receiver answers: hang the very first request, then 503 until `accept` is set. */
  let accept = false;

  before(async () => {
    sink = await startSmtpSink({
      script: {
        recipients: {
          'b@bad.test': { code: 550, message: '5.1.1 no such user' },
          'c@slow.test': { code: 451, message: '4.3.0 try again later' },
        },
      },
    });
    beanstalkd = await startBeanstalkd();
    const port = await freePort();
    receiver = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (chunk: Buffer) => chunks.push(chunk));
      req.on('end', () => {
        const body = Buffer.concat(chunks);
        const signature = req.headers[WEBHOOK_SIGNATURE_HEADER];
        const verified = verifyWebhookSignature(SECRET, typeof signature === 'string' ? signature : undefined, body);
        const event = JSON.parse(body.toString('utf8')) as DeliveryEvent;
        const entry: Received = { eventId: String(req.headers['x-hedwig-event-id']), signatureOk: verified.ok, answered: 'hung', event };
        received.push(entry);
        if (received.length === 1) return; // never answered: the worker's timeout must cut it off
        entry.answered = accept && verified.ok ? 204 : verified.ok ? 503 : 401;
        res.writeHead(entry.answered).end();
      });
    });
    await new Promise<void>((resolve) => receiver.listen(port, '127.0.0.1', resolve));
    receiverUrl = `http://127.0.0.1:${port}/hooks/hedwig`;
    producer = new BeanstalkClient({ host: beanstalkd.host, port: beanstalkd.port });
    await producer.connect();
    await producer.use(TUBE.outbound);
  });

  after(async () => {
    await worker?.stop();
    await producer?.close();
    receiver?.closeAllConnections();
    await new Promise((resolve) => receiver?.close(resolve));
    await beanstalkd?.stop();
    await sink?.stop();
  });

  async function startTheWorker(): Promise<void> {
    const route = `${sink.host}:${sink.port}`;
    const config = testWorkerConfig(beanstalkd.address, {
      routes: { 'ok.test': route, 'bad.test': route, 'slow.test': route },
      webhook: { url: receiverUrl, secret: SECRET, timeoutMs: 1000, retryDelaysSeconds: [1] },
    });
    worker = await startWorker(config, { logger: pino({ level: 'silent' }), registry: new Registry() });
  }

  async function queue(rcpttos: string[]): Promise<string> {
    const id = randomUUID();
    const job: OutboundJob = { v: 1, id, fqdn: 'app1.example.com', mailfrom: 'app@example.com', rcpttos, data: Buffer.from('Subject: hi\r\n\r\nhello\r\n').toString('base64'), receivedAt: Date.now(), attempts: 0 };
    await producer.put(encodeJob(job), { ttrSeconds: 60 });
    return id;
  }

  async function eventsTube(): Promise<{ ready: number; delayed: number; reserved: number; buried: number }> {
    const stats = await producer.statsTube(WEBHOOK_TUBE);
    return { ready: Number(stats['current-jobs-ready']), delayed: Number(stats['current-jobs-delayed']), reserved: Number(stats['current-jobs-reserved']), buried: Number(stats['current-jobs-buried']) };
  }

  it('queues one signed event per recipient outcome and retries a failing receiver, across a worker restart, without holding deliveries up', async () => {
    await startTheWorker();
    const first = await queue(['a@ok.test', 'b@bad.test', 'c@slow.test']);
    await sink.waitForMessages(1, 15_000);

    // The receiver hangs, then fails: the worker goes on delivering meanwhile.
    await waitFor(() => received.filter((r) => r.answered === 503).length >= 3, { timeoutMs: 20_000, what: 'failed webhook attempts' });
    const second = await queue(['d@ok.test']);
    await sink.waitForMessages(2, 15_000);
    assert.ok(!received.some((r) => r.answered === 204), 'delivered while the receiver accepted nothing');
    await waitFor(() => received.some((r) => r.event.recipient === 'd@ok.test' && r.answered === 503), { timeoutMs: 10_000, what: 'a failed attempt for the second message' });

    // Events are jobs in their own tube: they survive the worker.
    await worker!.stop();
    worker = undefined;
    const waiting = await eventsTube();
    assert.equal(waiting.ready + waiting.delayed, 4, `four events wait in ${WEBHOOK_TUBE}: ${JSON.stringify(waiting)}`);

    accept = true;
    await startTheWorker();
    await waitFor(() => new Set(received.filter((r) => r.answered === 204).map((r) => r.eventId)).size === 4, { timeoutMs: 20_000, what: 'all four events accepted' });
    await waitFor(async () => {
      const tube = await eventsTube();
      return tube.ready + tube.delayed + tube.reserved + tube.buried === 0;
    }, { what: 'the events tube to empty' });

    assert.ok(received.every((r) => r.signatureOk), 'every request carried a valid signature');
    assert.equal(received[0]!.answered, 'hung');
    const accepted = received.filter((r) => r.answered === 204).map((r) => r.event);
    const byRecipient = Object.fromEntries(accepted.map((e) => [e.recipient, e]));
    assert.deepEqual(
      Object.fromEntries(accepted.map((e) => [e.recipient, [e.type, e.messageId, e.responseCode]])),
      {
        'a@ok.test': ['delivered', first, 250],
        'b@bad.test': ['bounced', first, 550],
        'c@slow.test': ['deferred', first, 451],
        'd@ok.test': ['delivered', second, 250],
      },
    );
    assert.equal(byRecipient['b@bad.test']!.enhancedCode, '5.1.1');
    assert.equal(byRecipient['c@slow.test']!.response, '451 4.3.0 try again later');
    assert.ok(byRecipient['c@slow.test']!.nextAttemptAt, 'a deferred event says when the next attempt is');
    for (const event of accepted) {
      const attempts = received.filter((r) => r.eventId === event.id);
      assert.ok(attempts.length >= 2, `event ${event.type} for ${event.recipient} was retried`);
      assert.ok(attempts.every((r) => JSON.stringify(r.event) === JSON.stringify(event)), 'every retry sends the same event');
    }
  });
});
