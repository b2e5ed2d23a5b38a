/**
 * SMTP AUTH on mailman (issue 16.5) with real clients, every tier its own process:
 * msmtp (`--auth=on`, over STARTTLS), swaks (`--auth PLAIN` / `LOGIN`), Python's smtplib
 * `login()` and a hand-driven dialogue -> mailman -> post office -> beanstalkd -> worker -> sink.
 *
 * The client addresses are all loopback, each with a role (mailman binds 127.0.0.1; every
 * client picks its source address):
 *   127.0.0.1, 127.0.0.6  inside allowedNetworks, AUTH offered in plaintext (plaintextNetworks)
 *   127.0.0.2, .4, .5     outside allowedNetworks, AUTH offered in plaintext: may send only after AUTH
 *   127.0.0.3             outside both: AUTH only after STARTTLS
 * so the policy for clients off the loopback (TLS first) is tested without leaving it.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { hashPassword } from '../../mailman/password-hash.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { CHILD_TIMEOUT_MS, SmtpDialog, type ChildResult } from '../helpers/mailman-harness.ts';
import { freePort, waitFor } from '../helpers/ports.ts';
import { startSmtpSink, type SmtpSink } from '../helpers/smtp-sink.ts';
import { makeTestCa, type TestCa } from '../helpers/test-ca.ts';
import { startTier, type TierProcess } from '../helpers/tiers.ts';

const FQDN = 'app1.example.test';
const KEY = 'a11ce5ed'.repeat(8);
const APP_PASSWORD = 'app-Pa55word-c2lkZWNhcg';
const CRON_PASSWORD = 'cron-secret-7f3a9e1b-d00d';
const WRONG_PASSWORD = 'wrong-guess-ZmFsc2Vob29k';
const dir = mkdtempSync(join(tmpdir(), 'hedwig-mailman-auth-'));

/** A client process with no stdin (none of them reads it; a pipe would race their exit: EPIPE). */
function run(command: string, args: string[]): Promise<ChildResult> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: CHILD_TIMEOUT_MS });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', (err) => resolve({ code: err.message, stdout, stderr }));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

function plain(user: string, password: string): string {
  return Buffer.from(`\0${user}\0${password}`).toString('base64');
}

function messageFile(tag: string, from: string): string {
  const file = join(dir, `${tag}.eml`);
  writeFileSync(file, `From: ${from}\r\nTo: b@dest.test\r\nSubject: ${tag}\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <${tag}@example.test>\r\n\r\nhello from ${tag}\r\n`);
  return file;
}

function passwordFile(name: string, password: string): string {
  const file = join(dir, `${name}.password`);
  writeFileSync(file, password, { mode: 0o600 });
  return file;
}

/** Python's smtplib from `source`: EHLO, login() (which tries PLAIN, then LOGIN), sendmail; JSON of what it saw. */
const PYTHON = `
import json, smtplib, sys
host, port, source, user, password, sender, tag = sys.argv[1:8]
out = {}
s = smtplib.SMTP(host, int(port), source_address=(source, 0), timeout=15)
s.ehlo('python.test')
out['auth'] = s.esmtp_features.get('auth', '').strip()
try:
    code, text = s.login(user, password)
    out['login'] = [code, text.decode()]
    msg = 'From: %s\\r\\nTo: b@dest.test\\r\\nSubject: %s\\r\\nMessage-ID: <%s@example.test>\\r\\n\\r\\nhello\\r\\n' % (sender, tag, tag)
    out['refused'] = s.sendmail(sender, ['b@dest.test'], msg)
except smtplib.SMTPAuthenticationError as e:
    out['login'] = [e.smtp_code, e.smtp_error.decode()]
s.quit()
print(json.dumps(out))
`;

interface PythonResult {
  auth?: string;
  login: [number, string];
  refused?: Record<string, unknown>;
}

describe('mailman SMTP AUTH with real clients', { timeout: 240_000 }, () => {
  let beanstalkd: BeanstalkdProcess;
  let sink: SmtpSink;
  let postoffice: TierProcess;
  let worker: TierProcess;
  let mailman: TierProcess;
  let port: number;
  let opsPort: number;
  let ca: TestCa;

  const swaks = (source: string, args: string[]) => run('swaks', ['--server', `127.0.0.1:${port}`, '--local-interface', source, '--to', 'b@dest.test', ...args]);
  const msmtp = (source: string, user: string, pwFile: string, from: string, file: string, extra: string[] = []) =>
    run('sh', ['-c', `msmtp -C /dev/null --host=127.0.0.1 --port=${port} --source-ip=${source} --auth=on --user=${user} --passwordeval='cat ${pwFile}' --from=${from} ${extra.join(' ')} -- b@dest.test < ${file}`]);
  const python = async (source: string, user: string, password: string, sender: string, tag: string): Promise<PythonResult> => {
    const result = await run('python3', ['-c', PYTHON, '127.0.0.1', String(port), source, user, password, sender, tag]);
    assert.equal(result.code, 0, result.stderr);
    return JSON.parse(result.stdout) as PythonResult;
  };
  const delivered = (tag: string) => sink.messages.some((m) => m.raw.includes(`Message-ID: <${tag}@example.test>`));
  const dialog = async (source: string): Promise<SmtpDialog> => {
    const d = await SmtpDialog.open(port, '127.0.0.1', source);
    assert.match(await d.reply(), /^220 /);
    return d;
  };

  before(async () => {
    ca = await makeTestCa(['127.0.0.1', 'localhost']);
    beanstalkd = await startBeanstalkd({ fsyncMs: 0 });
    sink = await startSmtpSink();
    const postofficePort = await freePort();
    postoffice = await startTier(
      'postoffice',
      {
        listen: { host: '127.0.0.1', port: postofficePort },
        beanstalk: { servers: [beanstalkd.address] },
        clients: { [FQDN]: { key: KEY, senderDomains: ['example.test', 'alerts.example.test'] } },
      },
      { readyPort: postofficePort },
    );
    worker = await startTier('worker', {
      beanstalk: { servers: [beanstalkd.address] },
      ehloName: 'relay.hedwig.test',
      routes: { 'dest.test': `127.0.0.1:${sink.port}` },
      allowPrivateAddresses: true,
      retry: { delaysSeconds: [2], maxLifetimeSeconds: 600 },
      ops: { host: '127.0.0.1', port: 0 },
    });
    port = await freePort();
    opsPort = await freePort();
    mailman = await startTier(
      'mailman',
      {
        listen: { host: '127.0.0.1', port },
        allowedNetworks: ['127.0.0.1/32', '127.0.0.6/32'],
        hostname: 'mailman.hedwig.test',
        tls: { cert: ca.cert, key: ca.key },
        auth: {
          users: {
            app: { passwordHash: hashPassword(APP_PASSWORD), allowedSenders: ['app@example.test', '@alerts.example.test'] },
            cron: { passwordHash: hashPassword(CRON_PASSWORD) },
          },
          maxFailuresPerAddress: 3,
          windowSeconds: 120,
          plaintextNetworks: ['127.0.0.1/32', '127.0.0.2/32', '127.0.0.4/32', '127.0.0.5/32', '127.0.0.6/32'],
        },
        postoffice: { url: `http://127.0.0.1:${postofficePort}`, fqdn: FQDN, key: KEY, timeoutMs: 5000 },
        spool: { dir: join(dir, 'spool') },
        ops: { host: '127.0.0.1', port: opsPort },
      },
      { readyPort: port },
    );
  });

  after(async () => {
    await mailman?.stop();
    await worker?.stop();
    await postoffice?.stop();
    await beanstalkd?.stop();
    await sink?.stop();
  });

  it('msmtp --auth=on over STARTTLS: from inside allowedNetworks, and from outside where AUTH needs TLS; --auth=plain on the loopback without TLS', async () => {
    const cronPw = passwordFile('cron', CRON_PASSWORD);
    const tlsArgs = ['--tls=on', '--tls-starttls=on', `--tls-trust-file=${ca.caCert}`];
    const inside = await msmtp('127.0.0.1', 'cron', cronPw, 'cron@example.test', messageFile('msmtp-inside', 'cron@example.test'), tlsArgs);
    assert.equal(inside.code, 0, inside.stderr);
    const outside = await msmtp('127.0.0.3', 'cron', cronPw, 'cron@example.test', messageFile('msmtp-outside', 'cron@example.test'), tlsArgs);
    assert.equal(outside.code, 0, outside.stderr);
    // On the loopback without TLS msmtp's `auth on` will not send a password in clear (its own
    // rule); naming the method does, and mailman takes it there (README: SMTP AUTH).
    const refusedByMsmtp = await msmtp('127.0.0.1', 'cron', cronPw, 'cron@example.test', messageFile('msmtp-auth-on-plaintext', 'cron@example.test'));
    assert.match(refusedByMsmtp.stderr, /cannot use a secure authentication method/);
    const loopback = await msmtp('127.0.0.1', 'cron', cronPw, 'cron@example.test', messageFile('msmtp-loopback-plain', 'cron@example.test'), ['--auth=plain']);
    assert.equal(loopback.code, 0, loopback.stderr);
    // Without TLS, 127.0.0.3 is not offered AUTH at all: msmtp cannot authenticate.
    const plaintext = await msmtp('127.0.0.3', 'cron', cronPw, 'cron@example.test', messageFile('msmtp-plaintext', 'cron@example.test'), ['--auth=plain']);
    assert.notEqual(plaintext.code, 0);
    assert.match(plaintext.stderr, /538 5\.7\.11|does not support authentication/i, plaintext.stderr);
    await waitFor(() => delivered('msmtp-inside') && delivered('msmtp-outside') && delivered('msmtp-loopback-plain'), { timeoutMs: 60_000, what: 'the msmtp messages at the sink' });
    assert.equal(delivered('msmtp-plaintext'), false);
  });

  it('swaks --auth PLAIN and LOGIN: a client outside allowedNetworks gets 530 5.7.0 at MAIL FROM until it authenticates', async () => {
    const anonymous = await swaks('127.0.0.2', ['--from', 'cron@example.test', '--data', `@${messageFile('swaks-anonymous', 'cron@example.test')}`]);
    assert.notEqual(anonymous.code, 0);
    assert.match(anonymous.stdout, /<\*\* +530 5\.7\.0 Authentication required/, anonymous.stdout);
    const viaPlain = await swaks('127.0.0.2', ['--auth', 'PLAIN', '--auth-user', 'cron', '--auth-password', CRON_PASSWORD, '--from', 'cron@example.test', '--data', `@${messageFile('swaks-plain', 'cron@example.test')}`]);
    assert.equal(viaPlain.code, 0, viaPlain.stdout);
    assert.match(viaPlain.stdout, /<- +235 2\.7\.0 Authentication successful/);
    const viaLogin = await swaks('127.0.0.2', ['--auth', 'LOGIN', '--auth-user', 'app', '--auth-password', APP_PASSWORD, '--from', 'app@example.test', '--data', `@${messageFile('swaks-login', 'app@example.test')}`]);
    assert.equal(viaLogin.code, 0, viaLogin.stdout);
    await waitFor(() => delivered('swaks-plain') && delivered('swaks-login'), { timeoutMs: 60_000, what: 'both swaks messages at the sink' });
    assert.equal(delivered('swaks-anonymous'), false);
  });

  it('Python smtplib login() works, and a wrong password is 535 5.7.8 to the client', async () => {
    const ok = await python('127.0.0.2', 'app', APP_PASSWORD, 'alerts@alerts.example.test', 'python-login');
    assert.equal(ok.auth, 'PLAIN LOGIN');
    assert.deepEqual(ok.login, [235, '2.7.0 Authentication successful']);
    assert.deepEqual(ok.refused, {});
    const wrong = await python('127.0.0.5', 'app', WRONG_PASSWORD, 'app@example.test', 'python-wrong');
    assert.deepEqual(wrong.login, [535, '5.7.8 Authentication credentials invalid']);
    const swaksWrong = await swaks('127.0.0.1', ['--auth', 'PLAIN', '--auth-user', 'cron', '--auth-password', WRONG_PASSWORD, '--from', 'cron@example.test', '--quit-after', 'AUTH']);
    assert.notEqual(swaksWrong.code, 0);
    assert.match(swaksWrong.stdout, /<\*\* +535 5\.7\.8 Authentication credentials invalid/, swaksWrong.stdout);
    await waitFor(() => delivered('python-login'), { timeoutMs: 60_000, what: 'the smtplib message at the sink' });
  });

  it('a user limited to senders gets 553 5.7.1 for any other sender', async () => {
    const other = await swaks('127.0.0.1', ['--auth', 'PLAIN', '--auth-user', 'app', '--auth-password', APP_PASSWORD, '--from', 'other@example.test', '--data', `@${messageFile('swaks-other-sender', 'other@example.test')}`]);
    assert.notEqual(other.code, 0);
    assert.match(other.stdout, /<\*\* +553 5\.7\.1 Sender address not permitted for this user/, other.stdout);
    const domain = await swaks('127.0.0.1', ['--auth', 'LOGIN', '--auth-user', 'app', '--auth-password', APP_PASSWORD, '--from', 'pager@alerts.example.test', '--data', `@${messageFile('swaks-domain-sender', 'pager@alerts.example.test')}`]);
    assert.equal(domain.code, 0, domain.stdout);
    // The same address unauthenticated, from inside allowedNetworks: no user, no limit.
    const anonymous = await swaks('127.0.0.1', ['--from', 'other@example.test', '--data', `@${messageFile('swaks-inside-anonymous', 'other@example.test')}`]);
    assert.equal(anonymous.code, 0, anonymous.stdout);
    await waitFor(() => delivered('swaks-domain-sender') && delivered('swaks-inside-anonymous'), { timeoutMs: 60_000, what: 'the permitted messages at the sink' });
    assert.equal(delivered('swaks-other-sender'), false);
  });

  it('the dialogue: AUTH advertised where it may be used, 538 5.7.11 before STARTTLS elsewhere, 503 5.5.1 twice, 504 5.5.4 unknown mechanism', async () => {
    const inside = await dialog('127.0.0.1');
    assert.match(await inside.command('AUTH PLAIN'), /^503 /, 'EHLO first');
    const ehlo = await inside.command('EHLO client.test');
    assert.match(ehlo, /^250-AUTH PLAIN LOGIN$/m);
    assert.match(ehlo, /^250-STARTTLS$/m);
    assert.equal(await inside.command('AUTH CRAM-MD5'), '504 5.5.4 Unrecognized authentication type');
    assert.equal(await inside.command('AUTH PLAIN'), '334');
    assert.equal(await inside.command('*'), '501 5.7.0 Authentication aborted');
    assert.equal(await inside.command(`AUTH PLAIN ${plain('cron', CRON_PASSWORD)}`), '235 2.7.0 Authentication successful');
    assert.equal(await inside.command(`AUTH PLAIN ${plain('cron', CRON_PASSWORD)}`), '503 5.5.1 Already authenticated');
    inside.close();

    const outside = await dialog('127.0.0.3');
    const outsideEhlo = await outside.command('EHLO client.test');
    assert.doesNotMatch(outsideEhlo, /AUTH/, 'no AUTH before STARTTLS off the plaintext networks');
    assert.match(outsideEhlo, /^250-STARTTLS$/m);
    assert.equal(await outside.command(`AUTH PLAIN ${plain('cron', CRON_PASSWORD)}`), '538 5.7.11 Encryption required for requested authentication mechanism');
    assert.equal(await outside.command('MAIL FROM:<cron@example.test>'), '530 5.7.0 Authentication required');
    assert.match(await outside.command('QUIT'), /^221 /);
    outside.close();
  });

  it('rate-limits failures per address: 454 4.7.0 inside allowedNetworks (which may still send), 421 4.7.0 and closed outside, also at connect', async () => {
    const inside = await dialog('127.0.0.6');
    await inside.command('EHLO client.test');
    for (let i = 0; i < 3; i++) assert.equal(await inside.command(`AUTH PLAIN ${plain('app', `${WRONG_PASSWORD}${i}`)}`), '535 5.7.8 Authentication credentials invalid');
    assert.equal(await inside.command(`AUTH PLAIN ${plain('app', APP_PASSWORD)}`), '454 4.7.0 Too many authentication failures, try again later', 'the right password no longer counts');
    assert.match(await inside.command('MAIL FROM:<anyone@example.test>'), /^250 /, 'inside allowedNetworks no AUTH is needed');
    inside.close();

    const outside = await dialog('127.0.0.4');
    await outside.command('EHLO client.test');
    assert.equal(await outside.command('AUTH LOGIN'), '334 VXNlcm5hbWU6');
    assert.equal(await outside.command(Buffer.from('app').toString('base64')), '334 UGFzc3dvcmQ6');
    assert.equal(await outside.command(Buffer.from(WRONG_PASSWORD).toString('base64')), '535 5.7.8 Authentication credentials invalid');
    for (let i = 0; i < 2; i++) assert.equal(await outside.command(`AUTH PLAIN ${plain('nobody', WRONG_PASSWORD)}`), '535 5.7.8 Authentication credentials invalid');
    assert.equal(await outside.command(`AUTH PLAIN ${plain('app', APP_PASSWORD)}`), '421 4.7.0 Too many authentication failures from your address, try again later');
    await assert.rejects(outside.reply(), /connection closed/);
    const again = await swaks('127.0.0.4', ['--auth', 'PLAIN', '--auth-user', 'app', '--auth-password', APP_PASSWORD, '--from', 'app@example.test', '--quit-after', 'AUTH']);
    assert.notEqual(again.code, 0);
    assert.match(again.stdout, /<\*\* +421 4\.7\.0 Too many authentication failures from your address/, again.stdout);
    // Another address is not affected.
    const other = await python('127.0.0.2', 'cron', CRON_PASSWORD, 'cron@example.test', 'python-after-lockout');
    assert.deepEqual(other.login, [235, '2.7.0 Authentication successful']);
  });

  it('logs each success and failure with the user and client address, never a password or AUTH payload; counts them in hedwig_mailman_auth_total', async () => {
    const logs = mailman.logs;
    const succeeded = logs.filter((l) => l.event === 'auth_succeeded');
    assert.ok(succeeded.some((l) => l.user === 'cron' && l.remoteAddress === '127.0.0.3' && l.method === 'PLAIN' && l.secure === true), JSON.stringify(succeeded));
    assert.ok(succeeded.some((l) => l.user === 'app' && l.remoteAddress === '127.0.0.2' && l.method === 'LOGIN'));
    const failed = logs.filter((l) => l.event === 'auth_failed');
    assert.ok(failed.some((l) => l.user === 'app' && l.remoteAddress === '127.0.0.5' && l.reason === 'bad_password'));
    assert.ok(failed.some((l) => l.user === 'nobody' && l.remoteAddress === '127.0.0.4' && l.reason === 'unknown_user' && l.failures === 3));
    assert.ok(logs.some((l) => l.event === 'auth_rate_limited' && l.remoteAddress === '127.0.0.6'));
    assert.ok(logs.some((l) => l.event === 'rejected' && l.reason === 'auth_rate_limited' && l.remoteAddress === '127.0.0.4'));
    assert.ok(logs.some((l) => l.event === 'rejected' && l.reason === 'sender_not_permitted' && l.authUser === 'app'));
    assert.ok(logs.some((l) => l.event === 'accepted' && l.authUser === 'cron'));
    const everything = JSON.stringify(logs) + mailman.stderr();
    for (const secret of [APP_PASSWORD, CRON_PASSWORD, WRONG_PASSWORD, plain('cron', CRON_PASSWORD), Buffer.from(WRONG_PASSWORD).toString('base64')]) {
      assert.equal(everything.includes(secret), false, `the log holds ${secret}`);
    }
    const metrics = await (await fetch(`http://127.0.0.1:${opsPort}/metrics`)).text();
    const count = (result: string) => Number(new RegExp(`^hedwig_mailman_auth_total\\{[^}]*result="${result}"[^}]*\\} (\\d+)$`, 'm').exec(metrics)?.[1] ?? 0);
    assert.ok(count('succeeded') >= 8, metrics);
    assert.ok(count('bad_password') >= 6);
    assert.ok(count('unknown_user') >= 2);
    assert.ok(count('rate_limited') >= 2);
  });
});
