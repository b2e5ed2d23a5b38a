import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { postofficeConfigSchema } from '../../postoffice/config.ts';
import { startPostoffice, type RunningPostoffice } from '../../postoffice/server.ts';
import { signRequest } from '../../shared/signing.ts';
import { BeanstalkClient } from '../../shared/beanstalk.ts';
import { openStore, type Store } from '../../shared/store/open.ts';
import { startWorker, type RunningWorker } from '../../worker/server.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { jsonOf, runHedwig } from '../helpers/cli.ts';
import { freePort, waitFor } from '../helpers/ports.ts';
import { startSmtpSink, type SmtpSink } from '../helpers/smtp-sink.ts';
import { testStoreUrl } from '../helpers/store.ts';
import { testWorkerConfig } from '../helpers/worker-config.ts';

/**
 * hedwig queue list / flush / hold / release / delete against a real beanstalkd, a real post
 * office and a real worker delivering to an SMTP sink, while other mail keeps flowing through
 * them (the load below). Every command acts on the jobs of the messages it selects and nothing
 * else: at the end every load message arrived exactly once, and every message a test put
 * in the queue was delivered once, held, or deleted, never lost or doubled.
 */

const FQDN = 'app1.example.com';
const KEY = 'k'.repeat(40);
const DEFER = { code: 451, message: '4.3.0 try again later' };

interface ListedEntry {
  id: string;
  state: string;
  sender: string;
  recipients: string[];
  attempts: number;
  nextAttemptAt: string | null;
  lastResponse: string | null;
}

describe('hedwig queue commands under load', { timeout: 240_000 }, () => {
  let beanstalkd: BeanstalkdProcess;
  let sink: SmtpSink;
  let slowSink: SmtpSink;
  let postoffice: RunningPostoffice;
  let worker: RunningWorker;
  let store: Store;
  let observer: BeanstalkClient;
  let env: NodeJS.ProcessEnv;
  const load = { sent: [] as string[], stop: false, done: Promise.resolve() };
  const script: Record<string, { code: number; message: string }> = {};

  async function submit(rcpttos: string[], mailfrom = 'app@example.com'): Promise<string> {
    const body = JSON.stringify({ mailfrom, rcpttos, data: `Subject: q ${rcpttos[0]}\r\nX-Test-Rcpt: ${rcpttos.join(',')}\r\n\r\nhello\r\n` });
    const headers = signRequest(KEY, { method: 'POST', path: '/v1/messages', fqdn: FQDN, body });
    const res = await fetch(`${postoffice.url}/v1/messages`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body, signal: AbortSignal.timeout(10_000) });
    assert.equal(res.status, 202, await res.clone().text());
    return ((await res.json()) as { id: string }).id;
  }

  const hedwig = (args: string[], timeoutMs = 60_000) => runHedwig(args, { env, timeoutMs });
  const list = async (args: string[]) => {
    const run = await hedwig(['queue', 'list', '--json', ...args]);
    assert.equal(run.code, 0, run.stderr);
    return jsonOf<ListedEntry[]>(run);
  };
  const arrivalsTo = (recipient: string) => sink.messages.filter((m) => m.rcptTo.includes(recipient)).length;
  const deferAll = (recipients: string[]) => {
    for (const r of recipients) script[r] = DEFER;
  };

  before(async () => {
    sink = await startSmtpSink({ script: { recipients: script } });
    slowSink = await startSmtpSink({ script: { dataDelayMs: 8000, data: DEFER } });
    beanstalkd = await startBeanstalkd();
    postoffice = await startPostoffice(
      postofficeConfigSchema.parse({ store: { url: testStoreUrl() }, listen: { host: '127.0.0.1', port: await freePort() }, beanstalk: { servers: [beanstalkd.address] }, clients: { [FQDN]: { key: KEY, senderDomains: ['example.com'] } } }),
      { logger: pino({ level: 'silent' }), registry: new Registry() },
    );
    const route = `${sink.host}:${sink.port}`;
    worker = await startWorker(
      testWorkerConfig(beanstalkd.address, {
        concurrency: 4,
        retry: { delaysSeconds: [3600], maxLifetimeSeconds: 86_400 },
        timeouts: { connectMs: 3000, greetingMs: 3000, socketMs: 30_000 },
        routes: { 'ok.test': route, 'slow.test': route, 'slow2.test': route, 'gone.test': route, 'example.com': route, 'busy.test': `${slowSink.host}:${slowSink.port}` },
      }),
      { logger: pino({ level: 'silent' }), registry: new Registry() },
    );
    observer = new BeanstalkClient({ host: beanstalkd.host, port: beanstalkd.port });
    await observer.connect();
    store = await openStore({ url: testStoreUrl(), timeoutMs: 5000, password: undefined, historySeconds: 3600 });
    env = { HEDWIG_STORE_URL: testStoreUrl(), HEDWIG_BEANSTALK_SERVERS: beanstalkd.address };
    // Mail that keeps flowing while the commands run: about 20 messages a second.
    load.done = (async () => {
      for (let n = 0; !load.stop && n < 5000; n++) {
        const rcpt = `load-${n}@ok.test`;
        await submit([rcpt]);
        load.sent.push(rcpt);
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
  });

  after(async () => {
    load.stop = true;
    await load.done.catch(() => undefined);
    await worker?.stop();
    await postoffice?.stop();
    await store?.close();
    await observer?.close();
    await beanstalkd?.stop();
    await sink?.stop();
    await slowSink?.stop();
  });

  const slow = Array.from({ length: 20 }, (_, i) => `slow-${i}@slow.test`);

  it('lists deferred messages with their sender, recipients, attempts, next attempt and last reply', async () => {
    deferAll(slow);
    const ids = await Promise.all(slow.map((r) => submit([r])));
    const listed = await waitFor(
      async () => {
        const entries = await list(['--domain', 'slow.test']);
        return entries.length === slow.length && entries.every((e) => e.state === 'delayed') ? entries : undefined;
      },
      { timeoutMs: 30_000, intervalMs: 500, what: 'the deferred messages listed as delayed' },
    );
    assert.deepEqual(listed.map((e) => e.id).sort(), [...ids].sort());
    for (const e of listed) {
      assert.equal(e.sender, 'app@example.com');
      assert.equal(e.recipients.length, 1);
      assert.equal(e.attempts, 1);
      assert.ok(e.nextAttemptAt && Date.parse(e.nextAttemptAt) > Date.now() + 3_000_000, 'next attempt an hour away');
      assert.match(e.lastResponse ?? '', /451 4\.3\.0 try again later/);
    }
    assert.deepEqual(await list(['--domain', 'slow.test', '--state', 'ready']), []);
    assert.equal((await list(['--recipient', slow[3]!])).length, 1);
    const text = await hedwig(['queue', 'list', '--domain', 'slow.test']);
    assert.match(text.stdout, /^ID\s+AGE\s+SENDER\s+RECIPIENTS\s+STATE\s+ATTEMPTS\s+NEXT\s+LAST REPLY/m);
    assert.match(text.stdout, /20 message\(s\)/);
  });

  it('holds messages (never tried, not flushed) and releases them', async () => {
    const held = await hedwig(['queue', 'hold', '--domain', 'slow.test', '--json']);
    assert.equal(held.code, 0, held.stderr);
    assert.equal(jsonOf<{ count: number }>(held).count, slow.length);
    assert.ok((await list(['--domain', 'slow.test'])).every((e) => e.state === 'held'));
    const flushed = await hedwig(['queue', 'flush', '--domain', 'slow.test', '--json']);
    assert.equal(jsonOf<{ count: number }>(flushed).count, 0, 'held messages are not flushed');
    assert.equal((await hedwig(['queue', 'hold', '--domain', 'slow.test', '--json']).then((r) => jsonOf<{ count: number }>(r))).count, 0, 'holding again does nothing');

    const released = await hedwig(['queue', 'release', '--domain', 'slow.test', '--json']);
    assert.equal(jsonOf<{ count: number }>(released).count, slow.length);
    // Released means tried now: each is attempted a second time and deferred again.
    await waitFor(async () => (await list(['--domain', 'slow.test'])).every((e) => e.state === 'delayed' && e.attempts === 2), { timeoutMs: 30_000, intervalMs: 500, what: 'a second attempt of every released message' });
  });

  it('flushes deferred messages of one domain so they are delivered now, each once', async () => {
    for (const r of slow) delete script[r];
    const flushed = await hedwig(['queue', 'flush', '--domain', 'slow.test', '--json']);
    assert.equal(flushed.code, 0, flushed.stderr);
    assert.equal(jsonOf<{ count: number }>(flushed).count, slow.length);
    await waitFor(() => slow.every((r) => arrivalsTo(r) >= 1), { timeoutMs: 30_000, what: 'every flushed message at the sink' });
    assert.deepEqual(slow.filter((r) => arrivalsTo(r) !== 1), [], 'each arrived exactly once');
    await waitFor(async () => (await list(['--domain', 'slow.test'])).length === 0, { timeoutMs: 10_000, intervalMs: 300, what: 'the queue to forget them' });
  });

  it('waits for a worker that holds the job, then holds and deletes the message', async () => {
    const id = await submit(['someone@busy.test']);
    // Straight from the store and beanstalkd (a CLI run takes seconds to start).
    await waitFor(
      async () => {
        const ref = (await store.getMessage(id))?.job;
        return ref ? (await observer.statsJob(ref.jobId)).state === 'reserved' : false;
      },
      { timeoutMs: 15_000, intervalMs: 100, what: 'the message being delivered' },
    );
    const held = await hedwig(['queue', 'hold', id, '--wait', '30s', '--json']);
    assert.equal(held.code, 0, held.stderr);
    assert.equal(jsonOf<{ count: number }>(held).count, 1);
    const [entry] = await list([id]);
    assert.deepEqual([entry?.state, entry?.attempts], ['held', 1], 'the attempt in flight ended, its retry job was held');

    const deleted = await hedwig(['queue', 'delete', id, '--json']);
    assert.equal(jsonOf<{ count: number }>(deleted).count, 1);
    assert.deepEqual(await list([id]), []);
    const record = await store.getMessage(id);
    assert.equal(record?.state, 'deleted');
    assert.match(record?.lastResponse ?? '', /^deleted by .+ \(hedwig queue delete\)$/);
  });

  it('deletes messages with a bounce to the sender, once even when run again', async () => {
    const gone = Array.from({ length: 5 }, (_, i) => `gone-${i}@gone.test`);
    deferAll(gone);
    const ids = await Promise.all(gone.map((r) => submit([r], 'owner@example.com')));
    await waitFor(async () => (await list(['--domain', 'gone.test'])).filter((e) => e.state === 'delayed').length === gone.length, { timeoutMs: 30_000, intervalMs: 500, what: 'the gone.test messages deferred' });
    assert.equal((await hedwig(['queue', 'delete', '--json'])).code, 2, 'delete without a filter refuses');
    const dry = await hedwig(['queue', 'delete', '--domain', 'gone.test', '--bounce', '--dry-run', '--json']);
    assert.equal(jsonOf<{ count: number }>(dry).count, gone.length);
    assert.equal((await list(['--domain', 'gone.test'])).length, gone.length, 'a dry run changes nothing');

    const deleted = await hedwig(['queue', 'delete', '--domain', 'gone.test', '--bounce', '--json']);
    assert.equal(deleted.code, 0, deleted.stderr);
    assert.equal(jsonOf<{ count: number }>(deleted).count, gone.length);
    assert.equal(jsonOf<{ count: number }>(await hedwig(['queue', 'delete', '--domain', 'gone.test', '--bounce', '--json'])).count, 0);
    const bounces = () => sink.messages.filter((m) => m.mailFrom === '' && m.rcptTo.includes('owner@example.com'));
    await waitFor(() => bounces().length >= gone.length, { timeoutMs: 30_000, what: 'a bounce per deleted message' });
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal(bounces().length, gone.length, 'one bounce per message');
    for (const id of ids) assert.ok(bounces().some((b) => b.raw.toString().includes(id)), `the bounce for ${id} names it`);
    assert.ok(bounces().every((b) => /deleted by \S+ \(hedwig queue delete --bounce\)/.test(b.raw.toString().replace(/=?\r\n[ \t]*/g, ' ').replace(/\s+/g, ' '))), bounces()[0]?.raw.toString());
    assert.deepEqual(gone.filter((r) => arrivalsTo(r) > 0), [], 'deleted messages are never delivered');
  });

  it('loses and doubles nothing when a hold is killed half way; running it again finishes it', async (t) => {
    const many = Array.from({ length: 100 }, (_, i) => `many-${i}@slow2.test`);
    deferAll(many);
    for (let i = 0; i < many.length; i += 20) await Promise.all(many.slice(i, i + 20).map((r) => submit([r])));
    await waitFor(async () => (await list(['--domain', 'slow2.test'])).filter((e) => e.state === 'delayed').length === many.length, { timeoutMs: 60_000, intervalMs: 500, what: 'the 100 messages deferred' });
    const child = spawn(process.execPath, [resolve(import.meta.dirname, '..', '..', 'cli', 'hedwig.mjs'), 'queue', 'hold', '--domain', 'slow2.test'], { env: { ...process.env, ...env }, stdio: 'ignore' });
    const closed = new Promise((r) => child.once('close', r));
    // Kill it as soon as it has started holding (the store marks a message held before its job is buried).
    await waitFor(async () => (await store.listActive({ domain: 'slow2.test', held: true })).length > 0, { timeoutMs: 30_000, intervalMs: 20, what: 'the hold to start' });
    child.kill('SIGKILL');
    await closed;
    const heldBeforeKill = (await store.listActive({ domain: 'slow2.test', held: true })).length;
    t.diagnostic(`the killed hold had marked ${heldBeforeKill} of ${many.length}`);
    const after = await list(['--domain', 'slow2.test']);
    assert.equal(after.length, many.length, 'every message still queued');
    assert.deepEqual(after.filter((e) => !['delayed', 'held', 'ready', 'delivering'].includes(e.state)), [], 'each in a state that will deliver it or is held');
    const rerun = await hedwig(['queue', 'hold', '--domain', 'slow2.test', '--json']);
    assert.equal(rerun.code, 0, rerun.stderr);
    await waitFor(async () => (await list(['--domain', 'slow2.test'])).every((e) => e.state === 'held'), { timeoutMs: 30_000, intervalMs: 500, what: 'every message held' });

    for (const r of many) delete script[r];
    assert.equal(jsonOf<{ count: number }>(await hedwig(['queue', 'release', '--domain', 'slow2.test', '--json'])).count, many.length);
    await waitFor(() => many.every((r) => arrivalsTo(r) >= 1), { timeoutMs: 60_000, what: 'every released message at the sink' });
    assert.deepEqual(many.filter((r) => arrivalsTo(r) !== 1), [], 'each arrived exactly once');
  });

  it('delivered every message of the load exactly once while the commands ran', async () => {
    load.stop = true;
    await load.done;
    assert.ok(load.sent.length > 50, `load sent ${load.sent.length}`);
    await waitFor(() => load.sent.every((r) => arrivalsTo(r) >= 1), { timeoutMs: 60_000, what: 'every load message at the sink' });
    assert.deepEqual(load.sent.filter((r) => arrivalsTo(r) !== 1), [], 'no load message lost or doubled');
  });
});
