import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BeanstalkClient } from '../../shared/beanstalk.ts';
import { TUBE } from '../../shared/job.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { jsonOf, runHedwig } from '../helpers/cli.ts';
import { freePort, waitFor } from '../helpers/ports.ts';
import { startSmtpSink, type SmtpSink } from '../helpers/smtp-sink.ts';
import { startTier, type TierProcess } from '../helpers/tiers.ts';

/**
 * The operator's view of a running relay, every tier its own process: `hedwig send`
 * through mailman and straight to the post office, `hedwig grep` following a recipient
 * through the logs of all three tiers, `hedwig status` on the post office, and /metrics of
 * each tier after this known set of deliveries:
 *
 *   via mailman:    to rcpt@a.test                 -> delivered
 *   via postoffice: to other@a.test, bad@b.test    -> delivered, bounced (550 5.1.1)
 */
const FQDN = 'app1.example.com';
const KEY = 'cli-relay-key-0123456789abcdef0123456789abcdef';
const FROM = 'app@example.com';

type Sample = { name: string; labels: Record<string, string>; value: number };

function parseMetrics(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    const match = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!match) continue;
    const labels = Object.fromEntries([...(match[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((m) => [m[1]!, m[2]!]));
    samples.push({ name: match[1]!, labels, value: Number(match[3]) });
  }
  return samples;
}

/** Sum of the samples of `name` whose labels include `labels`. */
function metric(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  const matching = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  assert.ok(matching.length > 0, `metric ${name}${JSON.stringify(labels)} is exported`);
  return matching.reduce((sum, s) => sum + s.value, 0);
}

async function scrape(port: number): Promise<Sample[]> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(10_000) });
  assert.equal(res.status, 200);
  return parseMetrics(await res.text());
}

describe('hedwig send, grep, status and metrics against the running tiers', { timeout: 180_000 }, () => {
  let beanstalkd: BeanstalkdProcess;
  let sink: SmtpSink;
  let postoffice: TierProcess;
  let worker: TierProcess;
  let mailman: TierProcess;
  let ports: { postoffice: number; mailman: number; mailmanOps: number; workerOps: number };
  let dir: string;
  let env: NodeJS.ProcessEnv;
  const sent: { viaMailman?: { id: string }; viaPostoffice?: { id: string } } = {};

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'hedwig-cli-relay-'));
    writeFileSync(join(dir, 'host.key'), `${KEY}\n`, { mode: 0o600 });
    sink = await startSmtpSink({ script: { recipients: { 'bad@b.test': { code: 550, message: '5.1.1 no such user' } } } });
    beanstalkd = await startBeanstalkd();
    ports = { postoffice: await freePort(), mailman: await freePort(), mailmanOps: await freePort(), workerOps: await freePort() };
    postoffice = await startTier(
      'postoffice',
      { listen: { host: '127.0.0.1', port: ports.postoffice }, beanstalk: { servers: [beanstalkd.address] }, clients: { [FQDN]: { key: KEY, senderDomains: ['example.com'] } } },
      { readyPort: ports.postoffice },
    );
    const route = `${sink.host}:${sink.port}`;
    worker = await startTier('worker', {
      beanstalk: { servers: [beanstalkd.address] },
      concurrency: 2,
      ehloName: 'worker.hedwig.test',
      routes: { 'a.test': route, 'b.test': route },
      timeouts: { connectMs: 3000, greetingMs: 3000, socketMs: 5000 },
      retry: { delaysSeconds: [60], maxLifetimeSeconds: 3600 },
      bounces: { enabled: false },
      ops: { host: '127.0.0.1', port: ports.workerOps },
      shutdownGraceMs: 2000,
    }, { readyPort: ports.workerOps });
    mailman = await startTier(
      'mailman',
      {
        listen: { host: '127.0.0.1', port: ports.mailman },
        postoffice: { url: `http://127.0.0.1:${ports.postoffice}`, fqdn: FQDN, keyFile: join(dir, 'host.key') },
        spool: { dir: join(dir, 'spool') },
        ops: { host: '127.0.0.1', port: ports.mailmanOps },
      },
      { readyPort: ports.mailman },
    );
    env = {
      HEDWIG_BEANSTALK_SERVERS: beanstalkd.address,
      HEDWIG_MAILMAN: `127.0.0.1:${ports.mailman}`,
      HEDWIG_POSTOFFICE_URL: `http://127.0.0.1:${ports.postoffice}`,
      HEDWIG_FQDN: FQDN,
      HEDWIG_KEY_FILE: join(dir, 'host.key'),
    };
  });

  after(async () => {
    await mailman?.stop();
    await worker?.stop();
    await postoffice?.stop();
    await beanstalkd?.stop();
    await sink?.stop();
  });

  it('send puts a test message through mailman and through the post office', async () => {
    const viaMailman = await runHedwig(['send', '--to', 'rcpt@a.test', '--from', FROM, '--json'], { env });
    assert.equal(viaMailman.code, 0, viaMailman.stderr);
    sent.viaMailman = jsonOf<{ via: string; id: string }>(viaMailman);
    assert.match(sent.viaMailman.id, /^[0-9a-z]{9}-[0-9a-f]{12}$/, "mailman's queue id");

    const viaPostoffice = await runHedwig(['send', '--via', 'postoffice', '--to', 'other@a.test', '--to', 'bad@b.test', '--from', FROM], { env });
    assert.equal(viaPostoffice.code, 0, viaPostoffice.stderr);
    const match = /^queued via postoffice as ([0-9a-f-]{36}) /.exec(viaPostoffice.stdout);
    assert.ok(match, viaPostoffice.stdout);
    sent.viaPostoffice = { id: match[1]! };

    await sink.waitForMessages(2, 20_000);
    assert.deepEqual(sink.messages.map((m) => m.rcptTo).sort(), [['other@a.test'], ['rcpt@a.test']]);
    assert.match(sink.messages[0]!.raw.toString(), /^Subject: hedwig test$/m);
    assert.match(sink.messages[0]!.raw.toString(), /^X-Mailer: hedwig send$/m);

    const refused = await runHedwig(['send', '--via', 'postoffice', '--to', 'x@a.test', '--from', 'app@not-allowed.test'], { env });
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /sender_domain_not_allowed/);
    const unreachable = await runHedwig(['send', '--to', 'x@a.test', '--smtp', `127.0.0.1:${await freePort()}`, '--timeout', '5s'], { env });
    assert.equal(unreachable.code, 1);
  });

  it('grep follows a recipient through mailman, the post office and the worker, in time order', async () => {
    await waitFor(() => worker.logs.some((l) => l.event === 'bounced'), { timeoutMs: 20_000, what: 'the bounce to be logged' });
    const files = Object.fromEntries(
      [mailman, postoffice, worker].map((tier) => {
        const file = join(dir, `${tier.name}.log`);
        writeFileSync(file, tier.logs.map((l) => JSON.stringify(l)).join('\n') + '\n');
        return [tier.name, file];
      }),
    );

    const run = await runHedwig(['grep', 'rcpt@a.test', '--json', files.worker!, files.postoffice!, files.mailman!], { env });
    assert.equal(run.code, 0, run.stderr);
    const lines = run.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    const postofficeId = lines.find((l) => l.tier === 'mailman' && l.event === 'accepted')?.postofficeId;
    assert.ok(typeof postofficeId === 'string', 'mailman logged the post office id');
    const events = lines.map((l) => `${String(l.tier)}/${String(l.event)}`);
    for (const expected of ['mailman/accepted', 'postoffice/queued', 'worker/attempt', 'worker/delivered']) assert.ok(events.includes(expected), `${expected} in ${events.join(', ')}`);
    assert.ok(
      lines.every((l) => (l.spoolId ?? l.messageId) === sent.viaMailman!.id || l.messageId === postofficeId),
      'only lines of this message',
    );
    const times = lines.map((l) => Date.parse(String(l.time)));
    assert.deepEqual(times, [...times].sort((a, b) => a - b), 'in time order');
    assert.ok(events.indexOf('mailman/accepted') < events.indexOf('worker/delivered'));

    // The sender finds both messages; the readable format names tier and event; stdin works too.
    const bySender = await runHedwig(['grep', FROM, '-'], { env, input: [mailman, postoffice, worker].flatMap((t) => t.logs.map((l) => JSON.stringify(l))).join('\n') });
    assert.equal(bySender.code, 0, bySender.stderr);
    assert.match(bySender.stdout, /^\S+ worker\s+delivered\s+\S+ .*recipient=rcpt@a\.test/m);
    assert.match(bySender.stdout, /^\S+ worker\s+bounced\s+\S+ .*recipient=bad@b\.test/m);
    assert.ok(!/"(data|key)":/.test(bySender.stdout + run.stdout), 'no message data or key in the logs');

    const none = await runHedwig(['grep', 'nobody@a.test', files.worker!], { env });
    assert.equal(none.code, 3);
    const missing = await runHedwig(['grep', 'rcpt@a.test', join(dir, 'no-such.log')], { env });
    assert.equal(missing.code, 1);
  });

  it('status reports the message sent to the post office, done with one delivered and one bounced recipient', async () => {
    const answer = await waitFor(
      async () => {
        const run = await runHedwig(['status', sent.viaPostoffice!.id, '--json'], { env });
        return run.code === 0 ? jsonOf<{ state: string; recipients: Array<{ recipient: string; state: string; responseCode: number | null }> }>(run) : undefined;
      },
      { timeoutMs: 20_000, what: 'the status of the message' },
    );
    assert.equal(answer.state, 'done');
    assert.deepEqual(Object.fromEntries(answer.recipients.map((r) => [r.recipient, [r.state, r.responseCode]])), { 'other@a.test': ['delivered', 250], 'bad@b.test': ['bounced', 550] });
    const text = await runHedwig(['status', sent.viaPostoffice!.id], { env });
    assert.match(text.stdout, /^state\s+done$/m);
    assert.match(text.stdout, /bad@b\.test\s+bounced\s+550 5\.1\.1 no such user/);
    assert.equal((await runHedwig(['status', '00000000-0000-0000-0000-000000000000'], { env })).code, 3);
  });

  it('metrics of every tier count this set of deliveries', async () => {
    const mailmanMetrics = await scrape(ports.mailmanOps);
    assert.equal(metric(mailmanMetrics, 'hedwig_mailman_messages_accepted_total', { path: 'inline' }), 1);
    assert.equal(metric(mailmanMetrics, 'hedwig_mailman_spool_depth'), 0);

    const postofficeMetrics = await scrape(ports.postoffice);
    assert.equal(metric(postofficeMetrics, 'hedwig_postoffice_messages_accepted_total', { route: 'v1' }), 2);
    assert.equal(metric(postofficeMetrics, 'hedwig_postoffice_messages_rejected_total', { reason: 'sender_domain_not_allowed' }), 1);

    await waitFor(() => worker.logs.some((l) => l.event === 'bounced'), { timeoutMs: 20_000, what: 'the bounce to be logged' });
    const workerMetrics = await scrape(ports.workerOps);
    assert.equal(metric(workerMetrics, 'hedwig_worker_deliveries_total', { outcome: 'delivered' }), 2);
    assert.equal(metric(workerMetrics, 'hedwig_worker_deliveries_total', { outcome: 'bounced' }), 1);
    assert.equal(metric(workerMetrics, 'hedwig_worker_delivery_latency_seconds_count'), 2, 'one latency sample per delivered recipient');
    assert.equal(metric(workerMetrics, 'hedwig_worker_smtp_transactions_total', { tls: 'false' }), 3, 'a.test twice, b.test once, all in plaintext');
    assert.ok(!workerMetrics.some((s) => s.name === 'hedwig_worker_smtp_transactions_total' && s.labels.tls === 'true' && s.value > 0), 'no TLS: the sink offers no STARTTLS');
    assert.equal(metric(workerMetrics, 'hedwig_worker_dkim_signatures_total', { result: 'unsigned' }), 3, 'no DKIM key configured');
    // All three transactions go to the one sink: a kept connection may carry more than one.
    const opened = metric(workerMetrics, 'hedwig_worker_smtp_connections_total');
    const reused = workerMetrics.filter((s) => s.name === 'hedwig_worker_smtp_transactions_total' && s.labels.connection === 'reused').reduce((n, s) => n + s.value, 0);
    assert.equal(metric(workerMetrics, 'hedwig_worker_smtp_transactions_total', { connection: 'new' }), opened, 'every connection opened carried a first transaction');
    assert.equal(opened + reused, 3, 'opened plus reused connections carried the three transactions');
    assert.equal(metric(workerMetrics, 'hedwig_queue_jobs', { tube: TUBE.failed, state: 'ready' }), 1, 'the bounce is in the failed tube');
    assert.equal(metric(workerMetrics, 'hedwig_queue_jobs', { tube: TUBE.outbound }), 0);

    // The same numbers from beanstalkd itself, to be sure the gauge is not made up.
    const observer = new BeanstalkClient({ host: beanstalkd.host, port: beanstalkd.port }, { autoReconnect: false });
    await observer.connect();
    try {
      assert.equal(Number((await observer.statsTube(TUBE.failed))['current-jobs-ready']), 1);
    } finally {
      await observer.close();
    }
  });
});
