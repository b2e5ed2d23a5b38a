/**
 * Bad input over SMTP against a real mailman process, with the rest of the relay real
 * too (post office, beanstalkd, worker), so that what mailman accepts is followed to the
 * receiving MX. That MX is deliberately *lenient*: like the servers SMTP smuggling
 * exploits, it ends DATA at a dot line with any line break (CR, LF or CRLF). A message
 * that leaves hedwig with a bare-LF dot line inside would split in two there.
 *
 * Every case checks the reply codes; the last one checks that mailman is still up.
 * (test/integration/mailman.test.ts covers the same policy in-process in more depth.)
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { jobSizeFor } from '../../shared/job.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { freePort, waitFor } from '../helpers/ports.ts';
import { startTier, type TierProcess } from '../helpers/tiers.ts';

const FQDN = 'app1.smtp-bad.test';
const KEY = '5e1f5e1f'.repeat(8);
const MAX_MESSAGE_BYTES = 4096;
const MAX_RECIPIENTS = 3;

interface Transaction {
  mailFrom: string;
  rcptTo: string[];
  data: Buffer;
}

/** A receiving MX that ends DATA at a lone dot between any line breaks, and records each transaction and command. */
async function startLenientMx(): Promise<{ port: number; transactions: Transaction[]; commands: string[]; stop(): Promise<void> }> {
  const transactions: Transaction[] = [];
  const commands: string[] = [];
  const LENIENT_END = /(?:^|\r\n|\n|\r)\.(?:\r\n|\n|\r)/;
  const server: Server = createServer((socket: Socket) => {
    socket.setEncoding('latin1');
    socket.on('error', () => socket.destroy());
    let buffer = '';
    let current: Transaction = { mailFrom: '', rcptTo: [], data: Buffer.alloc(0) };
    let inData = false;
    socket.write('220 lenient.mx ESMTP\r\n');
    socket.on('data', (chunk: string) => {
      buffer += chunk;
      for (;;) {
        if (inData) {
          const end = LENIENT_END.exec(buffer);
          if (!end) return;
          current.data = Buffer.from(buffer.slice(0, end.index), 'latin1');
          transactions.push(current);
          current = { mailFrom: '', rcptTo: [], data: Buffer.alloc(0) };
          buffer = buffer.slice(end.index + end[0].length);
          inData = false;
          socket.write('250 2.0.0 Ok\r\n');
          continue;
        }
        const eol = /\r\n|\n|\r/.exec(buffer);
        if (!eol) return;
        const line = Buffer.from(buffer.slice(0, eol.index), 'latin1').toString('utf8');
        buffer = buffer.slice(eol.index + eol[0].length);
        commands.push(line);
        const verb = line.slice(0, 4).toUpperCase();
        const address = /<([^>]*)>/.exec(line)?.[1] ?? '';
        if (verb === 'EHLO') socket.write('250-lenient.mx\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 PIPELINING\r\n');
        else if (verb === 'MAIL') {
          current.mailFrom = address;
          socket.write('250 Ok\r\n');
        } else if (verb === 'RCPT') {
          current.rcptTo.push(address);
          socket.write('250 Ok\r\n');
        } else if (verb === 'DATA') {
          inData = true;
          socket.write('354 go ahead\r\n');
        } else if (verb === 'QUIT') socket.end('221 Bye\r\n');
        else socket.write('250 Ok\r\n');
      }
    });
  });
  const port = await freePort();
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  return { port, transactions, commands, stop: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

/** A hand-driven SMTP session for what real clients will not send. */
class Dialog {
  #buffer = '';
  #closed = false;
  #wake: (() => void) | undefined;

  private constructor(private readonly socket: Socket) {
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => {
      this.#buffer += chunk;
      this.#wake?.();
    });
    socket.on('close', () => {
      this.#closed = true;
      this.#wake?.();
    });
    socket.on('error', () => undefined);
  }

  static async open(port: number, localAddress = '127.0.0.1'): Promise<Dialog> {
    const socket = connect({ host: '127.0.0.1', port, localAddress });
    socket.setTimeout(20_000, () => socket.destroy());
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    return new Dialog(socket);
  }

  /** The next complete reply, multi-line replies joined; rejects once the server closed. */
  async reply(): Promise<string> {
    for (;;) {
      const match = /^((?:\d{3}-[^\r\n]*\r\n)*\d{3}(?: [^\r\n]*)?\r\n)/.exec(this.#buffer);
      if (match) {
        this.#buffer = this.#buffer.slice(match[1]!.length);
        return match[1]!.trimEnd();
      }
      if (this.#closed) throw new Error(`connection closed (unparsed: ${JSON.stringify(this.#buffer)})`);
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
  }

  async replies(count: number): Promise<string[]> {
    const all: string[] = [];
    for (let i = 0; i < count; i++) all.push(await this.reply());
    return all;
  }

  /** Every reply until the server closes the connection. */
  async repliesUntilClosed(): Promise<string[]> {
    const all: string[] = [];
    for (;;) {
      try {
        all.push(await this.reply());
      } catch {
        return all;
      }
    }
  }

  write(raw: string | Buffer): void {
    this.socket.write(typeof raw === 'string' ? Buffer.from(raw, 'latin1') : raw);
  }

  async command(line: string): Promise<string> {
    this.write(`${line}\r\n`);
    return this.reply();
  }

  async closed(): Promise<boolean> {
    await waitFor(() => this.#closed, { timeoutMs: 5000, what: 'the server to close the connection' });
    return true;
  }

  close(): void {
    this.socket.destroy();
  }
}

function run(command: string, args: string[]): Promise<{ code: number; stdout: string }> {
  return new Promise((resolve) => {
    execFile(command, args, { timeout: 30_000 }, (err, stdout) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout }));
  });
}

describe('bad input over SMTP (real mailman, relayed to a lenient MX)', { timeout: 120_000 }, () => {
  let beanstalkd: BeanstalkdProcess;
  let mx: Awaited<ReturnType<typeof startLenientMx>>;
  let postoffice: TierProcess;
  let worker: TierProcess;
  let mailman: TierProcess;
  let port: number;
  let opsPort: number;
  const files = mkdtempSync(join(tmpdir(), 'hedwig-bad-smtp-'));

  before(async () => {
    beanstalkd = await startBeanstalkd({ maxJobSize: jobSizeFor(MAX_MESSAGE_BYTES, MAX_RECIPIENTS) });
    mx = await startLenientMx();
    const postofficePort = await freePort();
    postoffice = await startTier(
      'postoffice',
      {
        listen: { host: '127.0.0.1', port: postofficePort },
        beanstalk: { servers: [beanstalkd.address] },
        limits: { maxMessageBytes: MAX_MESSAGE_BYTES, maxRecipients: MAX_RECIPIENTS },
        clients: { [FQDN]: { key: KEY, senderDomains: ['example.test'] } },
      },
      { readyPort: postofficePort },
    );
    worker = await startTier('worker', {
      beanstalk: { servers: [beanstalkd.address] },
      concurrency: 2,
      ehloName: 'relay.smtp-bad.test',
      routes: { 'dest.test': `127.0.0.1:${mx.port}`, 'relay.test': `127.0.0.1:${mx.port}`, 'evil.test': `127.0.0.1:${mx.port}` },
      timeouts: { connectMs: 2000, greetingMs: 2000, socketMs: 5000 },
      retry: { delaysSeconds: [1], maxLifetimeSeconds: 600 },
      ops: { host: '127.0.0.1', port: 0 },
    });
    port = await freePort();
    opsPort = await freePort();
    mailman = await startTier(
      'mailman',
      {
        listen: { host: '127.0.0.1', port },
        // Only 127.0.0.1: connections from 127.0.0.2 play the outside world.
        allowedNetworks: ['127.0.0.1/32'],
        hostname: 'mailman.smtp-bad.test',
        maxMessageBytes: MAX_MESSAGE_BYTES,
        maxRecipients: MAX_RECIPIENTS,
        postoffice: { url: `http://127.0.0.1:${postofficePort}`, fqdn: FQDN, key: KEY, timeoutMs: 3000 },
        spool: { dir: join(files, 'spool') },
        ops: { host: '127.0.0.1', port: opsPort },
      },
      { readyPort: port },
    );
  });

  after(async () => {
    await Promise.allSettled([mailman?.stop(), worker?.stop(), postoffice?.stop()]);
    await Promise.allSettled([mx?.stop(), beanstalkd?.stop()]);
  });

  /** Opens a session from 127.0.0.1 and says EHLO. */
  async function session(): Promise<Dialog> {
    const dialog = await Dialog.open(port);
    assert.match(await dialog.reply(), /^220 /);
    assert.match(await dialog.command('EHLO client.test'), /^250-/);
    return dialog;
  }

  const delivered = (predicate: (t: Transaction) => boolean) => mx.transactions.filter(predicate);
  const withText = (text: string) => (t: Transaction) => t.data.toString('latin1').includes(text);

  it('refuses a client from a network that is not allowed at connect (554 5.7.1), answers 503 to everything until QUIT (RFC 5321 §3.1) and relays nothing', async () => {
    const polite = await Dialog.open(port, '127.0.0.2');
    assert.match(await polite.reply(), /^554 5\.7\.1 /);
    polite.write('EHLO outside.test\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<victim@dest.test>\r\nDATA\r\nSubject: relay me\r\n\r\nspam\r\n.\r\nQUIT\r\n');
    const replies = await polite.repliesUntilClosed();
    assert.deepEqual(replies.map((r) => r.slice(0, 9)), [...Array(8).fill('503 5.5.1'), '221 2.0.0'], replies.join('\n'));

    // One that talks first and never says QUIT gets 503s too, and is cut off (at most 20 commands, or the wait ends).
    const eager = await Dialog.open(port, '127.0.0.2');
    eager.write('EHLO outside.test\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<victim@dest.test>\r\n'.repeat(10));
    const cut = await eager.repliesUntilClosed();
    assert.match(cut[0]!, /^554 5\.7\.1 /);
    assert.ok(cut.slice(1, -1).every((r) => r.startsWith('503 5.5.1')), cut.join('\n'));
    assert.match(cut.at(-1)!, /^421 4\.7\.0 /);
    assert.equal(delivered((t) => t.rcptTo.includes('victim@dest.test')).length, 0);
  });

  it('relays only for the sender domains the post office allows this host: another domain gets 554 5.7.1', async () => {
    const dialog = await session();
    assert.match(await dialog.command('MAIL FROM:<ceo@bank.test>'), /^250 /);
    assert.match(await dialog.command('RCPT TO:<victim@dest.test>'), /^250 /);
    assert.match(await dialog.command('DATA'), /^354 /);
    dialog.write('Subject: spoofed\r\n\r\nwire the money\r\n');
    assert.match(await dialog.command('.'), /^554 5\.7\.1 .*sender_domain_not_allowed/);
    dialog.close();
  });

  it('drops source routes (RFC 5321 §4.1.1.3) and refuses bang paths and stacked or quoted @: mail goes to the final mailbox only', async () => {
    const dialog = await session();
    assert.match(await dialog.command('MAIL FROM:<a@example.test>'), /^250 /);
    assert.match(await dialog.command('RCPT TO:<@relay.test,@evil.test:routed@dest.test>'), /^250 /);
    assert.match(await dialog.command('RCPT TO:<dest.test!bang>'), /^5\d\d /);
    assert.match(await dialog.command('RCPT TO:<stacked@dest.test@evil.test>'), /^5\d\d /);
    assert.match(await dialog.command('RCPT TO:<"x@evil.test"@dest.test>'), /^5\d\d /);
    assert.match(await dialog.command('DATA'), /^354 /);
    dialog.write('Subject: source route\r\n\r\nrouted\r\n');
    assert.match(await dialog.command('.'), /^250 2\.0\.0 /);
    dialog.close();
    const [arrived] = await waitFor(() => {
      const found = delivered(withText('Subject: source route'));
      return found.length ? found : undefined;
    }, { timeoutMs: 20_000, what: 'the routed message' });
    assert.deepEqual(arrived!.rcptTo, ['routed@dest.test']);
  });

  it('answers an oversized message 552 (declared at MAIL FROM, or sent anyway) and serves the next one', async () => {
    const dialog = await session();
    assert.match(await dialog.command(`MAIL FROM:<a@example.test> SIZE=${MAX_MESSAGE_BYTES + 1}`), /^552 /);
    assert.match(await dialog.command('MAIL FROM:<a@example.test>'), /^250 /);
    assert.match(await dialog.command('RCPT TO:<big@dest.test>'), /^250 /);
    assert.match(await dialog.command('DATA'), /^354 /);
    dialog.write(`Subject: too big\r\n\r\n${`${'y'.repeat(998)}\r\n`.repeat(10)}`);
    assert.equal(await dialog.command('.'), '552 5.3.4 Message size exceeds fixed maximum message size');
    dialog.close();

    const big = join(files, 'big.eml');
    writeFileSync(big, `Subject: too big from swaks\r\n\r\n${'z'.repeat(76)}\r\n`.repeat(100));
    const swaks = await run('swaks', ['--server', `127.0.0.1:${port}`, '--from', 'a@example.test', '--to', 'big@dest.test', '--data', `@${big}`]);
    assert.notEqual(swaks.code, 0);
    assert.match(swaks.stdout, /<\*\* +552 5\.3\.4 /);
  });

  it('answers 452 4.5.3 to recipients beyond maxRecipients (swaks) and delivers to the others', async () => {
    const result = await run('swaks', ['--server', `127.0.0.1:${port}`, '--from', 'a@example.test', '--to', 'r1@dest.test,r2@dest.test,r3@dest.test,r4@dest.test', '--header', 'Subject: four recipients']);
    assert.match(result.stdout, /<\*\* +452 4\.5\.3 Too many recipients/);
    assert.match(result.stdout, /<- {2}250 2\.0\.0 Ok: queued as /);
    const [arrived] = await waitFor(() => {
      const found = delivered(withText('Subject: four recipients'));
      return found.length ? found : undefined;
    }, { timeoutMs: 20_000, what: 'the message to three recipients' });
    assert.deepEqual([...arrived!.rcptTo].sort(), ['r1@dest.test', 'r2@dest.test', 'r3@dest.test']);
  });

  describe('SMTP smuggling: a dot line with a bare CR or LF does not end the message, here or at the next hop', () => {
    const variants: Record<string, string> = {
      'LF . LF': '\n.\n',
      'LF . CRLF': '\n.\r\n',
      'CRLF . LF': '\r\n.\n',
      'CR . CR': '\r.\r',
      'CR . CRLF': '\r.\r\n',
    };
    for (const [name, marker] of Object.entries(variants)) {
      it(`keeps "${name}" inside one message`, async () => {
        const tag = name.replace(/\W+/g, '-');
        const smuggled = `MAIL FROM:<a@example.test>\r\nRCPT TO:<victim-${tag}@dest.test>\r\nDATA\r\nSubject: smuggled ${tag}\r\n\r\nevil\r\n`;
        const dialog = await session();
        dialog.write(`MAIL FROM:<a@example.test>\r\nRCPT TO:<outer-${tag}@dest.test>\r\nDATA\r\n`);
        assert.deepEqual((await dialog.replies(3)).map((r) => r.slice(0, 3)), ['250', '250', '354']);
        dialog.write(`Subject: outer ${tag}\r\n\r\nhello${marker}${smuggled}.\r\nQUIT\r\n`);
        assert.match(await dialog.reply(), /^250 2\.0\.0 Ok: queued as /);
        assert.match(await dialog.reply(), /^221 /, 'exactly one 250: the smuggled transaction got no reply of its own');
        dialog.close();

        const [arrived] = await waitFor(() => {
          const found = delivered(withText(`Subject: outer ${tag}`));
          return found.length ? found : undefined;
        }, { timeoutMs: 20_000, what: `the outer message (${name})` });
        assert.deepEqual(arrived!.rcptTo, [`outer-${tag}@dest.test`]);
        assert.ok(arrived!.data.toString('latin1').includes(`Subject: smuggled ${tag}`), 'the smuggled text stays in the body');
        assert.ok(!/(^|[^\r])\n|\r(?!\n)/.test(arrived!.data.toString('latin1')), 'the worker sends CRLF line ends only');
        assert.equal(delivered((t) => t.rcptTo.includes(`victim-${tag}@dest.test`)).length, 0, 'no smuggled delivery');
        assert.ok(!mx.commands.some((c) => c.includes(`victim-${tag}`)), 'the MX never saw the smuggled command');
      });
    }
  });

  it('answers invalid commands and pipelined garbage in order, and hangs up after too many', async () => {
    const dialog = await session();
    dialog.write('FOO BAR\r\nDATA\r\nRCPT TO:<b@dest.test>\r\nMAIL FROM:<a@example.test>\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<not an address>\r\n\x00\x01\xff\xfe\r\nNOOP\r\n');
    const replies = await dialog.replies(8);
    assert.deepEqual(
      replies.map((r) => r.slice(0, 3)),
      ['500', '503', '503', '250', '503', '553', '500', '250'],
      replies.join('\n'),
    );
    assert.match(await dialog.command(`HELO ${'x'.repeat(10_000)}`), /^5\d\d /, 'an overlong line');
    dialog.write('GARBAGE\r\n'.repeat(12));
    const closing = await dialog.repliesUntilClosed();
    assert.match(closing.at(-1)!, /^421 /, closing.join('\n'));
    assert.ok(closing.slice(0, -1).every((r) => r.startsWith('500 ')), closing.join('\n'));
  });

  it('relays 8-bit content (BODY=8BITMIME) byte for byte', async () => {
    const body = Buffer.concat([Buffer.from('Subject: 8-bit latin-1\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n', 'latin1'), Buffer.from([0x47, 0x72, 0xfc, 0xdf, 0x65, 0x20, 0xe9, 0xe8, 0xff, 0x0d, 0x0a])]);
    const dialog = await session();
    assert.match(await dialog.command('MAIL FROM:<a@example.test> BODY=8BITMIME'), /^250 /);
    assert.match(await dialog.command('RCPT TO:<eightbit@dest.test>'), /^250 /);
    assert.match(await dialog.command('DATA'), /^354 /);
    dialog.write(body);
    assert.match(await dialog.command('.'), /^250 2\.0\.0 /);
    dialog.close();
    const [arrived] = await waitFor(() => {
      const found = delivered((t) => t.rcptTo.includes('eightbit@dest.test'));
      return found.length ? found : undefined;
    }, { timeoutMs: 20_000, what: 'the 8-bit message' });
    // The MX's DATA text ends before the CRLF that precedes the final dot.
    assert.deepEqual(Buffer.concat([arrived!.data, Buffer.from('\r\n')]).subarray(-body.length), body);
  });

  it('relays SMTPUTF8 addresses and UTF-8 headers to an MX that offers SMTPUTF8', async () => {
    const dialog = await session();
    assert.match(await dialog.command('EHLO client.test'), /SMTPUTF8/);
    dialog.write(Buffer.from('MAIL FROM:<jürgen@example.test> SMTPUTF8\r\n', 'utf8'));
    assert.match(await dialog.reply(), /^250 /);
    dialog.write(Buffer.from('RCPT TO:<用户@dest.test>\r\n', 'utf8'));
    assert.match(await dialog.reply(), /^250 /);
    assert.match(await dialog.command('DATA'), /^354 /);
    dialog.write(Buffer.from('Subject: Grüße, 你好\r\nFrom: jürgen@example.test\r\n\r\nUTF-8 all the way\r\n', 'utf8'));
    assert.match(await dialog.command('.'), /^250 2\.0\.0 /);
    dialog.close();
    const [arrived] = await waitFor(() => {
      const found = delivered((t) => t.rcptTo.includes('用户@dest.test'));
      return found.length ? found : undefined;
    }, { timeoutMs: 20_000, what: 'the SMTPUTF8 message' });
    assert.equal(arrived!.mailFrom, 'jürgen@example.test');
    assert.ok(arrived!.data.toString('utf8').includes('Subject: Grüße, 你好'));
  });

  it('is still up and relaying afterwards', async () => {
    assert.equal(mailman.child.exitCode, null);
    assert.equal((await fetch(`http://127.0.0.1:${opsPort}/healthz`)).status, 200);
    const result = await run('swaks', ['--server', `127.0.0.1:${port}`, '--from', 'a@example.test', '--to', 'after@dest.test', '--header', 'Subject: still up']);
    assert.equal(result.code, 0, result.stdout);
    await waitFor(() => delivered(withText('Subject: still up')).length === 1, { timeoutMs: 20_000, what: 'the last message' });
    assert.equal(mailman.logs.filter((l) => Number(l.level) >= 50).length, 0, 'mailman logged no errors');
  });
});
