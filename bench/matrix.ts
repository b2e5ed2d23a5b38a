/**
 * `npm run bench -- --mode matrix`: the relays driven by real clients, cell by cell (bench/cells.ts).
 * Every relay is up for the whole run and delivers to the same sink; a cell runs on one
 * relay at a time, so each has the machine to itself. Per cell and relay the report gives
 * throughput (accepted by the client, delivered at the sink), latency (end of DATA -> 250,
 * 250 -> arrival at the sink), CPU per 1,000 messages per process and peak RSS per process.
 *
 * smtp-source and msmtp report no per-message times, so the latencies of their cells come
 * from probes: the bench's own load generator sends `--probe-rate` messages per second
 * (the cell's connection shape) alongside the real client, through the same
 * relay, and times each one. In the rate cells the load generator is the client and every
 * message is timed.
 */
import { mkdirSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import type { BenchArgs } from './args.ts';
import type { CellSpec, RelayName } from './cells.ts';
import { runMsmtp, runSmtpSource, type ClientRun } from './clients.ts';
import type { CellResult, RelayCellResult } from './matrix-report.ts';
import { benchPlan } from './message.ts';
import { machineBusySeconds, reapedChildrenCpuSeconds, round, type ProcessFigures, type ProcessWatcher } from './proc.ts';
import { startRelays, type MatrixRelay } from './relays.ts';
import { progress } from './report.ts';
import { nowMs } from './sink.ts';
import type { SinkProcess } from './sink-process.ts';
import { runSmtpLoad, type SmtpLoadResult } from './smtp-load.ts';
import { percentiles } from './stats.ts';

/** Enough probe connections that a slow relay (100 ms or more per message) still gets the probe rate. */
const probeConnections = (rate: number) => Math.max(2, Math.ceil(rate / 4));
/** Probe ids start here, far above any warm-up or load id, so a late arrival cannot be mistaken for one. */
const PROBE_ID_BASE = 0;
const WARMUP_ID_BASE = 500_000_000;

async function sleep(ms: number): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
}

interface Snapshot {
  processes: Record<string, ProcessFigures>;
  busy: number | undefined;
  clients: number;
  bench: NodeJS.CpuUsage;
  at: number;
}

function snapshot(watcher: ProcessWatcher): Snapshot {
  return { processes: watcher.report(), busy: machineBusySeconds(), clients: reapedChildrenCpuSeconds(), bench: process.cpuUsage(), at: Date.now() };
}

/** Waits until the sink holds `expected` distinct arrivals of each kind from `relay`, or nothing arrives for `stallMs`. */
async function waitForArrivals(sink: SinkProcess, relay: MatrixRelay, expected: { rcpt: number; id: number }, deadline: number, stallMs = 30_000): Promise<void> {
  let last = -1;
  let lastChange = Date.now();
  let lastReport = Date.now();
  for (;;) {
    const stats = await sink.stats();
    const got = stats.byRelay[relay.ehloName];
    const unique = got ? got.received - got.duplicates : 0;
    if (unique >= expected.rcpt + expected.id) return;
    if (unique !== last) {
      last = unique;
      lastChange = Date.now();
    }
    if (Date.now() - lastChange > stallMs && ((await relay.queued()) ?? 0) === 0) {
      progress(`${relay.name}: ${unique} of ${expected.rcpt + expected.id} arrived and its queue is empty: giving up on the rest`);
      return;
    }
    if (Date.now() > deadline) {
      progress(`${relay.name}: timed out with ${unique} of ${expected.rcpt + expected.id} arrived`);
      return;
    }
    if (Date.now() - lastReport > 10_000) {
      progress(`${relay.name}: ${unique}/${expected.rcpt + expected.id} arrived, ${await relay.queued()} queued`);
      lastReport = Date.now();
    }
    await sleep(50);
  }
}

function ratio(a: number | undefined, b: number | undefined): number | null {
  return a !== undefined && b !== undefined && b > 0 ? round(a / b, 2) : null;
}

export class Matrix {
  relays: MatrixRelay[] = [];
  /** The highest rate hedwig delivered in a closed-loop cell so far (for rate-half). */
  #hedwigBest = 0;

  constructor(
    readonly args: BenchArgs,
    readonly dir: string,
    readonly watcher: ProcessWatcher,
    readonly sink: SinkProcess,
  ) {}

  async start(): Promise<void> {
    const maxSessions = Math.max(...this.args.cells.map((c) => c.sessions)) + probeConnections(this.args.probeRate);
    this.relays = await startRelays(this.args.relays, this.args, this.dir, this.watcher, this.sink, maxSessions);
  }

  async stop(): Promise<void> {
    for (const relay of [...this.relays].reverse()) await relay.stop().catch((err: unknown) => progress(`${relay.name}: stop failed: ${String(err)}`));
    this.relays = [];
  }

  /** Messages through each relay at full speed before the first cell: JIT, kept connections, Postfix's process pool. */
  async warmUp(): Promise<void> {
    if (this.args.warmup === 0) return;
    for (const relay of this.relays) {
      progress(`${relay.name}: warm-up, ${this.args.warmup} messages`);
      await this.sink.reset();
      const load = await runSmtpLoad({ host: '127.0.0.1', port: relay.port, ...benchPlan(WARMUP_ID_BASE, this.args.warmup, { concurrency: 50, size: this.args.size }) });
      await waitForArrivals(this.sink, relay, { rcpt: 0, id: load.accepted }, Date.now() + this.args.timeoutS * 1000);
    }
  }

  async runCell(cell: CellSpec): Promise<CellResult> {
    const rate = cell.rate === 'half' ? (this.args.rate ?? Math.max(1, Math.round(this.#hedwigBest / 2) || 100)) : (cell.rate ?? null);
    const result: CellResult = { cell: cell.name, client: cell.client, connection: cell.connection, sessions: cell.sessions, ratePerSecond: rate, relays: {}, ratio: {} };
    for (const relay of this.relays) {
      progress(`${cell.name}: ${relay.name}, ${this.args.messages} messages${rate ? ` at ${rate}/s` : ''}`);
      try {
        const outcome = await this.#runOn(cell, relay, rate);
        result.relays[relay.name] = outcome;
        progress(
          `${cell.name}: ${relay.name}: accepted ${outcome.throughput.acceptedPerSecond}/s, delivered ${outcome.throughput.deliveredPerSecond}/s, ` +
            `p99 acceptance ${outcome.latencyMs.acceptance?.p99 ?? '-'} ms, delivery ${outcome.latencyMs.delivery?.p99 ?? '-'} ms, other CPU ${outcome.machine.otherCpuSeconds} s`,
        );
        if (relay.name === 'hedwig' && cell.client !== 'load') this.#hedwigBest = Math.max(this.#hedwigBest, outcome.throughput.deliveredPerSecond);
      } catch (err) {
        result.relays[relay.name] = { error: (err as Error).message };
        progress(`${cell.name}: ${relay.name}: ${(err as Error).message}`);
      }
      await sleep(1000); // let the relay's last deliveries and timers settle before the next one starts
    }
    const figures = (name: RelayName) => {
      const r = result.relays[name];
      return r && 'throughput' in r ? r.throughput : undefined;
    };
    for (const name of ['hedwig', 'hedwig-nodkim'] as const) {
      if (!figures(name) || !figures('postfix')) continue;
      result.ratio[`${name}/postfix`] = {
        acceptedPerSecond: ratio(figures(name)!.acceptedPerSecond, figures('postfix')!.acceptedPerSecond),
        deliveredPerSecond: ratio(figures(name)!.deliveredPerSecond, figures('postfix')!.deliveredPerSecond),
      };
    }
    return result;
  }

  async #runOn(cell: CellSpec, relay: MatrixRelay, rate: number | null): Promise<RelayCellResult> {
    const { args, sink } = this;
    const deadline = Date.now() + args.timeoutS * 1000;
    await sink.reset();
    const before = snapshot(this.watcher);
    const startedAt = nowMs();
    let client: ClientRun | undefined;
    let load: SmtpLoadResult | undefined;
    let probes: SmtpLoadResult | undefined;
    const shape = { connectionPerMessage: cell.connection === 'per-message', pipelining: cell.client !== 'smtp-source' };

    if (cell.client === 'load') {
      load = await runSmtpLoad({ host: '127.0.0.1', port: relay.port, ...benchPlan(0, args.messages, { concurrency: cell.sessions, size: args.size, ratePerSecond: rate ?? undefined }), ...shape, deadlineMs: deadline - Date.now() });
    } else {
      const stopProbes = new AbortController();
      const probing = runSmtpLoad({
        host: '127.0.0.1',
        port: relay.port,
        ...benchPlan(PROBE_ID_BASE, Math.max(100, Math.ceil((args.timeoutS * args.probeRate) / 1)), { concurrency: probeConnections(args.probeRate), size: args.size, ratePerSecond: args.probeRate }),
        ...shape,
        signal: stopProbes.signal,
      });
      try {
        const options = { port: relay.port, messages: args.messages, sessions: cell.sessions, size: args.size };
        mkdirSync(this.dir, { recursive: true });
        client = cell.client === 'msmtp' ? await runMsmtp({ ...options, messageFile: join(this.dir, 'cron-message.eml') }) : await runSmtpSource({ ...options, kept: cell.connection === 'kept' });
      } finally {
        stopProbes.abort();
        probes = await probing;
      }
    }
    const clientDone = nowMs();
    // smtp-source stops at the first refusal without saying how many it sent: then what arrived is what was accepted.
    const knownAccepted = load ? load.accepted : client!.exitCode === 0 || client!.failed > 0 ? args.messages - client!.failed : undefined;
    if (client && knownAccepted === undefined) progress(`${relay.name}: ${client.command.split(' ')[0]} exited with ${client.exitCode}: ${client.stderr.trim().split('\n').slice(-3).join(' | ')}`);
    const timed = load ?? probes!;
    await waitForArrivals(sink, relay, { rcpt: load ? 0 : (knownAccepted ?? args.messages), id: timed.accepted }, deadline);
    const after = snapshot(this.watcher);
    const records = await sink.records();
    const stats = await sink.stats();

    // First arrival per message of this relay; the client's messages are numbered 1..n, the timed ones 0..n-1.
    const firstRcpt = new Map<number, number>();
    const firstId = new Map<number, number>();
    let foreignArrivals = 0;
    let lastArrival = startedAt;
    records.ids.forEach((id, i) => {
      if (records.relays[i] !== relay.ehloName) {
        foreignArrivals++;
        return;
      }
      const map = records.kinds[i] === 'rcpt' ? firstRcpt : firstId;
      if (!map.has(id)) map.set(id, records.times[i]!);
      lastArrival = Math.max(lastArrival, records.times[i]!);
    });

    const acceptance = new Float64Array(timed.acceptedAt.length).fill(NaN);
    const delivery = new Float64Array(timed.acceptedAt.length).fill(NaN);
    const transaction = new Float64Array(timed.acceptedAt.length).fill(NaN);
    for (let i = 0; i < timed.acceptedAt.length; i++) {
      const acceptedAt = timed.acceptedAt[i]!;
      if (Number.isNaN(acceptedAt)) continue;
      acceptance[i] = acceptedAt - timed.submittedAt[i]!;
      transaction[i] = acceptedAt - timed.beganAt[i]!;
      const arrived = firstId.get(PROBE_ID_BASE + i);
      // A delivery can beat the 250 to the client (hedwig puts before it answers): count that as 0.
      if (arrived !== undefined) delivery[i] = Math.max(0, arrived - acceptedAt);
    }
    const delivered = load ? firstId.size : firstRcpt.size;
    const accepted = knownAccepted ?? delivered;
    const handled = accepted + (load ? 0 : timed.accepted);
    const clientSeconds = ((load ? load.finishedAt : clientDone) - startedAt) / 1000;

    // CPU and memory during this cell, per process (the relay's own, the sink's, the clients', the bench's).
    const cpu: Record<string, number> = {};
    const rss: Record<string, number> = {};
    const perMessage: Record<string, { syscalls: number; contextSwitches: number }> = {};
    let watchedSeconds = 0;
    let relaySeconds = 0;
    for (const [name, figures] of Object.entries(after.processes)) {
      const seconds = Math.max(0, figures.cpuSeconds - (before.processes[name]?.cpuSeconds ?? 0));
      watchedSeconds += seconds;
      if (!name.startsWith(relay.prefix) && name !== 'sink') continue;
      if (name.startsWith(relay.prefix)) relaySeconds += seconds;
      cpu[name] = handled > 0 ? round((seconds * 1000) / handled, 3) : 0;
      if (figures.peakRssMB > 0) rss[name] = figures.peakRssMB;
      const was = before.processes[name];
      if (handled > 0 && figures.syscalls) {
        perMessage[name] = {
          syscalls: round(((figures.syscalls ?? 0) - (was?.syscalls ?? 0)) / handled, 2),
          contextSwitches: round(((figures.contextSwitches ?? 0) - (was?.contextSwitches ?? 0)) / handled, 2),
        };
      }
    }
    const clientSecondsCpu = after.clients - before.clients;
    const benchUsage = process.cpuUsage(before.bench);
    const benchSeconds = (benchUsage.user + benchUsage.system) / 1e6;
    cpu[`${relay.name} (all its processes)`] = handled > 0 ? round((relaySeconds * 1000) / handled, 3) : 0;
    cpu[cell.client === 'load' ? 'load generator (bench process)' : `${cell.client} (client processes)`] = handled > 0 ? round(((cell.client === 'load' ? benchSeconds : clientSecondsCpu) * 1000) / handled, 3) : 0;
    if (cell.client !== 'load') cpu['probes (bench process)'] = handled > 0 ? round((benchSeconds * 1000) / handled, 3) : 0;
    const busy = after.busy !== undefined && before.busy !== undefined ? after.busy - before.busy : undefined;
    const ours = watchedSeconds + clientSecondsCpu + benchSeconds;
    const wall = (after.at - before.at) / 1000;
    const cores = cpus().length;
    const relayCounts = stats.byRelay[relay.ehloName];

    return {
      relay: relay.name,
      command: client ? client.command : `bench load generator: ${cell.sessions} kept connections, pipelined, ${rate}/s open loop`,
      messages: args.messages,
      accepted,
      failures: load ? load.failures : { exitCode: client!.exitCode, stderr: client!.stderr.slice(0, 500) },
      delivered,
      missing: Math.max(0, accepted - delivered),
      duplicates: relayCounts?.duplicates ?? 0,
      foreignArrivals,
      seconds: { client: round(clientSeconds, 2), delivering: round((lastArrival - startedAt) / 1000, 2) },
      throughput: {
        acceptedPerSecond: clientSeconds > 0 ? Math.round(accepted / clientSeconds) : 0,
        deliveredPerSecond: lastArrival > startedAt ? Math.round(delivered / ((lastArrival - startedAt) / 1000)) : 0,
      },
      latencyMs: {
        source: load ? 'every message (the bench load generator is the client)' : `probes: the bench load generator, up to ${probeConnections(args.probeRate)} connections at ${args.probeRate}/s, ${cell.connection === 'kept' ? 'kept connections' : 'a new connection per message'}, ${shape.pipelining ? 'pipelined' : 'one command per reply, as smtp-source'}; ${timed.accepted} timed`,
        acceptance: percentiles(acceptance),
        delivery: percentiles(delivery),
        transaction: percentiles(transaction),
      },
      cpuSecondsPer1000Messages: cpu,
      perMessage,
      peakRssMB: rss,
      meanBytesAtSink: relayCounts && relayCounts.received > 0 ? Math.round(relayCounts.bytes / relayCounts.received) : null,
      queuedAtEnd: await relay.queued(),
      machine: {
        otherCpuSeconds: busy === undefined ? null : round(Math.max(0, busy - ours), 2),
        cpuBusyShare: busy === undefined || wall <= 0 ? null : round(busy / (wall * cores), 2),
      },
    };
  }
}
