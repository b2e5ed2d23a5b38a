import type { CellSpec, RelayName } from './cells.ts';
import type { Percentiles } from './stats.ts';

/** What the matrix (bench/matrix.ts) measured per cell and relay, and the summary made from it. */

export interface RelayCellResult {
  relay: RelayName;
  /** The client's command line (for a rate cell, the load generator's settings). */
  command: string;
  messages: number;
  accepted: number;
  /** Client-side failures: smtp-source's exit status and message, msmtp's failed processes, the load generator's reply codes. */
  failures: Record<string, number> | { exitCode: number | null; stderr: string };
  delivered: number;
  /** Accepted but not at the sink when the cell ended. */
  missing: number;
  duplicates: number;
  /** Arrivals from another relay during this cell (should be 0). */
  foreignArrivals: number;
  seconds: { client: number; delivering: number };
  throughput: { acceptedPerSecond: number; deliveredPerSecond: number };
  latencyMs: {
    source: string;
    /** End of DATA (final dot written) -> 250. */
    acceptance: Percentiles | null;
    /** 250 -> arrival at the sink. */
    delivery: Percentiles | null;
    /** Connection opened (or MAIL for kept connections) -> 250: what one msmtp call or cron job waits. */
    transaction: Percentiles | null;
  };
  cpuSecondsPer1000Messages: Record<string, number>;
  /** Per message and process: read/write system calls and context switches (what batching saves at high concurrency). */
  perMessage: Record<string, { syscalls: number; contextSwitches: number }>;
  peakRssMB: Record<string, number>;
  meanBytesAtSink: number | null;
  queuedAtEnd: number | null;
  machine: { otherCpuSeconds: number | null; cpuBusyShare: number | null };
}

export interface CellResult {
  cell: string;
  client: CellSpec['client'];
  connection: CellSpec['connection'];
  sessions: number;
  ratePerSecond: number | null;
  relays: Partial<Record<RelayName, RelayCellResult | { error: string }>>;
  /** hedwig / Postfix (and hedwig without DKIM / Postfix). */
  ratio: Record<string, { acceptedPerSecond: number | null; deliveredPerSecond: number | null }>;
}

/** The figures of a relay in a cell, or undefined when it failed or did not run there. */
function figures(cell: CellResult, relay: RelayName): RelayCellResult | undefined {
  const r = cell.relays[relay];
  return r && 'throughput' in r ? r : undefined;
}

export interface SummaryRow {
  cell: string;
  relay: RelayName;
  acceptedPerSecond: number | null;
  deliveredPerSecond: number | null;
  /** hedwig / Postfix, delivered per second (accepted per second). */
  ratioToPostfix: string | null;
  acceptanceP50P99Ms: string | null;
  deliveryP50P99Ms: string | null;
  /** All the relay's processes together: CPU seconds per 1,000 messages (= ms per message). */
  cpuSecondsPer1000: number | null;
  maxPeakRssMB: number | null;
  otherCpuSeconds: number | null;
  error?: string;
}

const pair = (p: { p50: number; p99: number } | null) => (p ? `${p.p50} / ${p.p99}` : null);

export function summarize(cells: CellResult[]): SummaryRow[] {
  return cells.flatMap((cell) =>
    (Object.keys(cell.relays) as RelayName[]).map((relay): SummaryRow => {
      const f = figures(cell, relay);
      const raw = cell.relays[relay];
      const error = raw && 'error' in raw ? raw.error : undefined;
      const r = cell.ratio[`${relay}/postfix`];
      return {
        cell: cell.cell,
        relay,
        acceptedPerSecond: f?.throughput.acceptedPerSecond ?? null,
        deliveredPerSecond: f?.throughput.deliveredPerSecond ?? null,
        ratioToPostfix: r ? `${r.deliveredPerSecond ?? '-'} (${r.acceptedPerSecond ?? '-'})` : null,
        acceptanceP50P99Ms: pair(f?.latencyMs.acceptance ?? null),
        deliveryP50P99Ms: pair(f?.latencyMs.delivery ?? null),
        cpuSecondsPer1000: f ? (f.cpuSecondsPer1000Messages[`${relay} (all its processes)`] ?? null) : null,
        maxPeakRssMB: f ? Math.max(0, ...Object.entries(f.peakRssMB).filter(([n]) => n !== 'sink').map(([, v]) => v)) : null,
        otherCpuSeconds: f?.machine.otherCpuSeconds ?? null,
        ...(error ? { error } : {}),
      };
    }),
  );
}

/** A plain-text table of the summary, for the terminal. */
export function summaryTable(rows: SummaryRow[]): string {
  const head = ['cell', 'relay', 'accepted/s', 'delivered/s', 'x Postfix del (acc)', 'accept p50/p99 ms', 'deliver p50/p99 ms', 'CPU s/1000', 'max RSS MB', 'other CPU s'];
  const body = rows.map((r) => [r.cell, r.relay, r.acceptedPerSecond, r.deliveredPerSecond, r.ratioToPostfix, r.acceptanceP50P99Ms, r.deliveryP50P99Ms, r.cpuSecondsPer1000, r.maxPeakRssMB, r.error ? `error: ${r.error.slice(0, 60)}` : r.otherCpuSeconds].map((v) => String(v ?? '-')));
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((row) => row[i]!.length)));
  const line = (cols: string[]) => cols.map((c, i) => c.padEnd(widths[i]!)).join('  ');
  return [line(head), line(widths.map((w) => '-'.repeat(w))), ...body.map(line)].join('\n');
}

/** Issue 13's targets, judged on what this run measured. */
export function judgeTargets(cells: CellResult[]): Record<string, unknown> {
  const closed = cells.filter((c) => c.client !== 'load');
  const twice = closed
    .map((c) => ({ cell: c.cell, ratio: c.ratio['hedwig/postfix'] }))
    .filter((c) => c.ratio)
    .map((c) => ({ cell: c.cell, deliveredRatio: c.ratio!.deliveredPerSecond, acceptedRatio: c.ratio!.acceptedPerSecond, met: (c.ratio!.deliveredPerSecond ?? 0) >= 2 && (c.ratio!.acceptedPerSecond ?? 0) >= 2 }));
  const half = cells.find((c) => c.cell === 'rate-half');
  const halfHedwig = half ? figures(half, 'hedwig') : undefined;
  const rss: Record<string, number> = {};
  for (const cell of cells) {
    const f = figures(cell, 'hedwig');
    for (const [name, mb] of Object.entries(f?.peakRssMB ?? {})) if (name.startsWith('hedwig.')) rss[name] = Math.max(rss[name] ?? 0, mb);
  }
  return {
    'hedwig >= 2x Postfix in every cell (delivered/s and accepted/s)': { met: twice.length > 0 && twice.every((t) => t.met), cells: twice },
    'p99 accept->delivered < 250 ms at half the highest rate': halfHedwig
      ? { met: (halfHedwig.latencyMs.delivery?.p99 ?? Infinity) < 250, ratePerSecond: half!.ratePerSecond, p99Ms: halfHedwig.latencyMs.delivery?.p99 ?? null, keptUp: halfHedwig.throughput.acceptedPerSecond >= (half!.ratePerSecond ?? 0) * 0.95 }
      : { met: null, note: 'no rate-half cell in this run' },
    'every process < 150 MB RSS': {
      met: Object.values(rss).every((mb) => mb < 150),
      peakRssMB: rss,
      note: 'peaks during the matrix, which never holds 100,000 messages: the 100,000-queued figure comes from --mode postoffice --messages 100000 (post office, beanstalkd) and --mode worker --messages 100000 (worker)',
    },
  };
}
