import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import type { BeanstalkClient, ReservedJob } from '../../shared/beanstalk.ts';
import type { OutboundJob } from '../../shared/job.ts';
import { recipientHash, verifyWebhookSignature, webhookSignature } from '../../shared/webhook-signature.ts';
import { createWorkerMetrics } from '../../worker/metrics.ts';
import { deliveryEvents, statusUpdate } from '../../worker/outcomes.ts';
import type { Settlement } from '../../worker/settle.ts';
import { dispatchEvent, webhookConfigFrom, webhookConfigSchema, type QueuedEvent, type WebhookConfig } from '../../worker/webhook.ts';

/** The schema, then the secret (read at start-up, not while parsing). */
function webhookConfig(input: unknown): WebhookConfig {
  const read = webhookConfigFrom(webhookConfigSchema.parse(input));
  if (!read.ok) throw new Error(`${read.issue.path.join('.')}: ${read.issue.message}`);
  return read.config;
}

const SECRET = 'unit-webhook-secret-0123456789abcdef01234';
const NOW = Date.parse('2024-05-01T12:00:00Z');

describe('webhook signature', () => {
  const body = '{"id":"e1","type":"delivered"}';

  it('verifies what it signs, within the tolerance', () => {
    const header = webhookSignature(SECRET, NOW / 1000, body);
    assert.match(header, /^t=\d+,v1=[0-9a-f]{64}$/);
    assert.deepEqual(verifyWebhookSignature(SECRET, header, body, { nowSeconds: NOW / 1000 + 60 }), { ok: true, timestamp: NOW / 1000 });
  });

  it('rejects a changed body, another secret, a moved timestamp, an old one and garbage', () => {
    const header = webhookSignature(SECRET, NOW / 1000, body);
    const at = { nowSeconds: NOW / 1000 };
    assert.deepEqual(verifyWebhookSignature(SECRET, header, body.replace('e1', 'e2'), at), { ok: false, reason: 'mismatch' });
    assert.deepEqual(verifyWebhookSignature(`${SECRET}x`, header, body, at), { ok: false, reason: 'mismatch' });
    assert.deepEqual(verifyWebhookSignature(SECRET, header.replace(`t=${NOW / 1000}`, `t=${NOW / 1000 + 1}`), body, at), { ok: false, reason: 'mismatch' });
    assert.deepEqual(verifyWebhookSignature(SECRET, header, body, { nowSeconds: NOW / 1000 + 301 }), { ok: false, reason: 'stale' });
    assert.deepEqual(verifyWebhookSignature(SECRET, 'v1=abc', body, at), { ok: false, reason: 'malformed' });
    assert.deepEqual(verifyWebhookSignature(SECRET, undefined, body, at), { ok: false, reason: 'malformed' });
  });
});

describe('webhook config', () => {
  const base = { url: 'https://hooks.example.com/hedwig', secret: SECRET };

  it('has defaults that retry for a day', () => {
    const config = webhookConfig(base);
    assert.equal(config.maxAgeSeconds, 86_400);
    assert.deepEqual(config.events, ['delivered', 'deferred', 'bounced', 'expired', 'suppressed']);
    assert.equal(config.hashRecipients, false);
    assert.equal(config.tube, 'hedwig-events');
  });

  it('refuses retrying for less than an hour, a short secret and a non-HTTP URL', () => {
    assert.throws(() => webhookConfig({ ...base, maxAgeSeconds: 3599 }));
    assert.throws(() => webhookConfig({ ...base, secret: 'short' }));
    assert.throws(() => webhookConfig({ ...base, url: 'ftp://hooks.example.com/' }));
    assert.throws(() => webhookConfig({ url: base.url }));
  });
});

const job: OutboundJob = { v: 1, id: 'msg-1', fqdn: 'app1.example.com', mailfrom: 'app@example.com', rcpttos: ['a@x.test', 'b@y.test', 'c@z.test'], data: '', receivedAt: NOW - 600_000, attempts: 1 };
const settlement = {
  delivered: [{ recipient: 'a@x.test', outcome: 'delivered', greylisted: false, responseCode: 250, response: '250 ok', mx: 'mx.x.test' }],
  bounced: [{ recipient: 'b@y.test', outcome: 'bounced', greylisted: false, responseCode: 550, enhancedCode: '5.1.1', response: '550 5.1.1 no' }],
  expired: [],
  failedJob: null,
  retry: { job, delaySeconds: 300, greylisted: false, recipients: [{ recipient: 'c@z.test', outcome: 'deferred', greylisted: false, responseCode: 451, response: '451 later' }] },
} as unknown as Settlement;

describe('delivery events and status updates from a settlement', () => {
  it('makes one event per recipient outcome, only of the wanted types', () => {
    const events = deliveryEvents(job, settlement, { now: NOW, webhook: { tube: 't', events: ['delivered', 'deferred', 'bounced'], hashRecipients: false, secret: SECRET } });
    assert.deepEqual(
      events.map((e) => [e.type, e.recipient, e.responseCode, e.attempts, e.nextAttemptAt]),
      [
        ['delivered', 'a@x.test', 250, 2, undefined],
        ['deferred', 'c@z.test', 451, 2, new Date(NOW + 300_000).toISOString()],
        ['bounced', 'b@y.test', 550, 2, undefined],
      ],
    );
    assert.equal(new Set(events.map((e) => e.id)).size, 3);
    assert.deepEqual(deliveryEvents(job, settlement, { now: NOW, webhook: { tube: 't', events: ['bounced'], hashRecipients: false, secret: SECRET } }).map((e) => e.type), ['bounced']);
  });

  it('hashes recipients with the secret when asked, and never sends the address then', () => {
    const [event] = deliveryEvents(job, settlement, { now: NOW, webhook: { tube: 't', events: ['delivered'], hashRecipients: true, secret: SECRET } });
    assert.equal(event!.recipient, undefined);
    assert.equal(event!.recipientHash, recipientHash(SECRET, 'A@X.test'));
    assert.doesNotMatch(JSON.stringify(event), /a@x\.test/i);
  });

  it('describes every recipient of the attempt in the status update', () => {
    const update = statusUpdate(job, settlement, { now: NOW, server: '127.0.0.1:11300', retryJobId: '42' });
    assert.equal(update.state, 'deferred');
    assert.equal(update.attempts, 2);
    assert.equal(update.nextAttemptAt, NOW + 300_000);
    assert.deepEqual(update.retry, { server: '127.0.0.1:11300', jobId: '42' });
    assert.deepEqual(update.recipients.map((r) => [r.recipient, r.state]), [['a@x.test', 'delivered'], ['c@z.test', 'deferred'], ['b@y.test', 'bounced']]);
  });
});

describe('webhook dispatch of one event', () => {
  let server: Server;
  let url: string;
  let status = 204;
  const bodies: string[] = [];

  before(async () => {
    server = createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => {
        bodies.push(body);
        res.writeHead(status).end();
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
  });
  after(() => new Promise<void>((resolve) => server.close(() => resolve())));

  function fakeJob(payload: QueuedEvent | string, releases = 0) {
    const calls: string[] = [];
    const reserved = {
      id: '7',
      server: '127.0.0.1:11300',
      payload: Buffer.from(typeof payload === 'string' ? payload : JSON.stringify(payload)),
      delete: async () => void calls.push('delete'),
      release: async (o?: { delaySeconds?: number }) => void calls.push(`release ${o?.delaySeconds}`),
      bury: async () => void calls.push('bury'),
      touch: async () => undefined,
    } as ReservedJob;
    const client = { statsJob: async () => ({ releases }) } as unknown as BeanstalkClient;
    return { reserved, client, calls };
  }

  const queued = (createdAt: number): QueuedEvent => ({ v: 1, createdAt, event: { id: 'e1', type: 'delivered', occurredAt: '', messageId: 'm', fqdn: 'f', mailfrom: '', recipient: 'a@x.test', response: '250 ok', attempts: 1 } });

  async function dispatch(payload: QueuedEvent | string, releases = 0): Promise<string[]> {
    const config = webhookConfig({ url, secret: SECRET, retryDelaysSeconds: [10, 60, 600], maxAgeSeconds: 3600 });
    const { reserved, client, calls } = fakeJob(payload, releases);
    await dispatchEvent(client, reserved, { config, logger: pino({ level: 'silent' }), metrics: createWorkerMetrics(new Registry()), now: () => NOW });
    return calls;
  }

  it('deletes the event once the receiver answers 2xx', async () => {
    status = 204;
    assert.deepEqual(await dispatch(queued(NOW)), ['delete']);
    assert.equal(JSON.parse(bodies.at(-1)!).id, 'e1');
  });

  it('releases a failed event with the delay for its number of earlier failures, the last one repeating', async () => {
    status = 500;
    assert.deepEqual(await dispatch(queued(NOW), 0), ['release 10']);
    assert.deepEqual(await dispatch(queued(NOW), 1), ['release 60']);
    assert.deepEqual(await dispatch(queued(NOW), 9), ['release 600']);
    assert.deepEqual(await dispatch(queued(NOW - 3590_000), 9), ['release 10'], 'never waits past the maximum age');
  });

  it('buries an event still failing after maxAgeSeconds, and anything that is not an event', async () => {
    status = 503;
    assert.deepEqual(await dispatch(queued(NOW - 3600_000)), ['bury']);
    assert.deepEqual(await dispatch('garbage'), ['bury']);
  });
});
