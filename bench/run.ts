/**
 * `npm run bench -- [flags]`: drives hedwig on loopback and reports throughput, latency
 * and per-process resources as JSON (stdout and --out). See bench/args.ts for the flags
 * and the README section "Benchmark" for figures measured with it. The modes: bench/modes.ts
 * (e2e, postoffice, worker: one pipeline) and bench/matrix-mode.ts (every relay, cell by cell);
 * this file adds the CPU and memory figures around a single-pipeline mode.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, loadavg, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { USAGE, parseBenchArgs, type BenchArgs } from './args.ts';
import { matrixMode } from './matrix-mode.ts';
import { e2e, postofficeOnly, workerOnly, type ModeResult } from './modes.ts';
import { Pipeline } from './pipeline.ts';
import { ProcessWatcher, machineBusySeconds, round, type ProcessFigures } from './proc.ts';
import { progress, revision, writeReport } from './report.ts';
import { buildTiers } from './tiers.ts';

function cpuDelta(after: Record<string, ProcessFigures>, before: Record<string, ProcessFigures>): Record<string, ProcessFigures & { cpuSecondsMeasured: number }> {
  return Object.fromEntries(
    Object.entries(after).map(([name, figures]) => [name, { ...figures, cpuSecondsMeasured: round(figures.cpuSeconds - (before[name]?.cpuSeconds ?? 0), 2) }]),
  );
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
    writeReport(report, args.out ?? join('data', 'bench', `${args.mode}.json`));
  } finally {
    watcher.stop();
    await pipeline.stop();
    if (args.keep) progress(`configs, logs and data kept in ${dir}`);
    else rmSync(dir, { recursive: true, force: true });
  }
}

await main();
