/**
 * mailman in this process against a fake post office (test/helpers/fake-postoffice.ts), with
 * its log lines collected, plus the clients the mailman tests drive it with: msmtp, swaks and
 * SmtpDialog, a hand-driven SMTP client for what real clients will not do.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { loadMailmanConfig, type MailmanConfig } from '../../mailman/config.ts';
import { startMailman, type Mailman } from '../../mailman/server.ts';
import { startFakePostoffice, type FakePostoffice } from './fake-postoffice.ts';

export const KEY = 'mailman-test-key-0123456789abcdef';
export const FQDN = 'app1.example.test';
export const CHILD_TIMEOUT_MS = 20_000;

/** A line starting with a dot exercises dot-stuffing by the client and unstuffing by us. */
export const MESSAGE = [
  'From: Sender <a@example.test>',
  'To: b@dest.test',
  'Subject: hedwig test',
  'Date: Mon, 01 Jan 2024 10:00:00 +0000',
  'Message-ID: <test-1@example.test>',
  '',
  'first line',
  '.a line starting with a dot',
  '..two dots',
  '.',
  'last line',
  '',
].join('\r\n');

export type LogLine = Record<string, unknown>;

export interface Harness {
  mailman: Mailman;
  postoffice: FakePostoffice;
  config: MailmanConfig;
  spoolDir: string;
  logs: LogLine[];
}

/** What each test file registers and runs in its after() hook: `after(runCleanups)`. */
export const cleanups: Array<() => Promise<void>> = [];
export async function runCleanups(): Promise<void> {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
}

export function tempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  cleanups.push(async () => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export async function startHarness(
  options: { env?: Record<string, string>; postofficeListening?: boolean; spoolDir?: string; postofficeTls?: { key: string; cert: string } } = {},
): Promise<Harness> {
  const postoffice = await startFakePostoffice({ key: KEY, fqdn: FQDN, listening: options.postofficeListening ?? true, tls: options.postofficeTls });
  cleanups.push(() => postoffice.stop());
  const spoolDir = options.spoolDir ?? join(tempDir('hedwig-mailman-'), 'spool');
  const config = loadMailmanConfig(undefined, {
    HEDWIG_MAILMAN__LISTEN__PORT: '0',
    HEDWIG_MAILMAN__OPS__PORT: '0',
    HEDWIG_MAILMAN__POSTOFFICE__URL: postoffice.url,
    HEDWIG_MAILMAN__POSTOFFICE__FQDN: FQDN,
    HEDWIG_MAILMAN__POSTOFFICE__KEY: KEY,
    HEDWIG_MAILMAN__POSTOFFICE__TIMEOUT_MS: '2000',
    HEDWIG_MAILMAN__SPOOL__DIR: spoolDir,
    HEDWIG_MAILMAN__FORWARDER__MIN_BACKOFF_MS: '50',
    HEDWIG_MAILMAN__FORWARDER__MAX_BACKOFF_MS: '200',
    ...options.env,
  });
  const logs: LogLine[] = [];
  const logger = pino({ level: 'info' }, { write: (line: string) => void logs.push(JSON.parse(line) as LogLine) });
  const mailman = await startMailman(config, { logger });
  cleanups.push(() => mailman.stop());
  return { mailman, postoffice, config, spoolDir, logs };
}

export interface ChildResult {
  code: number | string | null;
  stdout: string;
  stderr: string;
}

export function run(command: string, args: string[], input?: string): Promise<ChildResult> {
  return new Promise((resolve) => {
    const child = execFile(command, args, { timeout: CHILD_TIMEOUT_MS }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as NodeJS.ErrnoException).code ?? 'error') : 0, stdout, stderr });
    });
    child.stdin?.end(input ?? '');
  });
}

export function msmtp(port: number, recipients: string[], message = MESSAGE): Promise<ChildResult> {
  // -C /dev/null: no user or system msmtprc may change what is sent.
  return run('msmtp', ['-C', '/dev/null', '--host=127.0.0.1', `--port=${port}`, '--from=a@example.test', '--', ...recipients], message);
}

export function swaks(port: number, dataFile: string, extra: string[] = []): Promise<ChildResult> {
  return run('swaks', ['--server', `127.0.0.1:${port}`, '--from', 'a@example.test', '--to', 'b@dest.test', '--data', `@${dataFile}`, ...extra]);
}

/** A hand-driven SMTP client for what real clients will not do (bare LFs, exact pipelining). */
export class SmtpDialog {
  private buffer = '';
  private waiters: Array<() => void> = [];
  private closed = false;

  private constructor(private readonly socket: Socket) {
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => {
      this.buffer += chunk;
      this.wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
    socket.on('error', () => undefined);
  }

  static async open(port: number, host = '127.0.0.1', localAddress?: string): Promise<SmtpDialog> {
    const socket = connect({ port, host, localAddress });
    socket.setTimeout(CHILD_TIMEOUT_MS, () => socket.destroy());
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    return new SmtpDialog(socket);
  }

  private wake(): void {
    for (const waiter of this.waiters.splice(0)) waiter();
  }

  /** The next complete (possibly multi-line) reply, e.g. "250 2.0.0 Ok". */
  async reply(): Promise<string> {
    for (;;) {
      const match = /^((?:\d{3}-[^\r\n]*\r\n)*\d{3}(?: [^\r\n]*)?\r\n)/.exec(this.buffer);
      if (match) {
        this.buffer = this.buffer.slice(match[1]!.length);
        return match[1]!.trimEnd();
      }
      if (this.closed) throw new Error(`connection closed, unparsed: ${JSON.stringify(this.buffer)}`);
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
  }

  async command(line: string): Promise<string> {
    this.socket.write(`${line}\r\n`);
    return this.reply();
  }

  write(raw: string | Buffer): void {
    this.socket.write(raw);
  }

  close(): void {
    this.socket.destroy();
  }
}

