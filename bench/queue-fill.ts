/**
 * `npx tsx bench/queue-fill.ts [--messages 100000] [--delayed 0.3] [--size 2048] [--runs 1] [--store URL]`
 *
 * How long `hedwig queue list / flush / hold / release` take with a large queue. Starts a real
 * beanstalkd (binlog on, -f 50) on loopback and fills it with `--messages` jobs as the post
 * office would queue them: each job built like postoffice/acceptance.ts builds it and encoded
 * with its encoder (shared/job.ts encodeJob), put into hedwig-outbound over 8 connections, a
 * share `--delayed` of them with a one-hour delay (deferred messages waiting for their retry),
 * and the store's record of each (Store.recordQueued in batches of 500, as
 * postoffice/queued-records.ts writes them) in a temporary SQLite file or `--store`.
 * Recipients are spread over 100 domains (d0.bench.test .. d99.bench.test), so `--domain
 * d7.bench.test` selects 1 % of the queue.
 *
 * Then it runs the real CLI (cli/hedwig.mjs) as a child process for each command, stdout to
 * /dev/null, timed with /usr/bin/time (wall seconds, peak RSS), and once more under `script`
 * (a pseudo terminal) to see whether the progress bar appeared on stderr. Prints JSON.
 */
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { BeanstalkClient } from '../shared/beanstalk.ts';
import { encodeJob, jobSizeFor, JOB_TTR_SECONDS, TUBE, type OutboundJob } from '../shared/job.ts';
import { openStore } from '../shared/store/open.ts';
import type { QueuedRecord } from '../shared/store/store.ts';
import { startBeanstalkd } from '../test/helpers/beanstalkd.ts';
import { benchMessage, BENCH_SENDER } from './message.ts';
import { BENCH_FQDN } from './pipeline.ts';

const root = resolve(import.meta.dirname, '..');
const { values } = parseArgs({
  options: {
    messages: { type: 'string', default: '100000' },
    delayed: { type: 'string', default: '0.3' },
    size: { type: 'string', default: '2048' },
    runs: { type: 'string', default: '1' },
    store: { type: 'string' },
  },
});
const MESSAGES = Number(values.messages);
const DELAYED = Number(values.delayed);
const SIZE = Number(values.size);
const RUNS = Number(values.runs);
const CONNECTIONS = 8;
const DOMAINS = 100;
const RECORD_BATCH = 500;

const progress = (text: string) => process.stderr.write(`queue-fill: ${text}\n`);
const round = (n: number, digits = 2) => Math.round(n * 10 ** digits) / 10 ** digits;

const dir = mkdtempSync(join(tmpdir(), 'hedwig-queue-fill-'));
mkdirSync(join(dir, 'binlog'));
const storeUrl = values.store ?? `sqlite:${join(dir, 'store.db')}`;
const beanstalkd = await startBeanstalkd({ binlogDir: join(dir, 'binlog'), maxJobSize: jobSizeFor(Math.max(SIZE, 65_536), 10), fsyncMs: 50 });
const store = await openStore({ url: storeUrl, timeoutMs: 30_000, password: undefined, historySeconds: 604_800 });

const recipientOf = (i: number) => `rcpt${i % 1000}@d${i % DOMAINS}.bench.test`;

const fillStarted = Date.now();
let next = 0;
const pending: QueuedRecord[] = [];
let writing = Promise.resolve();
const flushRecords = (all: boolean) => {
  while (pending.length >= RECORD_BATCH || (all && pending.length > 0)) {
    const batch = pending.splice(0, RECORD_BATCH);
    writing = writing.then(() => store.recordQueued(batch, Date.now()));
  }
};
await Promise.all(
  Array.from({ length: CONNECTIONS }, async () => {
    const client = new BeanstalkClient({ host: beanstalkd.host, port: beanstalkd.port }, { autoReconnect: false });
    await client.connect();
    await client.use(TUBE.outbound);
    for (let i = next++; i < MESSAGES; i = next++) {
      const data = benchMessage(i, SIZE);
      // As postoffice/acceptance.ts builds a job (its receivedAt spread over the last 2 days).
      const receivedAt = fillStarted - Math.round(((MESSAGES - i) / MESSAGES) * 2 * 86_400_000);
      const job: OutboundJob = { v: 1, id: randomUUID(), fqdn: BENCH_FQDN, mailfrom: BENCH_SENDER, rcpttos: [recipientOf(i)], data: data.toString('base64'), receivedAt, attempts: 0, senderDomains: ['bench.example'] };
      const delayed = (i % 1000) / 1000 < DELAYED;
      const jobId = await client.put(encodeJob(job), { ttrSeconds: JOB_TTR_SECONDS, ...(delayed ? { delaySeconds: 3600 } : {}) });
      pending.push({ id: job.id, fqdn: job.fqdn, mailfrom: job.mailfrom, rcpttos: job.rcpttos, receivedAt, size: data.length, ref: { server: beanstalkd.address, jobId } });
      flushRecords(false);
      if (i % 10_000 === 0 && i > 0) progress(`${i} queued`);
    }
    await client.close();
  }),
);
flushRecords(true);
await writing;
const fillSeconds = (Date.now() - fillStarted) / 1000;
progress(`${MESSAGES} jobs queued and recorded in ${round(fillSeconds, 1)} s`);
// How long the store's part takes alone (before any progress bar: the bar counts stats-job answers).
const listStarted = Date.now();
const listed = await store.listActive({});
const storeListActiveSeconds = (Date.now() - listStarted) / 1000;
progress(`store.listActive: ${listed.length} messages in ${round(storeListActiveSeconds)} s`);
await store.close();

const common = ['--server', beanstalkd.address, '--store', storeUrl];
const hedwig = join(root, 'cli', 'hedwig.mjs');

function timed(args: string[]): Promise<{ seconds: number; peakRssMB: number; code: number; summary: string; stderrTail: string }> {
  return new Promise((done) => {
    execFile('/usr/bin/time', ['-f', 'TIME %e %M', process.execPath, hedwig, ...args, ...common], { maxBuffer: 1024 * 1024 * 1024, timeout: 600_000 }, (err, stdout, stderr) => {
      const match = /TIME ([\d.]+) (\d+)\s*$/.exec(stderr);
      // The last line: "N message(s)" for a list, "held N message(s)" and the like for an action.
      const summary = stdout.startsWith('[') ? `${(JSON.parse(stdout) as unknown[]).length} entries (JSON)` : (stdout.trimEnd().split('\n').at(-1) ?? '').slice(0, 120);
      done({ seconds: Number(match?.[1] ?? NaN), peakRssMB: round(Number(match?.[2] ?? NaN) / 1024, 0), code: err ? Number((err as { code?: number }).code ?? 1) : 0, summary, stderrTail: stderr.replace(/TIME [\d.]+ \d+\s*$/, '').trim().slice(-300) });
    });
  });
}

/** Under a pseudo terminal (script -q): whether the progress bar was drawn on stderr. */
function onTerminal(args: string[]): Promise<{ progressBar: boolean; lastLine: string }> {
  const quoted = [process.execPath, hedwig, ...args, ...common].map((a) => `'${a.replace(/'/g, "'\\''")}'`).join(' ');
  return new Promise((done) => {
    execFile('script', ['-qec', `${quoted} > /dev/null`, '/dev/null'], { maxBuffer: 64 * 1024 * 1024, timeout: 600_000 }, (_err, stdout) => {
      const lines = stdout.split(/[\r\n]+/).filter((l) => l.trim());
      done({ progressBar: /\[#* *\] \d+\/\d+/.test(stdout), lastLine: (lines.filter((l) => /\[#* *\]/.test(l)).at(-1) ?? '').trim().slice(0, 120) });
    });
  });
}

const commands: Array<{ name: string; args: string[]; terminal?: boolean }> = [
  { name: 'queue list', args: ['queue', 'list'], terminal: true },
  { name: 'queue list --json', args: ['queue', 'list', '--json'] },
  { name: 'queue list --domain d7.bench.test', args: ['queue', 'list', '--domain', 'd7.bench.test'] },
  { name: 'queue list --state delayed', args: ['queue', 'list', '--state', 'delayed'] },
  { name: 'queue flush --dry-run', args: ['queue', 'flush', '--dry-run'], terminal: true },
  { name: 'queue flush --domain d3.bench.test --dry-run', args: ['queue', 'flush', '--domain', 'd3.bench.test', '--dry-run'] },
  { name: 'queue flush --domain d3.bench.test', args: ['queue', 'flush', '--domain', 'd3.bench.test'] },
  { name: 'queue hold --domain d7.bench.test', args: ['queue', 'hold', '--domain', 'd7.bench.test'] },
  { name: 'queue release --domain d7.bench.test', args: ['queue', 'release', '--domain', 'd7.bench.test'] },
  // Every delayed job left (peek-delayed + kick-job, one at a time).
  { name: 'queue flush', args: ['queue', 'flush'] },
  { name: 'queue hold --sender (every message)', args: ['queue', 'hold', '--sender', BENCH_SENDER], terminal: true },
  { name: 'queue release --state held', args: ['queue', 'release', '--state', 'held'] },
];

const results: Array<Record<string, unknown>> = [];
for (const command of commands) {
  const runs = [];
  for (let r = 0; r < RUNS; r++) runs.push(await timed(command.args));
  // hold/release change the queue: the terminal run of an action is a --dry-run of it.
  const terminal = command.terminal ? await onTerminal(command.args[1] === 'list' ? command.args : [...command.args, '--dry-run']) : undefined;
  const result = { command: `hedwig ${command.args.join(' ')}`, seconds: runs.map((r) => r.seconds), peakRssMB: Math.max(...runs.map((r) => r.peakRssMB)), exitCodes: runs.map((r) => r.code), summary: runs[0]?.summary, ...(terminal ? { terminal } : {}), ...(runs.some((r) => r.code !== 0) ? { stderr: runs.map((r) => r.stderrTail) } : {}) };
  progress(JSON.stringify(result));
  results.push(result);
}

const counts = await new Promise<string>((done) => execFile(process.execPath, [hedwig, 'queue', 'stats', '--server', beanstalkd.address], (_e, out) => done(out)));
process.stdout.write(
  `${JSON.stringify({ date: new Date().toISOString(), machine: { cpus: cpus().length, model: cpus()[0]?.model, loadavg: loadavg().map((l) => round(l)) , node: process.version }, messages: MESSAGES, delayedShare: DELAYED, size: SIZE, store: storeUrl.replace(/:[^:@/]*@/, ':***@'), fillSeconds: round(fillSeconds, 1), storeListActiveSeconds: round(storeListActiveSeconds), results, queueStatsAtEnd: counts.trim() }, null, 2)}\n`,
);

await beanstalkd.stop();
rmSync(dir, { recursive: true, force: true });
