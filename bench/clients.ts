import { spawn } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { BENCH_RECIPIENT_DOMAIN, BENCH_SENDER, BENCH_SENDER_DOMAIN } from './message.ts';
import { nowMs } from './sink.ts';

/**
 * The real SMTP clients the matrix drives the relays with: Postfix's `smtp-source` (one
 * connection per message, or kept with -d) and `msmtp` run the way cron jobs run it, one
 * process per message. Both number their messages through the recipient (`<n>rcpt@bench.test`,
 * n = 1..messages), which is how the sink counts them (bench/sink.ts).
 */
export const SMTP_SOURCE = '/usr/sbin/smtp-source';
export const MSMTP = '/usr/bin/msmtp';

export interface ClientRun {
  /** The command as it would be typed (the port is the relay's). */
  command: string;
  startedAt: number;
  finishedAt: number;
  exitCode: number | null;
  /** Messages the client reported as not accepted (msmtp: one line per failed process). */
  failed: number;
  stderr: string;
}

export interface ClientOptions {
  port: number;
  messages: number;
  /** Parallel sessions (smtp-source -s) or msmtp processes. */
  sessions: number;
  /** Bytes per message on the wire, about. */
  size: number;
}

/** smtp-source's header (From, To, Date, Message-Id) takes about this many bytes; -l counts only the body. */
const SMTP_SOURCE_HEADER_BYTES = 150;

export function clientMissing(client: 'smtp-source' | 'msmtp'): string | undefined {
  const path = client === 'smtp-source' ? SMTP_SOURCE : MSMTP;
  return existsSync(path) ? undefined : `${path} is not installed (Debian package ${client === 'smtp-source' ? 'postfix' : 'msmtp'}: scripts/install-bench-deps.sh)`;
}

function quote(arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}

function runCommand(file: string, args: string[], countFailures: (stderr: string) => number): Promise<ClientRun> {
  const startedAt = nowMs();
  const child = spawn(file, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
    // Keep the head and the count, not megabytes of a failing run.
    if (stderr.length < 100_000) stderr += chunk;
  });
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (exitCode) =>
      resolve({ command: [file, ...args].map(quote).join(' '), startedAt, finishedAt: nowMs(), exitCode, failed: countFailures(stderr), stderr: stderr.slice(0, 2000) }),
    );
  });
}

/** smtp-source -N: without -d a new connection (greeting, HELO, QUIT) per message. It aborts at the first refusal. */
export function runSmtpSource(options: ClientOptions & { kept: boolean }): Promise<ClientRun> {
  const bodyBytes = Math.max(1, Math.round(((options.size - SMTP_SOURCE_HEADER_BYTES) * 80) / 81));
  const args = [
    '-N',
    '-m', String(options.messages),
    '-s', String(options.sessions),
    '-l', String(bodyBytes),
    '-f', BENCH_SENDER,
    '-t', `rcpt@${BENCH_RECIPIENT_DOMAIN}`,
    '-M', 'client.bench.example',
    ...(options.kept ? ['-d'] : []),
    `127.0.0.1:${options.port}`,
  ]; // prettier-ignore
  return runCommand(SMTP_SOURCE, args, () => 0);
}

/** A cron job's mail: From, To and Subject only (msmtp adds Date and Message-ID), about `size` bytes. */
export function cronMessage(size: number): Buffer {
  const head = `From: Cron Daemon <${BENCH_SENDER}>\r\nTo: <ops@${BENCH_RECIPIENT_DOMAIN}>\r\nSubject: Cron <bench@app.${BENCH_SENDER_DOMAIN}> /usr/local/bin/nightly-report\r\n\r\n`;
  const line = 'report line: 0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .....\r\n'.slice(-80);
  const lines = Math.max(1, Math.round((size - head.length - 90) / line.length));
  return Buffer.from(head + line.repeat(lines), 'latin1');
}

/**
 * One msmtp process per message, `sessions` at a time, each started by a shell as cron
 * starts a job (`xargs -P` keeps that many running). A failed process writes its number to
 * stderr. The processes are children of xargs, so their CPU is counted when the run ends.
 */
export function runMsmtp(options: ClientOptions & { messageFile: string }): Promise<ClientRun> {
  writeFileSync(options.messageFile, cronMessage(options.size));
  const msmtp = [MSMTP, '-C', '/dev/null', '--host=127.0.0.1', `--port=${options.port}`, '--auth=off', '--tls=off', '--timeout=60', `--from=${BENCH_SENDER}`, '--'].join(' ');
  const job = `${msmtp} "\${1}rcpt@${BENCH_RECIPIENT_DOMAIN}" < "$0" || echo "msmtp failed: $1" >&2`;
  const script = `seq 1 ${options.messages} | xargs -P ${options.sessions} -n 1 sh -c ${quote(job)} ${quote(options.messageFile)}`;
  return runCommand('/bin/sh', ['-c', script], (stderr) => (stderr.match(/^msmtp failed: /gm) ?? []).length);
}
