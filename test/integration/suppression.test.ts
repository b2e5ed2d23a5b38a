import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { postofficeConfigSchema } from '../../postoffice/config.ts';
import { startPostoffice, type RunningPostoffice } from '../../postoffice/server.ts';
import { signRequest } from '../../shared/signing.ts';
import { startWorker, type RunningWorker } from '../../worker/server.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { jsonOf, runHedwig } from '../helpers/cli.ts';
import { run } from '../helpers/mailman-harness.ts';
import { freePort, waitFor } from '../helpers/ports.ts';
import { startSmtpSink, type SmtpSink } from '../helpers/smtp-sink.ts';
import { testStoreUrl } from '../helpers/store.ts';
import { startTier, type TierProcess } from '../helpers/tiers.ts';
import { testWorkerConfig } from '../helpers/worker-config.ts';

/**
 * The suppression list end to end: a recipient that bounces with 550 5.1.1 is put on the list
 * by the worker; the post office then leaves it out of submissions (202 says which, 422 when
 * nobody is left), tells the webhook and the history, except for an exempt host; the CLI
 * manages the list; mailman tells an SMTP client still connected which recipients were left out
 * (250 ...; suppressed: ...) and refuses the message when nobody is left (550 5.1.1).
 */

const FQDN = 'app1.example.com';
const EXEMPT = 'app2.example.com';
const KEY = 'k'.repeat(40);
const SECRET = 's'.repeat(40);

describe('suppression list', { timeout: 120_000 }, () => {
  let beanstalkd: BeanstalkdProcess;
  let sink: SmtpSink;
  let postoffice: RunningPostoffice;
  let worker: RunningWorker;
  let receiver: Server;
  let mailman: TierProcess | undefined;
  const events: Array<Record<string, unknown>> = [];
  const env = { HEDWIG_STORE_URL: testStoreUrl() };

  async function submit(rcpttos: string[], fqdn = FQDN): Promise<{ status: number; body: Record<string, unknown> }> {
    const body = JSON.stringify({ mailfrom: 'app@example.com', rcpttos, data: 'Subject: s\r\n\r\nhello\r\n' });
    const headers = signRequest(KEY, { method: 'POST', path: '/v1/messages', fqdn, body });
    const res = await fetch(`${postoffice.url}/v1/messages`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body, signal: AbortSignal.timeout(10_000) });
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  }

  async function status(id: string): Promise<{ recipients: Array<{ recipient: string; state: string }> }> {
    const path = `/v1/messages/${id}`;
    const res = await fetch(`${postoffice.url}${path}`, { headers: signRequest(KEY, { method: 'GET', path, fqdn: FQDN, body: '' }) });
    return (await res.json()) as { recipients: Array<{ recipient: string; state: string }> };
  }

  before(async () => {
    sink = await startSmtpSink({ script: { recipients: { 'gone@ok.test': { code: 550, message: '5.1.1 <gone@ok.test>: no such user' } } } });
    beanstalkd = await startBeanstalkd();
    const hookPort = await freePort();
    receiver = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        events.push(JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, unknown>);
        res.writeHead(204).end();
      });
    });
    await new Promise<void>((resolve) => receiver.listen(hookPort, '127.0.0.1', resolve));
    postoffice = await startPostoffice(
      postofficeConfigSchema.parse({
        store: { url: testStoreUrl() },
        listen: { host: '127.0.0.1', port: await freePort() },
        beanstalk: { servers: [beanstalkd.address] },
        clients: { [FQDN]: { key: KEY, senderDomains: ['example.com'] }, [EXEMPT]: { key: KEY, senderDomains: ['example.com'] } },
        suppression: { exemptHosts: [EXEMPT] },
      }),
      { logger: pino({ level: 'silent' }), registry: new Registry() },
    );
    worker = await startWorker(
      testWorkerConfig(beanstalkd.address, {
        concurrency: 2,
        routes: { 'ok.test': `${sink.host}:${sink.port}` },
        webhook: { url: `http://127.0.0.1:${hookPort}/hook`, secret: SECRET, timeoutMs: 2000, retryDelaysSeconds: [1] },
      }),
      { logger: pino({ level: 'silent' }), registry: new Registry() },
    );
  });

  after(async () => {
    await mailman?.stop();
    await worker?.stop();
    await postoffice?.stop();
    await beanstalkd?.stop();
    await sink?.stop();
    await new Promise((r) => receiver?.close(r));
  });

  const delivered = (recipient: string) => sink.messages.filter((m) => m.rcptTo.includes(recipient)).length;

  it('puts a recipient that bounced with 5.1.1 on the list and leaves it out of later submissions', async () => {
    const first = await submit(['gone@ok.test', 'fine@ok.test']);
    assert.equal(first.status, 202);
    assert.equal(first.body.suppressed, undefined, 'nothing is suppressed yet');
    const check = await waitFor(
      async () => {
        const run = await runHedwig(['suppression', 'check', 'gone@ok.test', '--json'], { env });
        return run.code === 0 ? run : undefined;
      },
      { timeoutMs: 20_000, intervalMs: 300, what: 'gone@ok.test on the suppression list' },
    );
    const [entry] = jsonOf<Array<{ suppressed: boolean; entry: { source: string; enhancedCode: string; expiresAt: string } }>>(check);
    assert.equal(entry?.entry.source, 'bounce');
    assert.equal(entry?.entry.enhancedCode, '5.1.1');
    const days = (Date.parse(entry!.entry.expiresAt) - Date.now()) / 86_400_000;
    assert.ok(days > 29.9 && days <= 30, `suppressed for 30 days by default (${days})`);

    const second = await submit(['Gone@OK.test', 'fine2@ok.test']);
    assert.equal(second.status, 202);
    assert.deepEqual(second.body.suppressed, ['Gone@OK.test']);
    await waitFor(() => delivered('fine2@ok.test') === 1, { timeoutMs: 15_000, what: 'the other recipient delivered' });
    assert.equal(delivered('gone@ok.test'), 0, 'the sink never accepted gone@ok.test');
    assert.ok(!sink.messages.some((m) => m.rcptTo.some((r) => r.toLowerCase() === 'gone@ok.test')), 'and it was never offered again');
    const history = await waitFor(async () => {
      const s = await status(String(second.body.id));
      return s.recipients.some((r) => r.state === 'delivered') ? s : undefined;
    }, { timeoutMs: 10_000, what: 'the history of the message' });
    assert.deepEqual(history.recipients.map((r) => [r.recipient, r.state]).sort(), [['Gone@OK.test', 'suppressed'], ['fine2@ok.test', 'delivered']]);

    const refused = await submit(['gone@ok.test']);
    assert.equal(refused.status, 422);
    assert.equal(refused.body.error, 'recipients_suppressed');
    assert.deepEqual(refused.body.suppressed, ['gone@ok.test']);

    const exempt = await submit(['gone@ok.test'], EXEMPT);
    assert.equal(exempt.status, 202, 'an exempt host is never checked');
    assert.equal(exempt.body.suppressed, undefined);

    await waitFor(() => events.filter((e) => e.type === 'suppressed').length >= 2, { timeoutMs: 15_000, what: 'suppressed webhook events' });
    const suppressedEvents = events.filter((e) => e.type === 'suppressed');
    assert.deepEqual(suppressedEvents.map((e) => [e.recipient, e.messageId === '' ? 'none' : 'some']).sort(), [['Gone@OK.test', 'some'], ['gone@ok.test', 'none']]);
    assert.equal(suppressedEvents[0]!.enhancedCode, '5.1.1');
  });

  it('lists, adds, checks and removes entries with the CLI, with its exit codes', async () => {
    const listed = await runHedwig(['suppression', 'list', '--json'], { env });
    assert.equal(listed.code, 0, listed.stderr);
    assert.deepEqual(jsonOf<Array<{ address: string; source: string }>>(listed).map((e) => [e.address, e.source]), [['gone@ok.test', 'bounce']]);

    assert.equal((await runHedwig(['suppression', 'add', 'Manual@Example.org', '--ttl', '1d', '--reason', 'asked to stop'], { env })).code, 0);
    const check = await runHedwig(['suppression', 'check', 'manual@example.org', 'nobody@example.org'], { env });
    assert.equal(check.code, 0);
    assert.match(check.stdout, /^manual@example.org: suppressed \(manual, until .+\): asked to stop$/m);
    assert.match(check.stdout, /^nobody@example.org: not suppressed$/m);
    assert.equal((await runHedwig(['suppression', 'list', '--source', 'manual', '--json'], { env }).then(jsonOf<unknown[]>)).length, 1);

    const manualRefused = await submit(['manual@example.org']);
    assert.equal(manualRefused.status, 422, 'a manual entry suppresses like a bounce');

    assert.equal((await runHedwig(['suppression', 'remove', 'manual@example.org'], { env })).code, 0);
    assert.equal((await runHedwig(['suppression', 'remove', 'manual@example.org'], { env })).code, 3, 'not listed any more');
    assert.equal((await runHedwig(['suppression', 'check', 'manual@example.org'], { env })).code, 3);
    assert.equal((await submit(['manual@example.org'])).status, 202, 'removed: queued again');
    assert.equal((await runHedwig(['suppression', 'add', 'not an address'], { env })).code, 2);
    const unreachable = await runHedwig(['suppression', 'list', '--store', `postgres://hedwig@127.0.0.1:${await freePort()}/x`], { env });
    assert.equal(unreachable.code, 1);
    assert.match(unreachable.stderr, /--store: cannot open postgres:\/\/hedwig@127\.0\.0\.1:\d+\/x: ECONNREFUSED/);
  });

  it('mailman names the suppressed recipients in its 250 to a connected client (swaks), and answers 550 5.1.1 without spooling when nobody is left', async () => {
    for (const address of ['blocked1@ok.test', 'blocked2@ok.test']) {
      assert.equal((await runHedwig(['suppression', 'add', address, '--ttl', '1d', '--reason', 'test'], { env })).code, 0);
    }
    const spoolDir = mkdtempSync(join(tmpdir(), 'hedwig-suppression-spool-'));
    const port = await freePort();
    mailman = await startTier(
      'mailman',
      {
        listen: { host: '127.0.0.1', port },
        allowedNetworks: ['127.0.0.0/8'],
        hostname: 'mailman.hedwig.test',
        postoffice: { url: postoffice.url, fqdn: FQDN, key: KEY, timeoutMs: 5000 },
        spool: { dir: spoolDir },
        ops: { host: '127.0.0.1', port: await freePort() },
      },
      { readyPort: port },
    );
    const swaks = (to: string, tag: string) =>
      run('swaks', ['--server', `127.0.0.1:${port}`, '--from', 'app@example.com', '--to', to, '--header', `Subject: ${tag}`, '--body', 'hello', '--timeout', '15']);
    // The reply to the final dot: the last in swaks's transcript (`<-  250 ...`, `<** 550 ...`) before QUIT's 221.
    const finalReply = (transcript: string) =>
      transcript
        .split('\n')
        .map((l) => /^ *<[-~*]+ +(\d{3}[ -].*)$/.exec(l)?.[1])
        .filter((l): l is string => l !== undefined && !l.startsWith('221'))
        .at(-1);

    const partial = await swaks('blocked1@ok.test,kept@ok.test,Blocked2@OK.test', 'partly-suppressed');
    assert.equal(partial.code, 0, partial.stdout + partial.stderr);
    assert.match(finalReply(partial.stdout) ?? '', /^250 2\.0\.0 Ok: queued as \S+; suppressed: blocked1@ok\.test, Blocked2@OK\.test$/);
    await waitFor(() => delivered('kept@ok.test') === 1, { timeoutMs: 15_000, what: 'the recipient not suppressed delivered' });
    assert.equal(delivered('blocked1@ok.test') + delivered('blocked2@ok.test'), 0);

    const refused = await swaks('blocked1@ok.test,blocked2@ok.test', 'all-suppressed');
    assert.notEqual(refused.code, 0, 'swaks reports the refusal');
    assert.match(finalReply(refused.stdout) ?? '', /^550 5\.1\.1 Every recipient is on the suppression list: blocked1@ok\.test, blocked2@ok\.test$/);
    const rejected = await waitFor(() => mailman!.logs.find((l) => l.event === 'rejected' && l.reason === 'recipients_suppressed'), { what: "mailman's rejected line" });
    assert.deepEqual(rejected.rcpttos, ['blocked1@ok.test', 'blocked2@ok.test']);
    const files = (folder: string) => (existsSync(join(spoolDir, folder)) ? readdirSync(join(spoolDir, folder)) : []);
    assert.deepEqual([...files('new'), ...files('failed')], [], 'nothing spooled: the client was told');

    // More than a line's worth: the first few are named, then a count.
    const many = Array.from({ length: 8 }, (_, i) => `many-${i}@ok.test`);
    for (const address of many) assert.equal((await runHedwig(['suppression', 'add', address, '--ttl', '1d'], { env })).code, 0);
    const capped = await swaks([...many, 'kept2@ok.test'].join(','), 'many-suppressed');
    assert.equal(capped.code, 0, capped.stdout + capped.stderr);
    assert.match(finalReply(capped.stdout) ?? '', /^250 2\.0\.0 Ok: queued as \S+; suppressed: many-0@ok\.test, many-1@ok\.test, many-2@ok\.test and 5 more$/);
  });
});
