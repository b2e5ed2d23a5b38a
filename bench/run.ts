/**
 * `npm run bench -- [flags]`: drives hedwig on loopback and reports throughput, latency
 * and per-process resources as JSON (stdout and --out). See bench/args.ts for the flags
 * and the README section "Benchmark" for figures measured with it.
 */
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { BeanstalkClient } from '../shared/beanstalk.ts';
import { TUBE, encodeJob, type OutboundJob } from '../shared/job.ts';
import { USAGE, parseBenchArgs, type BenchArgs } from './args.ts';
import { runHttpLoad } from './http-load.ts';
import { Matrix, matrixUnavailable } from './matrix.ts';
import { judgeTargets, summarize, summaryTable } from './matrix-report.ts';
import { BENCH_SENDER, benchMessage, benchPlan, recipientFor } from './message.ts';
import { BENCH_FQDN, Pipeline } from './pipeline.ts';
import { ProcessWatcher, machineBusySeconds, round, type ProcessFigures } from './proc.ts';
import { nowMs } from './sink.ts';
import { runSmtpLoad } from './smtp-load.ts';
import { startSinkProcess } from './sink-process.ts';
import { buildTiers } from './tiers.ts';
import { freePort } from '../test/helpers/ports.ts';
import { percentiles, perSecond, type Percentiles } from './stats.ts';

interface ModeResult {
  accepted: number;
  notAccepted: number;
  failures: Record<string, number>;
  delivered: number | null;
  duplicates: number | null;
  queuedAtEnd: number;
  seconds: { accepting: number; delivering: number | null };
  throughput: { acceptedPerSecond: number | null; deliveredPerSecond: number | null };
  latencyMs: (Percentiles & { from: string; to: string }) | null;
}

/** The commit measured, and whether the working tree differed from it. */
function revision(): { commit: string; dirty: boolean } | null {
  try {
    const commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], { encoding: 'utf8' }).trim() !== '';
    return { commit, dirty };
  } catch {
    return null;
  }
}

function progress(line: string): void {
  process.stderr.write(`bench: ${line}\n`);
}

async function sleep(ms: number): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
}

/** Waits until the sink holds `target` distinct messages; false on timeout. */
async function waitForDeliveries(pipeline: Pipeline, target: number, deadline: number): Promise<boolean> {
  let lastReport = 0;
  for (;;) {
    const stats = await pipeline.sink!.stats();
    const unique = stats.received - stats.duplicates;
    if (unique >= target) return true;
    if (Date.now() > deadline) return false;
    if (Date.now() - lastReport > 5000) {
      progress(`delivered ${unique}/${target}, queued ${await pipeline.queued()}`);
      lastReport = Date.now();
    }
    await sleep(100);
  }
}

/** Arrival time of the first copy of each measured message (ids 0..n-1), and the copies beyond it. */
async function arrivals(pipeline: Pipeline, n: number): Promise<{ firstArrival: Float64Array; duplicates: number }> {
  const { ids, times, kinds } = await pipeline.sink!.records();
  const firstArrival = new Float64Array(n).fill(NaN);
  let duplicates = 0;
  ids.forEach((id, i) => {
    if (id >= n || kinds[i] !== 'id') return; // warm-up
    if (Number.isNaN(firstArrival[id]!)) firstArrival[id] = times[i]!;
    else duplicates++;
  });
  return { firstArrival, duplicates };
}

function maxOf(values: Float64Array): number {
  let max = -Infinity;
  for (const v of values) if (v > max) max = v;
  return max;
}

function minOf(values: Float64Array): number {
  let min = Infinity;
  for (const v of values) if (v < min) min = v;
  return min;
}

async function e2e(args: BenchArgs, pipeline: Pipeline, deadline: number, measured: () => void): Promise<ModeResult> {
  await pipeline.startBeanstalkd();
  await pipeline.startSink();
  await pipeline.startPostoffice();
  await pipeline.startWorkers();
  await pipeline.startMailman();
  const smtp = (offset: number, messages: number, rate?: number) =>
    runSmtpLoad({
      host: '127.0.0.1',
      port: pipeline.mailman!.port,
      ...benchPlan(offset, messages, { concurrency: args.concurrency, size: args.size, ratePerSecond: rate }),
      deadlineMs: deadline - Date.now(),
    });

  if (args.warmup > 0) {
    progress(`warm-up: ${args.warmup} messages`);
    const warm = await smtp(args.messages, args.warmup);
    await waitForDeliveries(pipeline, warm.accepted, deadline);
  }
  const already = (await pipeline.sink!.stats()).received;
  measured();
  progress(`measuring: ${args.messages} messages of ${args.size} bytes over ${args.concurrency} SMTP connections${args.rate ? ` at ${args.rate}/s` : ''}`);
  const load = await smtp(0, args.messages, args.rate);
  progress(`accepted ${load.accepted} in ${round((load.finishedAt - load.startedAt) / 1000)} s`);
  const complete = await waitForDeliveries(pipeline, already + load.accepted, deadline);
  if (!complete) progress('timed out waiting for deliveries');
  const { firstArrival, duplicates } = await arrivals(pipeline, args.messages);

  const latency = new Float64Array(args.messages).fill(NaN);
  let delivered = 0;
  for (let id = 0; id < args.messages; id++) {
    if (Number.isNaN(firstArrival[id]!)) continue;
    delivered++;
    // Delivery can beat the 250 to the client (the post office puts before it answers): count that as 0.
    if (!Number.isNaN(load.acceptedAt[id]!)) latency[id] = Math.max(0, firstArrival[id]! - load.acceptedAt[id]!);
  }
  const lastAccepted = maxOf(load.acceptedAt);
  const lastArrival = maxOf(firstArrival);
  const p = percentiles(latency);
  return {
    accepted: load.accepted,
    notAccepted: load.notAccepted,
    failures: load.failures,
    delivered,
    duplicates,
    queuedAtEnd: await pipeline.queued(),
    seconds: { accepting: round((lastAccepted - load.startedAt) / 1000, 2), delivering: round((lastArrival - load.startedAt) / 1000, 2) },
    throughput: { acceptedPerSecond: perSecond(load.accepted, load.startedAt, lastAccepted), deliveredPerSecond: perSecond(delivered, load.startedAt, lastArrival) },
    latencyMs: p && { ...p, from: "mailman's 250 to the client", to: 'arrival at the sink' },
  };
}

async function postofficeOnly(args: BenchArgs, pipeline: Pipeline, deadline: number, measured: () => void): Promise<ModeResult> {
  await pipeline.startBeanstalkd();
  await pipeline.startPostoffice();
  const http = (offset: number, messages: number, rate?: number) =>
    runHttpLoad({
      url: pipeline.postoffice!.url,
      fqdn: BENCH_FQDN,
      key: pipeline.key,
      ...benchPlan(offset, messages, { concurrency: args.concurrency, size: args.size, ratePerSecond: rate }),
    });
  if (args.warmup > 0) {
    progress(`warm-up: ${args.warmup} requests`);
    await http(args.messages, args.warmup);
  }
  measured();
  progress(`measuring: ${args.messages} signed requests of ${args.size}-byte messages, ${args.concurrency} in flight${args.rate ? ` at ${args.rate}/s` : ''}`);
  const load = await http(0, args.messages, args.rate);
  if (Date.now() > deadline) progress('past the deadline');
  const lastAccepted = maxOf(load.acceptedAt);
  const p = percentiles(load.latencyMs);
  return {
    accepted: load.accepted,
    notAccepted: args.messages - load.accepted,
    failures: load.failures,
    delivered: null,
    duplicates: null,
    queuedAtEnd: await pipeline.queued(),
    seconds: { accepting: round((lastAccepted - load.startedAt) / 1000, 2), delivering: null },
    throughput: { acceptedPerSecond: perSecond(load.accepted, load.startedAt, lastAccepted), deliveredPerSecond: null },
    latencyMs: p && { ...p, from: 'request sent', to: '202 received' },
  };
}

/** Puts `count` jobs as the post office would, over several connections. */
async function prefill(pipeline: Pipeline, args: BenchArgs, count: number): Promise<void> {
  const connections = 8;
  let next = 0;
  await Promise.all(
    Array.from({ length: connections }, async () => {
      const client = new BeanstalkClient({ host: '127.0.0.1', port: pipeline.beanstalkd!.port });
      await client.connect();
      await client.use(TUBE.outbound);
      for (let id = next++; id < count; id = next++) {
        const job: OutboundJob = {
          v: 1,
          id: randomUUID(),
          fqdn: BENCH_FQDN,
          mailfrom: BENCH_SENDER,
          rcpttos: [recipientFor(id)],
          data: benchMessage(id, args.size).toString('base64'),
          receivedAt: Date.now(),
          attempts: 0,
        };
        await client.put(encodeJob(job), { ttrSeconds: 600 });
      }
      await client.close();
    }),
  );
}

async function workerOnly(args: BenchArgs, pipeline: Pipeline, deadline: number, measured: () => void): Promise<ModeResult> {
  await pipeline.startBeanstalkd();
  await pipeline.startSink();
  progress(`putting ${args.messages} jobs into beanstalkd`);
  await prefill(pipeline, args, args.messages);
  const queued = await pipeline.queued();
  measured();
  progress(`${queued} jobs queued; starting ${args.workers} worker(s) with ${args.workerConcurrency} reserve loops each`);
  await pipeline.startWorkers();
  const complete = await waitForDeliveries(pipeline, args.messages, deadline);
  if (!complete) progress('timed out waiting for deliveries');
  const { firstArrival, duplicates } = await arrivals(pipeline, args.messages);
  const delivered = firstArrival.filter((t) => !Number.isNaN(t)).length;
  const first = minOf(firstArrival);
  const last = maxOf(firstArrival);
  return {
    accepted: queued,
    notAccepted: 0,
    failures: {},
    delivered,
    duplicates,
    queuedAtEnd: await pipeline.queued(),
    seconds: { accepting: 0, delivering: round((last - first) / 1000, 2) },
    // From the first delivery to the last: the worker's start-up is not part of its rate.
    throughput: { acceptedPerSecond: null, deliveredPerSecond: perSecond(delivered - 1, first, last) },
    latencyMs: null,
  };
}

function cpuDelta(after: Record<string, ProcessFigures>, before: Record<string, ProcessFigures>): Record<string, ProcessFigures & { cpuSecondsMeasured: number }> {
  return Object.fromEntries(
    Object.entries(after).map(([name, figures]) => [name, { ...figures, cpuSecondsMeasured: round(figures.cpuSeconds - (before[name]?.cpuSeconds ?? 0), 2) }]),
  );
}

function writeReport(report: unknown, out: string): void {
  const json = JSON.stringify(report, null, 2);
  process.stdout.write(`${json}\n`);
  const file = resolve(out);
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, `${json}\n`);
  progress(`written to ${file}`);
}

function machineInfo(): Record<string, unknown> {
  return { cpus: cpus().length, cpuModel: cpus()[0]?.model ?? 'unknown', node: process.version, kernel: release(), loadAverageAtStart: loadavg().map((l) => round(l, 2)) };
}

/** `--mode matrix`: every relay up at once, each cell on one relay at a time (bench/matrix.ts). */
async function matrixMode(args: BenchArgs): Promise<void> {
  const unavailable = await matrixUnavailable(args);
  if (unavailable) {
    progress(unavailable);
    process.exitCode = 69; // EX_UNAVAILABLE
    return;
  }
  if (args.runtime === 'build' && args.relays.some((r) => r.startsWith('hedwig'))) {
    progress('compiling the tiers (tsconfig.build.json) into data/bench/dist');
    buildTiers();
  }
  const dir = mkdtempSync(join(tmpdir(), 'hedwig-bench-matrix-'));
  // Postfix's daemons run as its mail_owner and must reach their queue inside this directory.
  chmodSync(dir, 0o711);
  const watcher = new ProcessWatcher();
  const machine = machineInfo();
  const startedAt = new Date().toISOString();
  const busyBefore = machineBusySeconds();
  let matrix: Matrix | undefined;
  let sink: Awaited<ReturnType<typeof startSinkProcess>> | undefined;
  const cleanUp = async () => {
    watcher.stop();
    await matrix?.stop();
    await sink?.stop();
    if (args.keep) progress(`configs, logs and data kept in ${dir}`);
    else rmSync(dir, { recursive: true, force: true });
  };
  // A Postfix master outlives the bench unless stopped: stop everything on Ctrl-C too.
  const onSignal = (signal: NodeJS.Signals) => {
    progress(`${signal}: stopping the relays`);
    void cleanUp().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    sink = await startSinkProcess(await freePort());
    watcher.watch('sink', sink.pid);
    matrix = new Matrix(args, dir, watcher, sink);
    await matrix.start();
    await matrix.warmUp();
    const cells = [];
    for (const cell of args.cells) cells.push(await matrix.runCell(cell));
    const summary = summarize(cells);
    const busyAfter = machineBusySeconds();
    const otherInCells = summary.reduce((sum, r) => sum + (r.otherCpuSeconds ?? 0), 0);
    const report = {
      mode: 'matrix',
      command: `npm run bench -- ${process.argv.slice(2).join(' ')}`.trim(),
      startedAt,
      finishedAt: new Date().toISOString(),
      revision: revision(),
      machine: {
        ...machine,
        // CPU the rest of the machine used while the cells ran (sum over cells): anything well above 0 means the figures are understated.
        otherCpuSeconds: round(otherInCells, 2),
        busySecondsWholeRun: busyAfter !== undefined && busyBefore !== undefined ? round(busyAfter - busyBefore, 1) : null,
      },
      params: {
        messagesPerCell: args.messages,
        size: args.size,
        cells: args.cells.map((c) => c.name),
        relays: args.relays,
        probeRate: args.probeRate,
        warmup: args.warmup,
        workers: args.workers,
        workerConcurrency: args.workerConcurrency,
        fsyncMs: args.fsyncMs,
        runtime: args.runtime,
        logLevel: args.logLevel,
      },
      relays: Object.fromEntries(matrix.relays.map((r) => [r.name, r.about])),
      summary,
      targets: judgeTargets(cells),
      cells,
      notes: [
        'Postfix signs nothing (no DKIM milter): hedwig signs every message with RSA-2048; hedwig-nodkim, when run, is the like-for-like relay.',
        'cpuSecondsPer1000Messages: CPU seconds (user+system) per 1,000 messages handled in the cell (client messages plus probes), per process or group of processes; seconds per 1,000 messages = milliseconds per message. Postfix groups are its daemons by name; exited-unsampled is what short-lived daemons used after their last sample (from the master\'s count of its reaped children).',
        'peakRssMB: VmHWM, the highest resident set size of the process (the largest of a group) up to the end of the cell.',
        'accept latency: final dot written -> 250; delivery latency: 250 -> arrival at the sink; transaction: connect (or MAIL on a kept connection) -> 250.',
      ],
    };
    progress(`\n${summaryTable(summary)}`);
    writeReport(report, args.out ?? join('data', 'bench', 'matrix.json'));
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await cleanUp();
  }
}

async function main(): Promise<void> {
  let args: BenchArgs;
  try {
    args = parseBenchArgs(process.argv.slice(2));
  } catch (err) {
    const message = (err as Error).message;
    if (message === USAGE) {
      process.stdout.write(`${USAGE}\n`);
      return;
    }
    process.stderr.write(`${message}\n`);
    process.exitCode = 64;
    return;
  }
  if (args.mode === 'matrix') return matrixMode(args);
  if (args.runtime === 'build') {
    progress('compiling the tiers (tsconfig.build.json) into data/bench/dist');
    buildTiers();
  }
  const dir = mkdtempSync(join(tmpdir(), `hedwig-bench-${args.mode}-`));
  const watcher = new ProcessWatcher();
  const pipeline = new Pipeline(args, dir, watcher);
  const deadline = Date.now() + args.timeoutS * 1000;
  let before: Record<string, ProcessFigures> = {};
  let benchCpuBefore = process.cpuUsage();
  let busyBefore = machineBusySeconds();
  let measuredFrom = Date.now();
  const measured = () => {
    before = watcher.report();
    benchCpuBefore = process.cpuUsage();
    busyBefore = machineBusySeconds();
    measuredFrom = Date.now();
  };
  const loadAverageAtStart = loadavg().map((l) => round(l, 2));
  const startedAt = new Date().toISOString();
  let result: ModeResult;
  try {
    const run = { e2e, postoffice: postofficeOnly, worker: workerOnly }[args.mode as 'e2e' | 'postoffice' | 'worker'];
    result = await run(args, pipeline, deadline, measured);
    const processes = cpuDelta(watcher.report(), before);
    const benchCpu = process.cpuUsage(benchCpuBefore);
    const busyAfter = machineBusySeconds();
    const measuredSeconds = (Date.now() - measuredFrom) / 1000;
    const ours = Object.values(processes).reduce((sum, p) => sum + p.cpuSecondsMeasured, 0) + (benchCpu.user + benchCpu.system) / 1e6;
    const busy = busyAfter !== undefined && busyBefore !== undefined ? busyAfter - busyBefore : undefined;
    const sink = pipeline.sink ? await pipeline.sink.stats() : undefined;
    const heap = await pipeline.heapUsedMB();
    for (const [name, heapUsedMB] of Object.entries(heap)) if (processes[name]) Object.assign(processes[name], { heapUsedMB });
    const benchCpuSeconds = (benchCpu.user + benchCpu.system) / 1e6;
    const handled = args.mode === 'worker' ? (result.delivered ?? 0) : result.accepted;
    const msPerMessage = (seconds: number) => (handled > 0 ? round((seconds * 1000) / handled, 3) : null);
    const isHarness = (name: string) => name === 'sink';
    const hedwigSeconds = Object.entries(processes).reduce((sum, [name, p]) => sum + (isHarness(name) ? 0 : p.cpuSecondsMeasured), 0);
    const hedwigMs = msPerMessage(hedwigSeconds);
    const cpuCost = {
      msPerMessage: {
        ...Object.fromEntries(Object.entries(processes).map(([name, p]) => [name, msPerMessage(p.cpuSecondsMeasured)])),
        bench: msPerMessage(benchCpuSeconds),
        hedwig: hedwigMs,
      },
      // What the CPU cost alone allows if hedwig had every core to itself (the sink and the load generator elsewhere).
      ceilingPerSecondOnTheseCores: hedwigMs ? Math.round((cpus().length * 1000) / hedwigMs) : null,
    };
    const report = {
      mode: args.mode,
      command: `npm run bench -- ${process.argv.slice(2).join(' ')}`.trim(),
      startedAt,
      revision: revision(),
      machine: {
        cpus: cpus().length,
        cpuModel: cpus()[0]?.model ?? 'unknown',
        node: process.version,
        kernel: release(),
        loadAverageAtStart,
        // CPU the rest of the machine used during the measured run: anything well above 0 means the figures are understated.
        otherCpuSeconds: busy === undefined ? null : round(Math.max(0, busy - ours), 2),
        cpuBusyShare: busy === undefined ? null : round(busy / (measuredSeconds * cpus().length), 2),
      },
      params: { messages: args.messages, size: args.size, concurrency: args.concurrency, rate: args.rate ?? null, workers: args.workers, workerConcurrency: args.workerConcurrency, warmup: args.warmup, fsyncMs: args.fsyncMs, runtime: args.runtime, logLevel: args.logLevel },
      dkim: args.mode === 'postoffice' ? null : pipeline.dkim,
      // Warm-up messages included: the sink checks each arrival for a DKIM-Signature field.
      sink: sink ? { received: sink.received, dkimSigned: sink.dkimSigned, connections: sink.connections } : null,
      result,
      cpuCost,
      processes: {
        ...processes,
        bench: {
          peakRssMB: round(process.resourceUsage().maxRSS / 1024),
          cpuSecondsMeasured: round(benchCpuSeconds, 2),
        },
      },
      notes: [
        'cpuSecondsMeasured: CPU time (user+system) during the measured run only; peakRssMB: VmHWM over the whole process life; heapUsedMB: live V8 heap at the end (from the tier\'s /metrics); cpuCost.msPerMessage.hedwig: mailman, post office, worker(s) and beanstalkd together.',
        ...(args.mode !== 'postoffice' && !pipeline.dkim ? ['the worker has no dkim config key yet: messages were not DKIM-signed'] : []),
      ],
    };
    const json = JSON.stringify(report, null, 2);
    process.stdout.write(`${json}\n`);
    const out = resolve(args.out ?? join('data', 'bench', `${args.mode}.json`));
    mkdirSync(dirname(out), { recursive: true });
    writeFileSync(out, `${json}\n`);
    progress(`written to ${out}`);
  } finally {
    watcher.stop();
    await pipeline.stop();
    if (args.keep) progress(`configs, logs and data kept in ${dir}`);
    else rmSync(dir, { recursive: true, force: true });
  }
}

await main();
