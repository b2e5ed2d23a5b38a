/**
 * Issue 12.3, 12.4 and 12.12 end to end, every tier a real process: what an enrolled host
 * can get signed, what the post office refuses, and what a submission server fixes in the
 * author fields. Messages arrive at a recording SMTP sink; signatures are judged by two
 * independent verifiers (dkimpy and mailauth), as test/helpers/worker-dkim.ts does.
 *
 * The worker holds DKIM keys for the operator's domain (example.com, also the notices'
 * domain) and a customer's domain (customer.test). Hosts:
 * - app.customer.test may use customer.test; its From: check is off, so the worker's own
 *   signing rules are what stands between it and example.com's key;
 * - web.customer.test the same with the From: check on (the default);
 * - mkt.example.com may use marketing.example.com only.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { jobSizeFor } from '../../shared/job.ts';
import { signRequest } from '../../shared/signing.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { freePort, waitFor } from '../helpers/ports.ts';
import { startSmtpSink, type SinkMessage, type SmtpSink } from '../helpers/smtp-sink.ts';
import { startTier, type TierProcess } from '../helpers/tiers.ts';
import { makeDkimKey, verifyWithDkimpy, verifyWithMailauth, type TxtRecords } from '../helpers/worker-dkim.ts';

const HOSTS = {
  app: { fqdn: 'app.customer.test', key: 'c0ffee00'.repeat(8), senderDomains: ['customer.test'], checkFromHeader: false },
  web: { fqdn: 'web.customer.test', key: 'dec0ded0'.repeat(8), senderDomains: ['customer.test'] },
  mkt: { fqdn: 'mkt.example.com', key: 'facade00'.repeat(8), senderDomains: ['marketing.example.com'] },
} as const;
type Host = (typeof HOSTS)[keyof typeof HOSTS];

function run(command: string, args: string[], input: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(command, args, { timeout: 30_000, encoding: 'utf8' }, (err, stdout, stderr) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }));
    child.stdin!.end(input);
  });
}

/** The d= of every DKIM-Signature in the header section. */
function signingDomains(raw: Buffer): string[] {
  const header = raw.toString('latin1').split('\r\n\r\n')[0]!.replace(/\r\n[ \t]+/g, ' ');
  return header
    .split('\r\n')
    .filter((line) => /^dkim-signature:/i.test(line))
    .map((line) => /[;\s]d=([^;\s]+)/.exec(line)?.[1] ?? '?');
}

describe('signing authority and author fields, end to end (issue 12.3, 12.4, 12.12)', { timeout: 180_000 }, () => {
  let beanstalkd: BeanstalkdProcess;
  let sink: SmtpSink;
  let postoffice: TierProcess;
  let worker: TierProcess;
  let mailman: TierProcess;
  let url: string;
  let mailmanPort: number;
  const records: TxtRecords = {};

  before(async () => {
    const operator = makeDkimKey('example.com', 'op2026');
    const customer = makeDkimKey('customer.test', 'cu2026');
    Object.assign(records, operator.records, customer.records);
    beanstalkd = await startBeanstalkd({ maxJobSize: jobSizeFor(1_048_576, 10) });
    sink = await startSmtpSink({ script: { recipients: { 'nobody@dest.test': { code: 550, message: '5.1.1 no such user' } } } });
    const port = await freePort();
    url = `http://127.0.0.1:${port}`;
    postoffice = await startTier(
      'postoffice',
      {
        listen: { port },
        beanstalk: { servers: [beanstalkd.address] },
        limits: { maxMessageBytes: 1_048_576, maxRecipients: 10 },
        clients: Object.fromEntries(Object.values(HOSTS).map(({ fqdn, ...client }) => [fqdn, client])),
      },
      { readyPort: port },
    );
    const route = `127.0.0.1:${sink.port}`;
    worker = await startTier('worker', {
      beanstalk: { servers: [beanstalkd.address] },
      concurrency: 2,
      ehloName: 'out.example.com',
      routes: { 'dest.test': route, 'customer.test': route, 'marketing.example.com': route },
      dkim: { 'example.com': { selector: operator.selector, keyFile: operator.keyFile }, 'customer.test': { selector: customer.selector, keyFile: customer.keyFile } },
      bounces: { from: 'MAILER-DAEMON@example.com' },
      retry: { delaysSeconds: [60], maxLifetimeSeconds: 600 },
      ops: { host: '127.0.0.1', port: await freePort() },
    });
    mailmanPort = await freePort();
    mailman = await startTier(
      'mailman',
      {
        listen: { host: '127.0.0.1', port: mailmanPort },
        allowedNetworks: ['127.0.0.0/8'],
        hostname: 'mailman.customer.test',
        postoffice: { url, fqdn: HOSTS.app.fqdn, key: HOSTS.app.key, timeoutMs: 5000 },
        spool: { dir: mkdtempSync(join(tmpdir(), 'hedwig-authority-spool-')) },
        ops: { host: '127.0.0.1', port: await freePort() },
      },
      { readyPort: mailmanPort },
    );
  });

  after(async () => {
    await Promise.allSettled([mailman?.stop(), worker?.stop(), postoffice?.stop()]);
    await Promise.allSettled([sink?.stop(), beanstalkd?.stop()]);
  });

  async function post(host: Host, mailfrom: string, rcpt: string, data: string): Promise<{ status: number; body: Record<string, unknown> }> {
    const payload = JSON.stringify({ mailfrom, rcpttos: [rcpt], data });
    const headers = signRequest(host.key, { method: 'POST', path: '/v1/messages', fqdn: host.fqdn, body: payload });
    const res = await fetch(`${url}/v1/messages`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: payload, signal: AbortSignal.timeout(15_000) });
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  }

  function arrival(rcpt: string, from?: string): Promise<SinkMessage> {
    return waitFor(() => sink.messages.find((m) => m.rcptTo.includes(rcpt) && (from === undefined || m.mailFrom === from)), { timeoutMs: 30_000, what: `a message to ${rcpt}` });
  }

  async function assertVerifies(raw: Buffer, domain: string): Promise<void> {
    assert.deepEqual(signingDomains(raw), [domain]);
    const python = await verifyWithDkimpy(raw, records);
    assert.equal(python.pass, true, `dkimpy: ${python.detail}`);
    const node = await verifyWithMailauth(raw, records);
    assert.equal(node.pass, true, `mailauth: ${node.detail}`);
    assert.equal(node.domain, domain);
  }

  it("a customer's null-sender mail through its mailman (MAIL FROM:<>) with From: security@example.com gets no example.com signature", async () => {
    const message = 'From: Security Team <security@example.com>\r\nTo: victim@dest.test\r\nSubject: Reset your password\r\n\r\nclick here\r\n';
    const result = await run('swaks', ['--server', `127.0.0.1:${mailmanPort}`, '--from', '<>', '--to', 'victim@dest.test', '--data', '-'], message);
    assert.equal(result.code, 0, result.stdout + result.stderr);
    const got = await arrival('victim@dest.test');
    assert.equal(got.mailFrom, '');
    assert.deepEqual(signingDomains(got.raw), [], 'unsigned: the host may not use example.com');
  });

  it("a customer's null-sender mail with its own From: domain is signed for that domain and verifies", async () => {
    const answer = await post(HOSTS.app, '', 'auto@dest.test', 'From: Support <support@customer.test>\r\nTo: auto@dest.test\r\nSubject: Auto-reply\r\nAuto-Submitted: auto-replied\r\n\r\nout of office\r\n');
    assert.equal(answer.status, 202, JSON.stringify(answer.body));
    await assertVerifies((await arrival('auto@dest.test')).raw, 'customer.test');
  });

  it('with the From: check on (the default), the same forgery is refused 403 naming data.From', async () => {
    const answer = await post(HOSTS.web, '', 'victim2@dest.test', 'From: security@example.com\r\nTo: victim2@dest.test\r\nSubject: x\r\n\r\nx\r\n');
    assert.equal(answer.status, 403);
    assert.deepEqual({ error: answer.body.error, field: answer.body.field }, { error: 'from_domain_not_allowed', field: 'data.From' });
  });

  it('a host allowed marketing.example.com gets no d=example.com signature, and From: ceo@example.com is refused 403', async () => {
    const own = await post(HOSTS.mkt, 'news@marketing.example.com', 'reader@dest.test', 'From: News <news@marketing.example.com>\r\nTo: reader@dest.test\r\nSubject: Offers\r\n\r\nbuy\r\n');
    assert.equal(own.status, 202, JSON.stringify(own.body));
    assert.deepEqual(signingDomains((await arrival('reader@dest.test')).raw), [], "the parent's key needs the parent");

    const ceo = await post(HOSTS.mkt, 'news@marketing.example.com', 'cfo@dest.test', 'From: CEO <ceo@example.com>\r\nTo: cfo@dest.test\r\nSubject: Wire transfer\r\n\r\nurgent\r\n');
    assert.equal(ceo.status, 403);
    assert.deepEqual({ error: ceo.body.error, field: ceo.body.field }, { error: 'from_domain_not_allowed', field: 'data.From' });
    const sender = await post(HOSTS.mkt, 'news@marketing.example.com', 'cfo@dest.test', 'From: news@marketing.example.com\r\nSender: ceo@example.com\r\n\r\nx\r\n');
    assert.deepEqual({ status: sender.status, field: sender.body.field }, { status: 403, field: 'data.Sender' });
  });

  it("the worker's own bounce is still signed for the notices' domain (example.com) and verifies", async () => {
    const answer = await post(HOSTS.app, 'app@customer.test', 'nobody@dest.test', 'From: app@customer.test\r\nTo: nobody@dest.test\r\nSubject: to nobody\r\n\r\nx\r\n');
    assert.equal(answer.status, 202, JSON.stringify(answer.body));
    const bounce = await arrival('app@customer.test', '');
    assert.match(bounce.raw.toString('latin1'), /^From: "?Mail Delivery System"? <MAILER-DAEMON@example\.com>\r$/m);
    await assertVerifies(bounce.raw, 'example.com');
  });

  it('cron through msmtp (From: root (Cron Daemon), To: root) arrives with qualified addresses and a signature that verifies', async () => {
    const cron = 'From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@app> /usr/local/bin/backup\nMIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: 8bit\nX-Cron-Env: <SHELL=/bin/sh>\n\nbackup done\n';
    const result = await run('msmtp', ['-C', '/dev/null', '--host=127.0.0.1', `--port=${mailmanPort}`, '--from=cron@customer.test', '--', 'ops@dest.test'], cron);
    assert.equal(result.code, 0, result.stderr);
    const got = await arrival('ops@dest.test');
    const text = got.raw.toString('latin1');
    assert.match(text, /^From: root@customer\.test \(Cron Daemon\)\r$/m);
    assert.match(text, /^To: root@customer\.test\r$/m);
    assert.match(text, /\r\n\r\nbackup done\r\n$/);
    await assertVerifies(got.raw, 'customer.test');
  });

  it('a message without From: (as the README curl examples used to send) gets From: <envelope sender> and verifies', async () => {
    const answer = await post(HOSTS.app, 'app@customer.test', 'nofrom@dest.test', 'Subject: hi\r\n\r\nhello\r\n');
    assert.equal(answer.status, 202, JSON.stringify(answer.body));
    const got = await arrival('nofrom@dest.test');
    assert.match(got.raw.toString('latin1'), /^From: app@customer\.test\r$/m);
    await assertVerifies(got.raw, 'customer.test');
  });
});
