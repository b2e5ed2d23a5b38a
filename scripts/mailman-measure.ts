/**
 * `npx tsx scripts/mailman-measure.ts latency|drain [--flags]`: measurements of mailman alone,
 * with a real post office and beanstalkd on loopback (no worker: a message counts as done once
 * the post office queued it). Not a test: it asserts nothing and prints JSON figures.
 *
 *   latency  one-message sessions, one after another: connect->220 and the whole session
 *            (connect, EHLO, MAIL, RCPT, DATA, QUIT) with a small Node client, and the wall
 *            time of one `msmtp` process per message (what cron and PHP mail() do).
 *            --sessions N (1000), --msmtp N (300)
 *   drain    a backlog of --backlog N (100000) messages written straight into the spool while
 *            the post office is down, then the post office started: how fast the forwarder
 *            empties the spool, against the inline rate of --inline N (5000) messages sent
 *            over --clients C (16) kept SMTP connections. With --flap-seconds S the test first
 *            kills beanstalkd every S seconds for --flap-for T seconds under load (--rate R
 *            messages/s in all, 0 for as fast as mailman answers) and reports the spool depth
 *            after each kill; --backlog 0 skips the backlog part.
 * The README section "mailman: measured" quotes the figures this prints.
 */
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Spool, encodeSpoolFile, newSpoolId } from '../mailman/spool.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../test/helpers/beanstalkd.ts';
import { freePort, waitFor } from '../test/helpers/ports.ts';
import { startTier, type TierProcess } from '../test/helpers/tiers.ts';

const FQDN = 'app.measure.example';
const KEY = 'measure-key-0123456789abcdef0123456789';
const MESSAGE = `From: a@measure.example\r\nTo: b@dest.example\r\nSubject: measure\r\n\r\n${'x'.repeat(76)}\r\n`.repeat(1).padEnd(2048, '.');
const BODY = `${MESSAGE}\r\n`;

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: {
    sessions: { type: 'string', default: '1000' },
    msmtp: { type: 'string', default: '300' },
    backlog: { type: 'string', default: '100000' },
    inline: { type: 'string', default: '5000' },
    clients: { type: 'string', default: '16' },
    'flap-seconds': { type: 'string', default: '0' },
    'flap-for': { type: 'string', default: '60' },
    rate: { type: 'string', default: '0' },
  },
});

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

function summary(samples: number[]): { n: number; p50: number; p90: number; p99: number; max: number } {
  const sorted = [...samples].sort((a, b) => a - b);
  const r = (v: number): number => Math.round(v * 100) / 100;
  return { n: sorted.length, p50: r(percentile(sorted, 50)), p90: r(percentile(sorted, 90)), p99: r(percentile(sorted, 99)), max: r(sorted.at(-1) ?? NaN) };
}

const now = (): number => performance.now();

interface Stack {
  dir: string;
  beanstalkd: BeanstalkdProcess;
  postoffice?: TierProcess;
  postofficePort: number;
  mailman: TierProcess;
  mailmanPort: number;
  spoolDir: string;
  stop(): Promise<void>;
}

async function startPostoffice(beanstalkd: BeanstalkdProcess, port: number): Promise<TierProcess> {
  return startTier(
    'postoffice',
    {
      listen: { host: '127.0.0.1', port },
      beanstalk: { servers: [beanstalkd.address] },
      limits: { maxMessageBytes: 1_048_576, maxRecipients: 10 },
      clients: { [FQDN]: { key: KEY, senderDomains: ['measure.example'] } },
    },
    { readyPort: port, env: { LOG_LEVEL: 'warn' } },
  );
}

async function startStack(options: { postofficeUp: boolean; mailman?: Record<string, unknown> }): Promise<Stack> {
  const dir = mkdtempSync(join(tmpdir(), 'hedwig-measure-'));
  const binlogDir = join(dir, 'binlog');
  mkdirSync(binlogDir);
  const beanstalkd = await startBeanstalkd({ maxJobSize: 4_000_000, fsyncMs: 0, binlogDir });
  const postofficePort = await freePort();
  const postoffice = options.postofficeUp ? await startPostoffice(beanstalkd, postofficePort) : undefined;
  const mailmanPort = await freePort();
  const spoolDir = join(dir, 'spool');
  const mailman = await startTier(
    'mailman',
    {
      listen: { host: '127.0.0.1', port: mailmanPort },
      allowedNetworks: ['127.0.0.0/8'],
      hostname: 'mailman.measure.example',
      maxMessageBytes: 1_048_576,
      maxClients: 200,
      postoffice: { url: `http://127.0.0.1:${postofficePort}`, fqdn: FQDN, key: KEY, timeoutMs: 5000 },
      spool: { dir: spoolDir },
      ops: { host: '127.0.0.1', port: await freePort() },
      ...options.mailman,
    },
    { readyPort: mailmanPort, env: { LOG_LEVEL: 'warn' } },
  );
  const stack: Stack = {
    dir,
    beanstalkd,
    postoffice,
    postofficePort,
    mailman,
    mailmanPort,
    spoolDir,
    async stop() {
      await mailman.stop();
      await stack.postoffice?.stop();
      await beanstalkd.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return stack;
}

/** Reads SMTP replies off a socket: resolves with each complete (possibly multi-line) reply. */
class Replies {
  private buffer = '';
  private waiting: ((reply: string) => void) | undefined;
  private failed: ((err: Error) => void) | undefined;

  constructor(socket: Socket) {
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => {
      this.buffer += chunk;
      this.check();
    });
    socket.on('error', (err) => this.failed?.(err));
    socket.on('close', () => this.failed?.(new Error(`closed; buffer: ${this.buffer}`)));
  }

  private check(): void {
    const match = /(?:^|\n)(\d{3}) [^\n]*\n/.exec(this.buffer);
    if (!match || !this.waiting) return;
    const reply = this.buffer.slice(0, match.index + match[0].length);
    this.buffer = this.buffer.slice(reply.length);
    const resolve = this.waiting;
    this.waiting = undefined;
    resolve(reply);
  }

  next(): Promise<string> {
    return new Promise((resolve, reject) => {
      this.waiting = resolve;
      this.failed = reject;
      this.check();
    });
  }
}

async function expect(replies: Replies, code: string): Promise<void> {
  const reply = await replies.next();
  if (!reply.startsWith(code)) throw new Error(`expected ${code}, got ${reply.trim()}`);
}

/** One session the way msmtp runs it (no pipelining): returns connect->220 and the whole session in ms. */
async function oneSession(port: number): Promise<{ greeting: number; session: number }> {
  const start = now();
  const socket = connect({ host: '127.0.0.1', port });
  socket.setNoDelay(true);
  const replies = new Replies(socket);
  await expect(replies, '220');
  const greeting = now() - start;
  const say = async (line: string, code: string): Promise<void> => {
    socket.write(`${line}\r\n`);
    await expect(replies, code);
  };
  await say('EHLO client.measure.example', '250');
  await say('MAIL FROM:<a@measure.example>', '250');
  await say('RCPT TO:<b@dest.example>', '250');
  await say('DATA', '354');
  await say(`${BODY}.`, '250');
  socket.write('QUIT\r\n');
  await expect(replies, '221');
  const session = now() - start;
  socket.destroy();
  return { greeting, session };
}

function msmtpOnce(port: number): Promise<number> {
  const start = now();
  return new Promise((resolve, reject) => {
    const child = execFile('msmtp', ['-C', '/dev/null', '--host=127.0.0.1', `--port=${port}`, '--from=a@measure.example', '--', 'b@dest.example'], { timeout: 20_000 }, (err) => {
      if (err) reject(err);
      else resolve(now() - start);
    });
    child.stdin!.end(BODY);
  });
}

async function latency(): Promise<void> {
  const stack = await startStack({ postofficeUp: true });
  try {
    // Warm-up: JIT, the post office's kept-alive connection.
    for (let i = 0; i < 50; i++) await oneSession(stack.mailmanPort);
    const greetings: number[] = [];
    const sessions: number[] = [];
    for (let i = 0; i < Number(values.sessions); i++) {
      const r = await oneSession(stack.mailmanPort);
      greetings.push(r.greeting);
      sessions.push(r.session);
    }
    const msmtp: number[] = [];
    for (let i = 0; i < Number(values.msmtp); i++) msmtp.push(await msmtpOnce(stack.mailmanPort));
    const spooled = (await new Spool(stack.spoolDir).list()).length;
    console.log(JSON.stringify({ mode: 'latency', unit: 'ms', client: { connectTo220: summary(greetings), session: summary(sessions) }, msmtp: { process: summary(msmtp) }, spooledAtEnd: spooled }, null, 2));
  } finally {
    await stack.stop();
  }
}

/** `count` messages over `clients` kept sessions; with `perSecond`, no faster than that in all. Returns messages/s. */
async function kept(port: number, count: number, clients: number, perSecond = 0): Promise<number> {
  let next = 0;
  const start = now();
  await Promise.all(
    Array.from({ length: clients }, async () => {
      const socket = connect({ host: '127.0.0.1', port });
      socket.setNoDelay(true);
      const replies = new Replies(socket);
      await expect(replies, '220');
      socket.write('EHLO client.measure.example\r\n');
      await expect(replies, '250');
      while (next < count) {
        const n = next++;
        if (perSecond > 0) {
          const due = start + (n / perSecond) * 1000;
          if (due > now()) await new Promise((r) => setTimeout(r, due - now()));
        }
        socket.write(`MAIL FROM:<a@measure.example>\r\nRCPT TO:<b@dest.example>\r\nDATA\r\n`);
        await expect(replies, '250');
        await expect(replies, '250');
        await expect(replies, '354');
        socket.write(`${BODY}.\r\n`);
        await expect(replies, '250');
      }
      socket.end('QUIT\r\n');
    }),
  );
  return (count / (now() - start)) * 1000;
}

async function spoolDepth(spoolDir: string): Promise<number> {
  return (await new Spool(spoolDir).list()).length;
}

async function drain(): Promise<void> {
  const backlog = Number(values.backlog);
  const flapSeconds = Number(values['flap-seconds']);
  const result: Record<string, unknown> = { mode: 'drain', backlog };
  // The inline rate: what the post office takes from live SMTP sessions.
  {
    const stack = await startStack({ postofficeUp: true });
    try {
      await kept(stack.mailmanPort, 500, Number(values.clients));
      result.inlinePerSecond = Math.round(await kept(stack.mailmanPort, Number(values.inline), Number(values.clients)));
    } finally {
      await stack.stop();
    }
  }
  if (flapSeconds > 0) {
    // beanstalkd killed every few seconds under load: the spool depth must stay bounded.
    const stack = await startStack({ postofficeUp: true });
    try {
      const depths: Array<[number, number]> = [];
      const started = now();
      let flapping = true;
      const load = (async () => {
        while (flapping) await kept(stack.mailmanPort, 200, Number(values.clients), Number(values.rate)).catch(() => undefined);
      })();
      const flapper = (async () => {
        while (now() - started < Number(values['flap-for']) * 1000) {
          await new Promise((r) => setTimeout(r, flapSeconds * 1000));
          await stack.beanstalkd.kill();
          await new Promise((r) => setTimeout(r, 1000));
          await stack.beanstalkd.restart();
          depths.push([Math.round((now() - started) / 1000), await spoolDepth(stack.spoolDir)]);
        }
      })();
      await flapper;
      flapping = false;
      await load;
      const stopped = now();
      await waitFor(async () => (await spoolDepth(stack.spoolDir)) === 0, { timeoutMs: 600_000, intervalMs: 200, what: 'the spool to empty' });
      result.flap = { offeredPerSecond: Number(values.rate) || 'as fast as mailman answers', everySeconds: flapSeconds, forSeconds: Number(values['flap-for']), spoolDepthAfterEachKill: depths, secondsToEmptyAfterLoad: Math.round((now() - stopped) / 100) / 10 };
    } finally {
      await stack.stop();
    }
  }
  if (backlog > 0) {
    const stack = await startStack({ postofficeUp: false });
    try {
      const spool = new Spool(stack.spoolDir);
      await spool.init();
      const written = now();
      let next = 0;
      await Promise.all(
        Array.from({ length: 32 }, async () => {
          while (next < backlog) {
            next++;
            // Written straight into new/ without fsync: setting up the backlog is not what is measured.
            const id = newSpoolId();
            await writeFile(join(spool.newDir, id), encodeSpoolFile({ id, mailfrom: 'a@measure.example', rcpttos: ['b@dest.example'], receivedAt: Date.now(), data: Buffer.from(BODY) }));
          }
        }),
      );
      result.backlogWrittenSeconds = Math.round((now() - written) / 100) / 10;
      const start = now();
      stack.postoffice = await startPostoffice(stack.beanstalkd, stack.postofficePort);
      const samples: Array<[number, number]> = [];
      await waitFor(
        async () => {
          const depth = await spoolDepth(stack.spoolDir);
          samples.push([Math.round((now() - start) / 100) / 10, depth]);
          return depth === 0;
        },
        { timeoutMs: 1_800_000, intervalMs: 2000, what: 'the backlog to drain' },
      );
      const seconds = (now() - start) / 1000;
      result.drainSeconds = Math.round(seconds * 10) / 10;
      result.drainPerSecond = Math.round(backlog / seconds);
      result.drainToInline = Math.round((backlog / seconds / (result.inlinePerSecond as number)) * 100) / 100;
      result.depthOverTime = samples.filter((_, i) => i % 5 === 0);
    } finally {
      await stack.stop();
    }
  }
  console.log(JSON.stringify(result, null, 2));
}

const mode = positionals[0];
if (mode === 'latency') await latency();
else if (mode === 'drain') await drain();
else {
  console.error('usage: tsx scripts/mailman-measure.ts latency|drain [--sessions N] [--msmtp N] [--backlog N] [--inline N] [--clients C] [--flap-seconds S --flap-for T]');
  process.exit(2);
}
