import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Spool } from '../mailman/spool.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../test/helpers/beanstalkd.ts';
import { freePort } from '../test/helpers/ports.ts';
import { startTier, type TierProcess } from '../test/helpers/tiers.ts';

/**
 * What scripts/mailman-measure.ts measures with: the stack on loopback (beanstalkd, a post
 * office, mailman), a small SMTP client (one session at a time, or kept connections at a
 * rate), one msmtp process per message, the spool's depth, and the percentiles it reports.
 */

const FQDN = 'app.measure.example';
const KEY = 'measure-key-0123456789abcdef0123456789';
const MESSAGE = `From: a@measure.example\r\nTo: b@dest.example\r\nSubject: measure\r\n\r\n${'x'.repeat(76)}\r\n`.repeat(1).padEnd(2048, '.');
export const BODY = `${MESSAGE}\r\n`;

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

export function summary(samples: number[]): { n: number; p50: number; p90: number; p99: number; max: number } {
  const sorted = [...samples].sort((a, b) => a - b);
  const r = (v: number): number => Math.round(v * 100) / 100;
  return { n: sorted.length, p50: r(percentile(sorted, 50)), p90: r(percentile(sorted, 90)), p99: r(percentile(sorted, 99)), max: r(sorted.at(-1) ?? NaN) };
}

export const now = (): number => performance.now();

export interface Stack {
  dir: string;
  beanstalkd: BeanstalkdProcess;
  postoffice?: TierProcess;
  postofficePort: number;
  mailman: TierProcess;
  mailmanPort: number;
  spoolDir: string;
  stop(): Promise<void>;
}

export async function startPostoffice(beanstalkd: BeanstalkdProcess, port: number): Promise<TierProcess> {
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

export async function startStack(options: { postofficeUp: boolean; mailman?: Record<string, unknown> }): Promise<Stack> {
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
export async function oneSession(port: number): Promise<{ greeting: number; session: number }> {
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

export function msmtpOnce(port: number): Promise<number> {
  const start = now();
  return new Promise((resolve, reject) => {
    const child = execFile('msmtp', ['-C', '/dev/null', '--host=127.0.0.1', `--port=${port}`, '--from=a@measure.example', '--', 'b@dest.example'], { timeout: 20_000 }, (err) => {
      if (err) reject(err);
      else resolve(now() - start);
    });
    child.stdin!.end(BODY);
  });
}

export async function kept(port: number, count: number, clients: number, perSecond = 0): Promise<number> {
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

export async function spoolDepth(spoolDir: string): Promise<number> {
  return (await new Spool(spoolDir).list()).length;
}
