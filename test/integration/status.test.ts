import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { BeanstalkClient } from '../../shared/beanstalk.ts';
import { TUBE } from '../../shared/job.ts';
import { signRequest } from '../../shared/signing.ts';
import { postofficeConfigSchema } from '../../postoffice/config.ts';
import { startPostoffice, type RunningPostoffice } from '../../postoffice/server.ts';
import { startWorker, type RunningWorker } from '../../worker/server.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { freePort, waitFor } from '../helpers/ports.ts';
import { startSmtpSink, type SmtpSink } from '../helpers/smtp-sink.ts';
import { testWorkerConfig } from '../helpers/worker-config.ts';
import { testStoreUrl } from '../helpers/store.ts';

/**
 * GET /v1/messages/:id on a real post office, with a real worker delivering from a real
 * beanstalkd to an SMTP sink that defers one recipient: the answer follows the message
 * from queued (no worker yet) to deferred (one recipient delivered, one waiting) to done.
 */
const FQDN = 'app1.example.com';
const KEY = 'status-test-key-0123456789abcdef0123456789';
const OTHER_FQDN = 'app2.example.com';
const OTHER_KEY = 'status-test-other-key-0123456789abcdef012345';

interface StatusBody {
  id: string;
  state: string;
  attempts: number;
  nextAttemptAt: string | null;
  lastAttemptAt: string | null;
  recipients: Array<{ recipient: string; state: string; responseCode: number | null; enhancedCode: string | null; lastResponse: string | null }>;
}

describe('message status route', { timeout: 90_000 }, () => {
  let beanstalkd: BeanstalkdProcess;
  let sink: SmtpSink;
  let postoffice: RunningPostoffice;
  let worker: RunningWorker | undefined;
  let observer: BeanstalkClient;

  before(async () => {
    sink = await startSmtpSink({ script: { recipients: { 'later@slow.test': { code: 451, message: '4.3.0 try again later' } } } });
    beanstalkd = await startBeanstalkd();
    const config = postofficeConfigSchema.parse({ store: { url: testStoreUrl() },
      listen: { host: '127.0.0.1', port: await freePort() },
      beanstalk: { servers: [beanstalkd.address] },
      clients: { [FQDN]: { key: KEY, senderDomains: ['example.com'] }, [OTHER_FQDN]: { key: OTHER_KEY, senderDomains: ['example.com'] } },
    });
    postoffice = await startPostoffice(config, { logger: pino({ level: 'silent' }), registry: new Registry() });
    observer = new BeanstalkClient({ host: beanstalkd.host, port: beanstalkd.port });
    await observer.connect();
    await observer.use(TUBE.outbound);
  });

  after(async () => {
    await worker?.stop();
    await postoffice?.stop();
    await observer?.close();
    await beanstalkd?.stop();
    await sink?.stop();
  });

  async function startTheWorker(): Promise<void> {
    const route = `${sink.host}:${sink.port}`;
    const config = testWorkerConfig(beanstalkd.address, { routes: { 'ok.test': route, 'slow.test': route } });
    worker = await startWorker(config, { logger: pino({ level: 'silent' }), registry: new Registry() });
  }

  async function submit(rcpttos: string[]): Promise<string> {
    const body = JSON.stringify({ mailfrom: 'app@example.com', rcpttos, data: 'Subject: status\r\n\r\nhello\r\n' });
    const headers = signRequest(KEY, { method: 'POST', path: '/v1/messages', fqdn: FQDN, body });
    const res = await fetch(`${postoffice.url}/v1/messages`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body, signal: AbortSignal.timeout(10_000) });
    assert.equal(res.status, 202);
    return ((await res.json()) as { id: string }).id;
  }

  async function status(id: string, as: { fqdn: string; key: string } = { fqdn: FQDN, key: KEY }, signed = true): Promise<{ status: number; body: Record<string, unknown> }> {
    const path = `/v1/messages/${id}`;
    const headers = signed ? signRequest(as.key, { method: 'GET', path, fqdn: as.fqdn, body: '' }) : {};
    const res = await fetch(`${postoffice.url}${path}`, { headers, signal: AbortSignal.timeout(10_000) });
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  }

  const recipientStates = (body: Record<string, unknown>) =>
    Object.fromEntries((body as unknown as StatusBody).recipients.map((r) => [r.recipient, [r.state, r.responseCode, r.lastResponse]]));

  it('follows a message from queued to deferred to done', async () => {
    const id = await submit(['now@ok.test', 'later@slow.test']);

    // No worker yet: the message waits in the queue.
    const queued = await status(id);
    assert.equal(queued.status, 200);
    assert.equal(queued.body.state, 'queued');
    assert.equal(queued.body.attempts, 0);
    assert.deepEqual(recipientStates(queued.body), { 'now@ok.test': ['queued', null, null], 'later@slow.test': ['queued', null, null] });

    await startTheWorker();
    await sink.waitForMessages(1, 15_000);
    const deferred = await waitFor(
      async () => {
        const s = await status(id);
        return s.body.state === 'deferred' ? s : undefined;
      },
      { timeoutMs: 10_000, what: 'the deferred state' },
    );
    const body = deferred.body as unknown as StatusBody;
    assert.equal(body.attempts, 1);
    assert.deepEqual(recipientStates(deferred.body), {
      'now@ok.test': ['delivered', 250, body.recipients.find((r) => r.recipient === 'now@ok.test')!.lastResponse],
      'later@slow.test': ['deferred', 451, '451 4.3.0 try again later'],
    });
    const nextAttempt = Date.parse(body.nextAttemptAt!) - Date.parse(body.lastAttemptAt!);
    assert.ok(nextAttempt >= 59_000 && nextAttempt <= 61_000, `next attempt one retry delay after the last: ${nextAttempt} ms`);

    // The mailbox works again: bring the retry forward and let it be delivered.
    sink.script = {};
    assert.equal(await observer.kick(10), 1);
    await sink.waitForMessages(2, 15_000);
    const done = await waitFor(
      async () => {
        const s = await status(id);
        return s.body.state === 'done' ? s : undefined;
      },
      { timeoutMs: 10_000, what: 'the done state' },
    );
    assert.equal((done.body as unknown as StatusBody).attempts, 2);
    assert.deepEqual(
      Object.fromEntries(Object.entries(recipientStates(done.body)).map(([r, [state]]) => [r, state])),
      { 'now@ok.test': 'delivered', 'later@slow.test': 'delivered' },
    );
  });

  it('answers for a message delivered at its first attempt, from every post office and after a restart; 404 for an unknown id and another host, and 401 unsigned', async () => {
    const before = sink.messages.length;
    const id = await submit(['quick@ok.test']);
    await sink.waitForMessages(before + 1, 15_000);
    const done = await waitFor(async () => ((await status(id)).body.state === 'done' ? status(id) : undefined), { timeoutMs: 10_000, what: 'the message to be done' });
    assert.deepEqual(recipientStates(done.body)['quick@ok.test']!.slice(0, 2), ['delivered', 250]);

    // A second post office on the same store (another instance, or this one restarted) answers the same.
    const second = await startPostoffice(postofficeConfigSchema.parse({ store: { url: testStoreUrl() }, listen: { host: '127.0.0.1', port: await freePort() }, beanstalk: { servers: [beanstalkd.address] }, clients: { [FQDN]: { key: KEY, senderDomains: ['example.com'] } } }), {
      logger: pino({ level: 'silent' }),
      registry: new Registry(),
    });
    try {
      const path = `/v1/messages/${id}`;
      const res = await fetch(`${second.url}${path}`, { headers: signRequest(KEY, { method: 'GET', path, fqdn: FQDN, body: '' }), signal: AbortSignal.timeout(10_000) });
      assert.equal(res.status, 200);
      assert.deepEqual(recipientStates((await res.json()) as Record<string, unknown>), recipientStates(done.body));
    } finally {
      await second.stop();
    }

    sink.script = { recipients: { 'later@slow.test': { code: 451, message: '4.3.0 try again later' } } };
    const held = await submit(['later@slow.test']);
    await waitFor(async () => (await status(held)).body.state === 'deferred', { timeoutMs: 15_000, what: 'the held message to be deferred' });
    assert.equal((await status('00000000-0000-0000-0000-000000000000')).status, 404);
    const other = await status(held, { fqdn: OTHER_FQDN, key: OTHER_KEY });
    assert.equal(other.status, 404, "another host's message looks unknown");
    const unsigned = await status(held, undefined, false);
    assert.equal(unsigned.status, 401);
    const wrongKey = await status(held, { fqdn: FQDN, key: OTHER_KEY });
    assert.equal(wrongKey.status, 401);
  });
});
