import assert from 'node:assert/strict';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { postofficeConfigSchema } from '../../postoffice/config.ts';
import { startPostoffice, type RunningPostoffice } from '../../postoffice/server.ts';
import { signRequest } from '../../shared/signing.ts';
import { openStore, type Store } from '../../shared/store/open.ts';
import { workerConfigSchema } from '../../worker/config.ts';
import { startWorker, type RunningWorker } from '../../worker/server.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { jsonOf, runHedwig } from '../helpers/cli.ts';
import { freePort, waitFor } from '../helpers/ports.ts';
import { startSmtpSink, type SmtpSink } from '../helpers/smtp-sink.ts';
import { testStoreUrl } from '../helpers/store.ts';
import { testWorkerConfig } from '../helpers/worker-config.ts';

/**
 * Message history (issue 17.5): `hedwig status ID` and GET /v1/messages/:id answer for a
 * delivered and a bounced message after they left the queue, for store.historySeconds, and the
 * post office prunes them afterwards. Real post office, worker, beanstalkd and SMTP sink, with
 * a retention of 5 s so the test sees both ends of it (the default is 7 days).
 */
const FQDN = 'app1.example.com';
const KEY = 'history-test-key-0123456789abcdef0123456789';
const HISTORY_SECONDS = 5;

interface StatusAnswer {
  state: string;
  recipients: Array<{ recipient: string; state: string; responseCode: number | null }>;
}

describe('message history retention', { timeout: 90_000 }, () => {
  let beanstalkd: BeanstalkdProcess;
  let sink: SmtpSink;
  let postoffice: RunningPostoffice;
  let worker: RunningWorker;
  let store: Store;
  const logs: Array<Record<string, unknown>> = [];
  const dir = mkdtempSync(join(tmpdir(), 'hedwig-history-'));
  let env: Record<string, string>;

  before(async () => {
    sink = await startSmtpSink({ script: { recipients: { 'gone@ok.test': { code: 550, message: '5.1.1 <gone@ok.test>: no such user' } } } });
    beanstalkd = await startBeanstalkd();
    const store_ = { url: testStoreUrl(), historySeconds: HISTORY_SECONDS };
    postoffice = await startPostoffice(
      postofficeConfigSchema.parse({ store: store_, listen: { host: '127.0.0.1', port: await freePort() }, beanstalk: { servers: [beanstalkd.address] }, clients: { [FQDN]: { key: KEY, senderDomains: ['example.com'] } } }),
      { logger: pino({ level: 'info' }, { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) }), registry: new Registry() },
    );
    worker = await startWorker(testWorkerConfig(beanstalkd.address, { store: store_, routes: { 'ok.test': `${sink.host}:${sink.port}` } }), { logger: pino({ level: 'silent' }), registry: new Registry() });
    store = await openStore({ url: testStoreUrl(), timeoutMs: 5000, password: undefined, historySeconds: HISTORY_SECONDS });
    writeFileSync(join(dir, 'host.key'), `${KEY}\n`);
    env = { HEDWIG_POSTOFFICE_URL: postoffice.url, HEDWIG_FQDN: FQDN, HEDWIG_KEY_FILE: join(dir, 'host.key') };
  });

  after(async () => {
    await store?.close();
    await worker?.stop();
    await postoffice?.stop();
    await beanstalkd?.stop();
    await sink?.stop();
  });

  async function submit(rcpttos: string[]): Promise<string> {
    const body = JSON.stringify({ mailfrom: 'app@example.com', rcpttos, data: 'Subject: s\r\n\r\nhello\r\n' });
    const res = await fetch(`${postoffice.url}/v1/messages`, { method: 'POST', headers: { 'content-type': 'application/json', ...signRequest(KEY, { method: 'POST', path: '/v1/messages', fqdn: FQDN, body }) }, body });
    assert.equal(res.status, 202);
    return ((await res.json()) as { id: string }).id;
  }

  const api = async (id: string) => {
    const path = `/v1/messages/${id}`;
    const res = await fetch(`${postoffice.url}${path}`, { headers: signRequest(KEY, { method: 'GET', path, fqdn: FQDN, body: '' }) });
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  };

  it('the default retention is 7 days, for the post office and the worker', () => {
    assert.equal(postofficeConfigSchema.parse({}).store.historySeconds, 604_800);
    assert.equal(workerConfigSchema.parse({}).store.historySeconds, 604_800);
  });

  it('answers for a delivered and a bounced message once they are done, for historySeconds, then prunes them', async () => {
    const delivered = await submit(['fine@ok.test']);
    const bounced = await submit(['gone@ok.test']);
    const done = async (id: string) =>
      waitFor(
        async () => {
          const run = await runHedwig(['status', id, '--json'], { env });
          const answer = run.code === 0 ? jsonOf<StatusAnswer>(run) : undefined;
          return answer?.state === 'done' ? answer : undefined;
        },
        { timeoutMs: 20_000, intervalMs: 100, what: `${id} done` },
      );
    const [d, b] = await Promise.all([done(delivered), done(bounced)]);
    assert.deepEqual(d.recipients.map((r) => [r.recipient, r.state, r.responseCode]), [['fine@ok.test', 'delivered', 250]]);
    assert.deepEqual(b.recipients.map((r) => [r.recipient, r.state, r.responseCode]), [['gone@ok.test', 'bounced', 550]]);
    assert.equal((await api(bounced)).status, 200, 'the API answers too');

    // The history of each message is kept historySeconds from when it left the queue.
    for (const id of [delivered, bounced]) {
      const record = (await store.getMessage(id))!;
      assert.equal(record.state, 'done');
      assert.equal(record.expiresAt! - record.updatedAt, HISTORY_SECONDS * 1000, `${id} kept for historySeconds`);
    }

    // Pruned by the post office (every historySeconds here, every minute with the default).
    await waitFor(async () => (await store.getMessage(delivered)) === undefined && (await store.getMessage(bounced)) === undefined, { timeoutMs: 25_000, intervalMs: 200, what: 'the history to be pruned' });
    const gone = await api(delivered);
    assert.equal(gone.status, 404);
    assert.equal(gone.body.error, 'not_queued');
    assert.equal((await runHedwig(['status', bounced], { env })).code, 3, 'hedwig status: unknown id');
    const pruned = logs.filter((l) => l.event === 'store_pruned');
    assert.ok(pruned.reduce((n, l) => n + Number(l.messages), 0) >= 2, `store_pruned lines: ${JSON.stringify(pruned)}`);
  });
});
