/**
 * mailman against the real post office, every tier its own process: msmtp / a hand-driven
 * SMTP client -> mailman -> postoffice -> beanstalkd -> worker -> a recording SMTP sink.
 * Every size up to maxMessageBytes end to end, and what mailman does when the post office
 * freezes (SIGSTOP: one timeout, then every session spools at once). Bounded retries of a message
 * the post office keeps failing on are tested against a scripted client in
 * test/unit/mailman-forwarder.test.ts.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { jobSizeFor } from '../../shared/job.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { SmtpDialog, msmtp } from '../helpers/mailman-harness.ts';
import { freePort, waitFor } from '../helpers/ports.ts';
import { startSmtpSink, type SmtpSink } from '../helpers/smtp-sink.ts';
import { startTier, type TierProcess } from '../helpers/tiers.ts';

const FQDN = 'app1.example.test';
const KEY = 'c0ffee17'.repeat(8);
const MAX_MESSAGE_BYTES = 10_485_760;

/** A message of exactly `size` bytes, findable at the sink by its Message-ID. */
function sized(tag: string, size: number): Buffer {
  // With Date and Message-ID msmtp adds no header, so the size is what mailman sees.
  const header = `From: a@example.test\r\nTo: b@dest.test\r\nSubject: ${tag}\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <${tag}@example.test>\r\n\r\n`;
  const line = `${'x'.repeat(76)}\r\n`;
  const body = line.repeat(Math.ceil((size - header.length) / line.length)).slice(0, size - header.length - 2);
  const message = Buffer.from(`${header}${body}\r\n`);
  assert.equal(message.length, size);
  return message;
}

function delivered(sink: SmtpSink, tag: string): boolean {
  return sink.messages.some((m) => m.raw.includes(`Message-ID: <${tag}@example.test>`));
}

function spoolFolder(spoolDir: string, folder: 'new' | 'failed'): string[] {
  const dir = join(spoolDir, folder);
  return existsSync(dir) ? readdirSync(dir).filter((n) => !n.endsWith('.json')) : [];
}

describe('mailman with the real post office', { timeout: 240_000 }, () => {
  let beanstalkd: BeanstalkdProcess;
  let sink: SmtpSink;
  let postoffice: TierProcess;
  let worker: TierProcess;
  let mailman: TierProcess;
  let mailmanPort: number;
  const spoolDir = mkdtempSync(join(tmpdir(), 'hedwig-mailman-po-spool-'));

  before(async () => {
    beanstalkd = await startBeanstalkd({ maxJobSize: jobSizeFor(MAX_MESSAGE_BYTES, 10), fsyncMs: 0 });
    sink = await startSmtpSink();
    const postofficePort = await freePort();
    postoffice = await startTier(
      'postoffice',
      {
        listen: { host: '127.0.0.1', port: postofficePort },
        beanstalk: { servers: [beanstalkd.address] },
        limits: { maxMessageBytes: MAX_MESSAGE_BYTES, maxRecipients: 10 },
        clients: { [FQDN]: { key: KEY, senderDomains: ['example.test'] } },
      },
      { readyPort: postofficePort },
    );
    worker = await startTier('worker', {
      beanstalk: { servers: [beanstalkd.address] },
      concurrency: 4,
      ehloName: 'relay.hedwig.test',
      routes: { 'dest.test': `127.0.0.1:${sink.port}` },
      allowPrivateAddresses: true,
      timeouts: { connectMs: 2000, greetingMs: 5000, socketMs: 20_000 },
      retry: { delaysSeconds: [2], maxLifetimeSeconds: 600 },
      ops: { host: '127.0.0.1', port: 0 },
    });
    mailmanPort = await freePort();
    mailman = await startTier(
      'mailman',
      {
        listen: { host: '127.0.0.1', port: mailmanPort },
        allowedNetworks: ['127.0.0.0/8'],
        hostname: 'mailman.hedwig.test',
        maxMessageBytes: MAX_MESSAGE_BYTES,
        postoffice: { url: `http://127.0.0.1:${postofficePort}`, fqdn: FQDN, key: KEY, timeoutMs: 1500 },
        spool: { dir: spoolDir },
        // A short backoff and few attempts, so giving up fits in a test; the pause after an
        // outage (2 s) is long enough for the freeze test to send its messages inside it.
        forwarder: { minBackoffMs: 2000, maxBackoffMs: 4000, maxAttempts: 3, concurrency: 4 },
        ops: { host: '127.0.0.1', port: await freePort() },
      },
      { readyPort: mailmanPort },
    );
  });

  after(async () => {
    postoffice?.child.kill('SIGCONT');
    await mailman?.stop();
    await worker?.stop();
    await postoffice?.stop();
    await beanstalkd?.stop();
    await sink?.stop();
  });

  it('delivers every size up to maxMessageBytes through mailman, and the small messages behind the large ones go inline', async () => {
    // Until the post office checked data_base64 in linear time, it answered 500 from about
    // 3.5 MiB up, and mailman retried those for ever and spooled everything behind them.
    const sizes = [512, 65_536, 1_048_576, 3_600_000, 3_774_874, 6_000_000, MAX_MESSAGE_BYTES];
    for (const size of sizes) {
      const result = await msmtp(mailmanPort, ['b@dest.test'], sized(`size-${size}`, size).toString('latin1'));
      assert.equal(result.code, 0, `${size}: ${result.stderr}`);
    }
    for (let i = 0; i < 3; i++) {
      const result = await msmtp(mailmanPort, ['b@dest.test'], sized(`small-${i}`, 2048).toString('latin1'));
      assert.equal(result.code, 0, result.stderr);
    }
    await waitFor(() => [...sizes.map((size) => `size-${size}`), 'small-0', 'small-1', 'small-2'].every((tag) => delivered(sink, tag)), { timeoutMs: 120_000, what: 'every message at the sink' });
    assert.deepEqual(spoolFolder(spoolDir, 'new'), []);
    assert.deepEqual(spoolFolder(spoolDir, 'failed'), []);
    const acceptedLines = await waitFor(() => {
      const lines = mailman.logs.filter((l) => l.event === 'accepted');
      return lines.length >= sizes.length + 3 ? lines : undefined;
    }, { what: 'the accepted log lines' });
    const small = acceptedLines.filter((l) => l.size === 2048);
    assert.deepEqual(small.map((l) => l.path), ['inline', 'inline', 'inline'], 'a post office error about one message does not stop inline forwarding of the next');
  });

  it('a frozen post office (SIGSTOP) costs one timeout: following messages on every session are spooled at once, and inline forwarding resumes after the first success', async () => {
    const a = await SmtpDialog.open(mailmanPort);
    const b = await SmtpDialog.open(mailmanPort);
    const send = async (dialog: SmtpDialog, tag: string): Promise<string> => {
      assert.match(await dialog.command('MAIL FROM:<a@example.test>'), /^250 /);
      assert.match(await dialog.command('RCPT TO:<b@dest.test>'), /^250 /);
      assert.match(await dialog.command('DATA'), /^354 /);
      dialog.write(sized(tag, 1024));
      return dialog.command('.');
    };
    for (const dialog of [a, b]) {
      assert.match(await dialog.reply(), /^220 /);
      assert.match(await dialog.command('EHLO client.test'), /^250/);
    }
    assert.match(await send(a, 'before-freeze'), /^250 2\.0\.0 Ok: queued as \S+$/, 'inline while the post office runs');

    postoffice.child.kill('SIGSTOP');
    try {
      const mark = mailman.logs.length;
      assert.match(await send(a, 'frozen-0'), /^250 .*\(spooled\)$/);
      const replies: string[] = [];
      for (let i = 1; i <= 6; i++) replies.push(await send(i % 2 ? b : a, `frozen-${i}`));
      for (const reply of replies) assert.match(reply, /^250 .*\(spooled\)$/);
      // The replies can reach us before mailman's log lines do.
      const spooled = await waitFor(() => {
        const lines = mailman.logs.slice(mark).filter((l) => l.event === 'spooled');
        return lines.length >= 7 ? lines : undefined;
      }, { what: 'seven spooled log lines' });
      assert.equal(spooled.length, 7);
      assert.match(String(spooled[0]!.reason), /ETIMEOUT/, 'the first waited for the post office');
      for (const line of spooled.slice(1)) assert.doesNotMatch(String(line.reason), /ETIMEOUT/, 'the others did not wait: they were spooled at once');
    } finally {
      postoffice.child.kill('SIGCONT');
    }

    await waitFor(() => spoolFolder(spoolDir, 'new').length === 0, { timeoutMs: 30_000, what: 'the spool to drain after SIGCONT' });
    assert.match(await send(b, 'after-freeze'), /^250 2\.0\.0 Ok: queued as \S+$/, 'inline again');
    for (const dialog of [a, b]) {
      assert.match(await dialog.command('QUIT'), /^221 /);
      dialog.close();
    }
    await waitFor(() => ['before-freeze', 'after-freeze', ...Array.from({ length: 7 }, (_, i) => `frozen-${i}`)].every((tag) => delivered(sink, tag)), { timeoutMs: 60_000, what: 'every message at the sink' });
  });
});
