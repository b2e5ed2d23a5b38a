/**
 * The relay end to end, every tier a real process: msmtp / swaks / curl -> mailman ->
 * postoffice -> beanstalkd (binlog) -> worker -> the MX of the recipient domain as
 * published by a real DNS server (dnsmasq) -> a recording SMTP sink. Loopback only.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { BeanstalkClient } from '../../shared/beanstalk.ts';
import { TUBE, jobSizeFor } from '../../shared/job.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { startDns, type DnsServer } from '../helpers/dns.ts';
import { freePort, waitFor } from '../helpers/ports.ts';
import { startSmtpSink, type SinkMessage, type SmtpSink } from '../helpers/smtp-sink.ts';
import { readmeSignedCurl } from '../helpers/readme.ts';
import { startTier, type TierProcess } from '../helpers/tiers.ts';

const FQDN = 'app1.example.test';
const KEY = 'b3f1c0de'.repeat(8);
const FROM = 'alerts@example.test';

interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** `body`, when given, is written to ./message.json of a fresh working directory (as the README recipe reads it). */
function run(command: string, args: string[], options: { input?: string | Buffer; env?: NodeJS.ProcessEnv; body?: string } = {}): Promise<RunResult> {
  let cwd: string | undefined;
  if (options.body !== undefined) {
    cwd = mkdtempSync(join(tmpdir(), 'hedwig-e2e-curl-'));
    writeFileSync(join(cwd, 'message.json'), options.body);
  }
  return new Promise((resolve) => {
    const child = execFile(command, args, { timeout: 30_000, env: options.env ?? process.env, encoding: 'utf8', cwd }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
    });
    child.stdin?.end(options.input ?? '');
  });
}

/** The README's shell recipe for a signed request, run literally by bash, printing the status too. */
const SIGNED_CURL = readmeSignedCurl().replace('curl -sS ', "curl -sS -w '\\n%{http_code}' ");

function message(subject: string, to: string, body = 'Hello from hedwig.\r\n'): string {
  return [
    `From: Alerts <${FROM}>`,
    `To: <${to}>`,
    `Subject: ${subject}`,
    'Date: Mon, 23 Nov 2026 10:00:00 +0000',
    `Message-ID: <${subject.replace(/\W+/g, '-')}@example.test>`,
    'MIME-Version: 1.0',
    'Content-Type: text/plain; charset=utf-8',
    'Content-Transfer-Encoding: 8bit',
    '',
    body,
  ].join('\r\n');
}

/** Header fields the relay may prepend (trace and signature); everything else must arrive untouched. */
const ADDED_BY_RELAY = /^(received|dkim-signature):/i;

function assertArrivedIntact(received: SinkMessage, sent: string | Buffer): void {
  const sentBytes = Buffer.isBuffer(sent) ? sent : Buffer.from(sent);
  const raw = received.raw;
  assert.ok(raw.length >= sentBytes.length, 'delivered message is shorter than what was sent');
  assert.deepEqual(raw.subarray(raw.length - sentBytes.length), sentBytes, 'message bytes changed in transit');
  const prefix = raw.subarray(0, raw.length - sentBytes.length).toString('latin1');
  for (const line of prefix.split('\r\n').filter(Boolean)) {
    if (/^[ \t]/.test(line)) continue; // folded continuation of an added field
    assert.match(line, ADDED_BY_RELAY, `unexpected header added by the relay: ${line}`);
  }
}

describe('hedwig end to end', { timeout: 240_000 }, () => {
  let beanstalkd: BeanstalkdProcess;
  let dns: DnsServer;
  let sink: SmtpSink;
  let postoffice: TierProcess;
  let worker: TierProcess;
  let mailman: TierProcess;
  let postofficeConfig: Record<string, unknown>;
  let postofficePort: number;
  let mailmanPort: number;
  let queueProbe: BeanstalkClient;
  const spoolDir = mkdtempSync(join(tmpdir(), 'hedwig-e2e-spool-'));

  async function outboundTotal(): Promise<number> {
    const stats = await queueProbe.statsTube(TUBE.outbound).catch(() => ({ 'total-jobs': 0 }));
    return Number(stats['total-jobs'] ?? 0);
  }

  function startPostoffice(): Promise<TierProcess> {
    return startTier('postoffice', postofficeConfig, { readyPort: postofficePort });
  }

  before(async () => {
    const maxMessageBytes = 1_048_576;
    beanstalkd = await startBeanstalkd({ maxJobSize: jobSizeFor(maxMessageBytes, 50), fsyncMs: 0 });
    sink = await startSmtpSink({ host: '127.0.0.1' });
    // dest.test has a primary MX that refuses connections (nothing listens on 127.0.0.9) and a working secondary.
    dns = await startDns({
      mx: {
        'dest.test': [
          { host: 'mx1.dest.test', preference: 10 },
          { host: 'mx2.dest.test', preference: 20 },
        ],
      },
      hosts: { 'mx1.dest.test': ['127.0.0.9'], 'mx2.dest.test': ['127.0.0.1'], 'implicit.test': ['127.0.0.1'] },
    });
    postofficePort = await freePort();
    mailmanPort = await freePort();
    postofficeConfig = {
      listen: { host: '127.0.0.1', port: postofficePort },
      beanstalk: { servers: [beanstalkd.address] },
      limits: { maxMessageBytes, maxRecipients: 50 },
      clients: { [FQDN]: { key: KEY, senderDomains: ['example.test'] } },
    };
    postoffice = await startPostoffice();
    worker = await startTier(
      'worker',
      {
        beanstalk: { servers: [beanstalkd.address] },
        concurrency: 2,
        ehloName: 'relay.hedwig.test',
        dns: { servers: [dns.server], timeoutMs: 2000 },
        smtpPort: sink.port,
        allowPrivateAddresses: true,
        timeouts: { connectMs: 2000, greetingMs: 5000, socketMs: 10_000 },
        retry: { delaysSeconds: [5], maxLifetimeSeconds: 600 },
        ops: { host: '127.0.0.1', port: 0 },
      },
      {},
    );
    mailman = await startTier(
      'mailman',
      {
        listen: { host: '127.0.0.1', port: mailmanPort },
        allowedNetworks: ['127.0.0.0/8'],
        hostname: 'mailman.hedwig.test',
        maxMessageBytes: 1_048_576,
        postoffice: { url: `http://127.0.0.1:${postofficePort}`, fqdn: FQDN, key: KEY, timeoutMs: 3000 },
        spool: { dir: spoolDir },
        forwarder: { minBackoffMs: 200, maxBackoffMs: 1000 },
        ops: { host: '127.0.0.1', port: 0 },
      },
      { readyPort: mailmanPort },
    );
    queueProbe = new BeanstalkClient({ host: '127.0.0.1', port: beanstalkd.port });
    await queueProbe.connect();
  });

  after(async () => {
    await queueProbe?.close();
    await Promise.allSettled([mailman?.stop(), worker?.stop(), postoffice?.stop()]);
    await Promise.allSettled([sink?.stop(), dns?.stop(), beanstalkd?.stop()]);
  });

  async function deliveredTo(address: string, count = 1): Promise<SinkMessage[]> {
    return waitFor(
      () => {
        const found = sink.messages.filter((m) => m.rcptTo.includes(address));
        return found.length >= count ? found : undefined;
      },
      { timeoutMs: 30_000, what: `delivery to ${address}` },
    );
  }

  it('delivers a message from msmtp to the MX that DNS names, byte for byte, with its envelope', async () => {
    const sent = message('from msmtp', 'bob@dest.test', 'Line one\r\n.leading dot survives\r\nGrüße, 8-bit UTF-8.\r\n');
    const result = await run('msmtp', ['-C', '/dev/null', '--host=127.0.0.1', `--port=${mailmanPort}`, `--from=${FROM}`, '--', 'bob@dest.test', 'carol@dest.test'], { input: sent });
    assert.equal(result.code, 0, result.stderr);
    const [received] = await deliveredTo('bob@dest.test');
    assert.equal(received!.mailFrom, FROM);
    assert.deepEqual([...received!.rcptTo].sort(), ['bob@dest.test', 'carol@dest.test']);
    assert.equal(received!.clientHostname, 'relay.hedwig.test');
    assertArrivedIntact(received!, sent);
  });

  it('delivers a message from swaks, falling back to A records when a domain has no MX', async () => {
    const sent = message('from swaks', 'dave@implicit.test');
    const dir = mkdtempSync(join(tmpdir(), 'hedwig-e2e-swaks-'));
    // swaks sends the file as DATA and adds the final CRLF before the dot itself.
    writeFileSync(join(dir, 'm.eml'), sent.replace(/\r\n$/, ''));
    const result = await run('swaks', ['--server', `127.0.0.1:${mailmanPort}`, '--from', FROM, '--to', 'dave@implicit.test', '--data', `@${join(dir, 'm.eml')}`]);
    assert.equal(result.code, 0, result.stdout + result.stderr);
    assert.match(result.stdout, /<- {2}250 2\.0\.0 Ok: queued as \S+/);
    const [received] = await deliveredTo('dave@implicit.test');
    assert.equal(received!.mailFrom, FROM);
    assertArrivedIntact(received!, sent);
  });

  it('delivers a message posted with curl to the signed JSON API (signature made with openssl)', async () => {
    const sent = message('from curl json', 'erin@dest.test');
    const body = JSON.stringify({ mailfrom: FROM, rcpttos: ['erin@dest.test'], data: sent });
    const result = await run('bash', ['-c', SIGNED_CURL], { body, env: { PATH: process.env.PATH, FQDN, KEY, URL: `http://127.0.0.1:${postofficePort}` } });
    const [json, status] = result.stdout.trim().split('\n');
    assert.equal(status, '202', result.stdout + result.stderr);
    assert.match(JSON.parse(json!).id, /\S/);
    const [received] = await deliveredTo('erin@dest.test');
    assertArrivedIntact(received!, sent);
  });

  it('delivers a message posted with curl to the hedwig-compatible form route, answering 200', async () => {
    const sent = message('from curl form', 'frank@dest.test');
    const email = JSON.stringify({ mailfrom: FROM, rcpttos: ['frank@dest.test'], data: sent });
    const result = await run('curl', ['-sS', '-w', '\n%{http_code}', '--data-urlencode', `fqdn=${FQDN}`, '--data-urlencode', `key=${KEY}`, '--data-urlencode', `email=${email}`, `http://127.0.0.1:${postofficePort}/`]);
    assert.equal(result.stdout.trim().split('\n').pop(), '200', result.stdout);
    const [received] = await deliveredTo('frank@dest.test');
    assertArrivedIntact(received!, sent);
  });

  it('answers 401 and queues nothing for bad credentials, a tampered body or a replayed request', async () => {
    const before = await outboundTotal();
    const url = `http://127.0.0.1:${postofficePort}`;
    const body = JSON.stringify({ mailfrom: FROM, rcpttos: ['gina@dest.test'], data: message('replay', 'gina@dest.test') });

    const wrongKey = await run('bash', ['-c', SIGNED_CURL], { body, env: { PATH: process.env.PATH, FQDN, KEY: 'f'.repeat(64), URL: url } });
    assert.equal(wrongKey.stdout.trim().split('\n').pop(), '401');
    assert.equal(JSON.parse(wrongKey.stdout.trim().split('\n')[0]!).error, 'bad_signature');

    const unknownHost = await run('bash', ['-c', SIGNED_CURL], { body, env: { PATH: process.env.PATH, FQDN: 'stranger.example.test', KEY, URL: url } });
    assert.equal(unknownHost.stdout.trim().split('\n').pop(), '401');
    assert.equal(JSON.parse(unknownHost.stdout.trim().split('\n')[0]!).error, 'bad_signature');

    // Sign one body, send another: print the headers the pipeline would use, then send a tampered body with them.
    const signOnly = SIGNED_CURL.replace(/curl -sS .*$/, 'printf "%s %s" "$ts" "$sig"');
    const [ts, sig] = (await run('bash', ['-c', signOnly], { body, env: { PATH: process.env.PATH, FQDN, KEY, URL: url } })).stdout.split(' ');
    const headers = ['-H', 'content-type: application/json', '-H', `x-hedwig-fqdn: ${FQDN}`, '-H', `x-hedwig-timestamp: ${ts}`, '-H', `x-hedwig-signature: ${sig}`];
    const tampered = await run('curl', ['-sS', '-w', '\n%{http_code}', ...headers, '--data-binary', body.replace('gina@', 'mallory@'), `${url}/v1/messages`]);
    assert.equal(tampered.stdout.trim().split('\n').pop(), '401');
    assert.equal(JSON.parse(tampered.stdout.trim().split('\n')[0]!).error, 'bad_signature');

    const legacyWrong = await run('curl', ['-sS', '-w', '\n%{http_code}', '--data-urlencode', `fqdn=${FQDN}`, '--data-urlencode', 'key=wrong', '--data-urlencode', `email=${body}`, `${url}/`]);
    assert.equal(legacyWrong.stdout.trim().split('\n').pop(), '401');

    assert.equal(await outboundTotal(), before, 'a rejected request reached the queue');

    // The genuine request goes through once; sending the identical signed request again is a replay.
    const original = await run('curl', ['-sS', '-w', '\n%{http_code}', ...headers, '--data-binary', body, `${url}/v1/messages`]);
    assert.equal(original.stdout.trim().split('\n').pop(), '202', original.stdout);
    const replay = await run('curl', ['-sS', '-w', '\n%{http_code}', ...headers, '--data-binary', body, `${url}/v1/messages`]);
    assert.equal(replay.stdout.trim().split('\n').pop(), '401', replay.stdout);
    assert.equal(JSON.parse(replay.stdout.trim().split('\n')[0]!).error, 'replayed');
    assert.equal(await outboundTotal(), before + 1, 'the replay was queued');
    await deliveredTo('gina@dest.test');
  });

  it('keeps accepting from msmtp while the post office is down, and delivers once it is back', async () => {
    await postoffice.stop();
    const sent = message('while postoffice down', 'henry@dest.test');
    const result = await run('msmtp', ['-C', '/dev/null', '--host=127.0.0.1', `--port=${mailmanPort}`, `--from=${FROM}`, '--', 'henry@dest.test'], { input: sent });
    assert.equal(result.code, 0, `mailman must answer 250 while the post office is down: ${result.stderr}`);
    assert.equal(readdirSync(join(spoolDir, 'new')).length, 1, 'the message must wait in the spool');
    assert.equal(sink.messages.filter((m) => m.rcptTo.includes('henry@dest.test')).length, 0);

    postoffice = await startPostoffice();
    const [received] = await deliveredTo('henry@dest.test');
    assertArrivedIntact(received!, sent);
    await waitFor(() => readdirSync(join(spoolDir, 'new')).length === 0, { what: 'spool to drain' });
  });

  it('loses no delayed job when beanstalkd is killed and restarted from its binlog', async () => {
    // The MX greylists the first attempt, so the job waits delayed (5 s) in beanstalkd.
    sink.script = { recipients: { 'ivan@dest.test': { code: 451, message: '4.7.1 greylisted, try again later', times: 1 } } };
    const sent = message('survives beanstalkd restart', 'ivan@dest.test');
    const result = await run('msmtp', ['-C', '/dev/null', '--host=127.0.0.1', `--port=${mailmanPort}`, `--from=${FROM}`, '--', 'ivan@dest.test'], { input: sent });
    assert.equal(result.code, 0, result.stderr);
    await waitFor(async () => Number((await queueProbe.statsTube(TUBE.outbound))['current-jobs-delayed']) === 1, { timeoutMs: 20_000, what: 'the deferred job' });

    await queueProbe.close();
    await beanstalkd.kill();
    await beanstalkd.restart();
    queueProbe = new BeanstalkClient({ host: '127.0.0.1', port: beanstalkd.port });
    await queueProbe.connect();
    const stats = await queueProbe.statsTube(TUBE.outbound).catch(() => undefined);
    // Either still delayed, or already ready/reserved again if the delay ran out during the restart.
    const waiting = stats ? Number(stats['current-jobs-delayed']) + Number(stats['current-jobs-ready']) + Number(stats['current-jobs-reserved']) : 0;
    assert.ok(waiting >= 1 || sink.messages.some((m) => m.rcptTo.includes('ivan@dest.test')), 'the delayed job did not survive the restart');

    const [received] = await deliveredTo('ivan@dest.test');
    assertArrivedIntact(received!, sent);
    sink.script = {};
  });
});
