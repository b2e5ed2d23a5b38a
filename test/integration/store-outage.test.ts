import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { postofficeConfigSchema } from '../../postoffice/config.ts';
import { startPostoffice, type RunningPostoffice } from '../../postoffice/server.ts';
import { signRequest } from '../../shared/signing.ts';
import { startWorker, type RunningWorker } from '../../worker/server.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { freePort, waitFor } from '../helpers/ports.ts';
import { startPostgres, type PostgresProcess } from '../helpers/postgres.ts';
import { startSmtpSink, type SmtpSink } from '../helpers/smtp-sink.ts';
import { testWorkerConfig } from '../helpers/worker-config.ts';

/**
 * The relay while its PostgreSQL store is down: submissions are still accepted and delivered
 * (idempotency falls back to the post office's memory, suppression is not checked, the
 * worker's first-attempt check lets every job through), the status route answers 503; once
 * the store is back, what happened meanwhile reaches it (the post office's buffered records,
 * the workers' reports through the status tube) and keys claimed before the outage still work.
 */

const FQDN = 'app1.example.com';
const KEY = 'k'.repeat(40);

describe('the store briefly down', { timeout: 120_000 }, () => {
  let postgres: PostgresProcess;
  let beanstalkd: BeanstalkdProcess;
  let sink: SmtpSink;
  let postoffice: RunningPostoffice;
  let worker: RunningWorker;
  const registry = new Registry();

  async function submit(rcpt: string, key: string): Promise<{ status: number; id: string }> {
    const body = JSON.stringify({ mailfrom: 'app@example.com', rcpttos: [rcpt], data: `Subject: ${key}\r\n\r\nhello\r\n` });
    const headers = signRequest(KEY, { method: 'POST', path: '/v1/messages', fqdn: FQDN, idempotencyKey: key, body });
    const res = await fetch(`${postoffice.url}/v1/messages`, { method: 'POST', headers: { 'content-type': 'application/json', 'idempotency-key': key, ...headers }, body, signal: AbortSignal.timeout(15_000) });
    return { status: res.status, id: String(((await res.json()) as { id?: string }).id) };
  }

  async function status(id: string): Promise<{ status: number; body: { state?: string; error?: string } }> {
    const path = `/v1/messages/${id}`;
    const res = await fetch(`${postoffice.url}${path}`, { headers: signRequest(KEY, { method: 'GET', path, fqdn: FQDN, body: '' }), signal: AbortSignal.timeout(15_000) });
    return { status: res.status, body: (await res.json()) as { state?: string; error?: string } };
  }

  before(async () => {
    postgres = await startPostgres();
    beanstalkd = await startBeanstalkd();
    sink = await startSmtpSink();
    const store = { url: postgres.url, timeoutMs: 1000 };
    postoffice = await startPostoffice(
      postofficeConfigSchema.parse({ store, listen: { host: '127.0.0.1', port: await freePort() }, beanstalk: { servers: [beanstalkd.address] }, clients: { [FQDN]: { key: KEY, senderDomains: ['example.com'] } } }),
      { logger: pino({ level: 'silent' }), registry },
    );
    worker = await startWorker(testWorkerConfig(beanstalkd.address, { store, concurrency: 2, routes: { 'ok.test': `${sink.host}:${sink.port}` } }), { logger: pino({ level: 'silent' }), registry: new Registry() });
  });

  after(async () => {
    await worker?.stop();
    await postoffice?.stop();
    await beanstalkd?.stop();
    await sink?.stop();
    await postgres?.stop();
  });

  const arrivals = (rcpt: string) => sink.messages.filter((m) => m.rcptTo.includes(rcpt)).length;

  it('keeps accepting and delivering mail, and the store learns what happened once it is back', async () => {
    const before = await submit('before@ok.test', 'key-before');
    assert.equal(before.status, 202);
    await waitFor(async () => (await status(before.id)).body.state === 'done', { timeoutMs: 15_000, what: 'the first message done' });

    await postgres.kill();
    const during = await submit('during@ok.test', 'key-during');
    assert.equal(during.status, 202, 'accepted while the store is down');
    const retry = await submit('during@ok.test', 'key-during');
    assert.deepEqual(retry, during, 'a retry to the same post office is still answered from its memory');
    await waitFor(() => arrivals('during@ok.test') === 1, { timeoutMs: 20_000, what: 'the message delivered during the outage' });
    const unavailable = await status(during.id);
    assert.deepEqual([unavailable.status, unavailable.body.error], [503, 'store_unavailable']);
    const errors = await registry.getSingleMetricAsString('hedwig_store_errors_total');
    assert.match(errors, /operation="idempotency_claim"/);

    await postgres.restart();
    // The buffered record and the worker's report (through the status tube) reach the store.
    await waitFor(async () => (await status(during.id)).body.state === 'done', { timeoutMs: 60_000, intervalMs: 500, what: 'the outage message in the history' });
    const again = await submit('before@ok.test', 'key-before');
    assert.deepEqual(again, before, 'a key claimed before the outage is still answered');
    assert.equal(arrivals('before@ok.test'), 1);
    assert.equal(arrivals('during@ok.test'), 1);
  });
});
