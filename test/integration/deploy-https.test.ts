/**
 * The HTTP hop over TLS, end to end with every tier a real process: msmtp -> mailman ->
 * HTTPS post office (a server certificate signed by a private test CA made with openssl)
 * -> beanstalkd -> worker -> SMTP sink. mailman trusts the post office only through
 * postoffice.caFile.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { BeanstalkClient } from '../../shared/beanstalk.ts';
import { TUBE } from '../../shared/job.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { freePort, waitFor } from '../helpers/ports.ts';
import { startSmtpSink, type SmtpSink } from '../helpers/smtp-sink.ts';
import { makeTestCa, type TestCa } from '../helpers/test-ca.ts';
import { startTier, type TierProcess } from '../helpers/tiers.ts';

const FQDN = 'app1.example.test';
const KEY = 'f00dcafe'.repeat(8);

function run(command: string, args: string[], input = ''): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(command, args, { timeout: 30_000, encoding: 'utf8' }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
    });
    child.stdin?.end(input);
  });
}

function message(subject: string): string {
  return `From: <alerts@example.test>\r\nTo: <bob@dest.test>\r\nSubject: ${subject}\r\nMessage-ID: <${subject.replace(/\W+/g, '-')}@example.test>\r\n\r\nover HTTPS\r\n`;
}

describe('mailman -> HTTPS post office with a private CA -> beanstalkd -> worker', { timeout: 120_000 }, () => {
  let ca: TestCa;
  let otherCa: TestCa;
  let beanstalkd: BeanstalkdProcess;
  let sink: SmtpSink;
  let postoffice: TierProcess;
  let worker: TierProcess;
  let postofficePort: number;
  const started: TierProcess[] = [];

  async function startMailman(caFile: string): Promise<{ mailman: TierProcess; port: number; spoolDir: string }> {
    const port = await freePort();
    const spoolDir = mkdtempSync(join(tmpdir(), 'hedwig-https-spool-'));
    const mailman = await startTier(
      'mailman',
      {
        listen: { host: '127.0.0.1', port },
        allowedNetworks: ['127.0.0.0/8'],
        postoffice: { url: `https://127.0.0.1:${postofficePort}`, fqdn: FQDN, key: KEY, caFile, timeoutMs: 5000 },
        spool: { dir: spoolDir },
        forwarder: { minBackoffMs: 200, maxBackoffMs: 1000 },
        ops: { host: '127.0.0.1', port: 0 },
      },
      { readyPort: port },
    );
    started.push(mailman);
    return { mailman, port, spoolDir };
  }

  function msmtp(port: number, body: string) {
    return run('msmtp', ['-C', '/dev/null', '--host=127.0.0.1', `--port=${port}`, '--from=alerts@example.test', '--', 'bob@dest.test'], body);
  }

  before(async () => {
    [ca, otherCa] = await Promise.all([makeTestCa(['127.0.0.1']), makeTestCa(['127.0.0.1'])]);
    beanstalkd = await startBeanstalkd({ maxJobSize: 1_000_000 });
    sink = await startSmtpSink();
    postofficePort = await freePort();
    postoffice = await startTier(
      'postoffice',
      {
        listen: { host: '127.0.0.1', port: postofficePort },
        tls: { cert: ca.cert, key: ca.key },
        beanstalk: { servers: [beanstalkd.address] },
        limits: { maxMessageBytes: 500_000, maxRecipients: 10 },
        clients: { [FQDN]: { key: KEY, senderDomains: ['example.test'] } },
      },
      { readyPort: postofficePort },
    );
    worker = await startTier('worker', {
      beanstalk: { servers: [beanstalkd.address] },
      concurrency: 1,
      ehloName: 'relay.example.test',
      routes: { 'dest.test': `127.0.0.1:${sink.port}` },
      retry: { delaysSeconds: [1], maxLifetimeSeconds: 600 },
      ops: { host: '127.0.0.1', port: 0 },
    });
  });

  after(async () => {
    await Promise.allSettled([...started, worker, postoffice].map((tier) => tier?.stop()));
    await Promise.allSettled([sink?.stop(), beanstalkd?.stop()]);
  });

  it('presents a certificate that verifies against the CA for the address it serves', async () => {
    const result = await run('openssl', ['s_client', '-connect', `127.0.0.1:${postofficePort}`, '-CAfile', ca.caCert, '-verify_ip', '127.0.0.1', '-verify_return_error', '-brief'], '');
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stderr, /Verification: OK/);
    assert.ok(postoffice.logs.some((l) => l.event === 'started' && String(l.url).startsWith('https://')));
    assert.ok(!postoffice.logs.some((l) => l.event === 'plain_http'));
  });

  it('delivers a message from msmtp when mailman trusts the private CA (postoffice.caFile)', async () => {
    const { mailman, port } = await startMailman(ca.caCert);
    const sent = message('trusted CA');
    const result = await msmtp(port, sent);
    assert.equal(result.code, 0, result.stderr);
    const [received] = await sink.waitForMessages(1, 30_000);
    assert.ok(received!.raw.toString().endsWith(sent));
    assert.equal(mailman.logs.find((l) => l.event === 'accepted')?.path, 'inline', 'forwarded during the SMTP transaction, not spooled');
  });

  it('keeps the message in its spool, and queues nothing, when the certificate comes from a CA mailman was not given', async () => {
    const probe = new BeanstalkClient({ host: '127.0.0.1', port: beanstalkd.port });
    await probe.connect();
    try {
      const queuedBefore = Number((await probe.statsTube(TUBE.outbound))['total-jobs']);
      const { mailman, port, spoolDir } = await startMailman(otherCa.caCert);
      const result = await msmtp(port, message('unknown CA'));
      assert.equal(result.code, 0, 'the client still gets 250: the message is safe in the spool');
      const spooled = await waitFor(() => mailman.logs.find((l) => l.event === 'spooled'), { what: 'spooled log line' });
      assert.match(String(spooled.reason), /certificate|signature|issuer/i);
      assert.equal(readdirSync(join(spoolDir, 'new')).length, 1);
      assert.equal(Number((await probe.statsTube(TUBE.outbound))['total-jobs']), queuedBefore, 'nothing reached beanstalkd');
    } finally {
      await probe.close();
    }
  });
});
