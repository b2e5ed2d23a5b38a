import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../test/helpers/ports.ts';
import type { BenchArgs } from './args.ts';
import { clientMissing } from './clients.ts';
import { Matrix } from './matrix.ts';
import { judgeTargets, summarize, summaryTable } from './matrix-report.ts';
import { postfixUnavailable } from './postfix.ts';
import { ProcessWatcher, machineBusySeconds, round } from './proc.ts';
import { machineInfo, progress, revision, writeReport } from './report.ts';
import { startSinkProcess } from './sink-process.ts';
import { buildTiers } from './tiers.ts';

/** Why the matrix cannot run here (a missing client or Postfix), or undefined. */
async function matrixUnavailable(args: BenchArgs): Promise<string | undefined> {
  const clients = new Set(args.cells.map((c) => c.client));
  for (const client of ['smtp-source', 'msmtp'] as const) {
    const missing = clients.has(client) ? clientMissing(client) : undefined;
    if (missing) return missing;
  }
  if (args.relays.includes('postfix')) {
    const why = await postfixUnavailable();
    if (why) return `${why} (or leave Postfix out: --relays hedwig)`;
  }
  return undefined;
}

/** `--mode matrix`: every relay up at once, each cell on one relay at a time (bench/matrix.ts). */
export async function matrixMode(args: BenchArgs): Promise<void> {
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
