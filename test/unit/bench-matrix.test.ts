/**
 * The pure parts of the benchmark's real-client matrix: which cells and relays a command
 * line names, how the sink tells a message's number (X-Bench-Id, or smtp-source's numbered
 * recipient), and how the report judges issue 13's targets from the cells' figures.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseBenchArgs } from '../../bench/args.ts';
import { DEFAULT_CELLS, parseCells } from '../../bench/cells.ts';
import type { CellResult, RelayCellResult } from '../../bench/matrix-report.ts';
import { judgeTargets, summarize } from '../../bench/matrix-report.ts';
import { arrivalKey } from '../../bench/sink.ts';

describe('bench matrix: cells and relays', () => {
  it('parses every default cell, open-loop ones last', () => {
    const cells = parseCells('rate-half,source-new-10,source-kept-50,msmtp-10');
    assert.deepEqual(
      cells.map((c) => [c.name, c.client, c.connection, c.sessions, c.rate]),
      [
        ['source-new-10', 'smtp-source', 'per-message', 10, undefined],
        ['source-kept-50', 'smtp-source', 'kept', 50, undefined],
        ['msmtp-10', 'msmtp', 'per-message', 10, undefined],
        ['rate-half', 'load', 'kept', 50, 'half'],
      ],
    );
    assert.equal(parseCells(DEFAULT_CELLS).length, 7);
    assert.equal(parseCells('rate-300')[0]!.rate, 300);
  });

  it('refuses unknown cells and relays with the flag named', () => {
    assert.throws(() => parseBenchArgs(['--mode', 'matrix', '--cells', 'source-10']), /^Error: --cells: unknown cell 'source-10'/);
    assert.throws(() => parseBenchArgs(['--mode', 'matrix', '--cells', 'msmtp-0']), /--cells: msmtp-0: sessions must be 1\.\.500/);
    assert.throws(() => parseBenchArgs(['--mode', 'matrix', '--relays', 'hedwig,exim']), /--relays: unknown relay 'exim'/);
    const args = parseBenchArgs(['--mode', 'matrix', '--relays', 'postfix,hedwig-nodkim,postfix']);
    assert.deepEqual(args.relays, ['postfix', 'hedwig-nodkim']);
    assert.equal(args.probeRate, 20);
  });
});

describe('bench sink: arrival keys', () => {
  it('takes X-Bench-Id first, else the number smtp-source -N puts before the recipient', () => {
    assert.deepEqual(arrivalKey('Subject: x\r\nX-Bench-Id: 42\r\n\r\nbody\r\n', { helo: 'h', rcpts: ['<7rcpt@bench.test>'] }), { kind: 'id', id: 42 });
    assert.deepEqual(arrivalKey('Subject: x\r\n\r\nbody\r\n', { helo: 'h', rcpts: ['<17rcpt@bench.test>', '<3rcpt@bench.test>'] }), { kind: 'rcpt', id: 17 });
    assert.equal(arrivalKey('Subject: x\r\n\r\n', { helo: 'h', rcpts: ['<rcpt17@bench.test>'] }), undefined);
    // A header named in the body is not the header.
    assert.equal(arrivalKey('Subject: x\r\n\r\nsee X-Bench-Id:1\r\n', { helo: 'h', rcpts: [] }), undefined);
  });
});

function relayResult(relay: RelayCellResult['relay'], delivered: number, accepted: number, p99 = 10): RelayCellResult {
  const p = { count: 10, p50: 1, p90: 5, p99, max: p99 };
  return {
    relay,
    command: 'x',
    messages: 100,
    accepted: 100,
    failures: {},
    delivered: 100,
    missing: 0,
    duplicates: 0,
    foreignArrivals: 0,
    seconds: { client: 1, delivering: 1 },
    throughput: { acceptedPerSecond: accepted, deliveredPerSecond: delivered },
    latencyMs: { source: 'x', acceptance: p, delivery: p, transaction: p },
    cpuSecondsPer1000Messages: { [`${relay} (all its processes)`]: 1.5 },
    perMessage: {},
    peakRssMB: relay === 'postfix' ? { 'postfix.smtpd': 9 } : { 'hedwig.mailman': 110, 'hedwig.postoffice': 160, sink: 300 },
    meanBytesAtSink: 2100,
    queuedAtEnd: 0,
    machine: { otherCpuSeconds: 0.5, cpuBusyShare: 0.9 },
  };
}

describe('bench matrix: report', () => {
  const cells: CellResult[] = [
    { cell: 'source-new-10', client: 'smtp-source', connection: 'per-message', sessions: 10, ratePerSecond: null, relays: { hedwig: relayResult('hedwig', 900, 1000), postfix: relayResult('postfix', 400, 400) }, ratio: { 'hedwig/postfix': { deliveredPerSecond: 2.25, acceptedPerSecond: 2.5 } } },
    { cell: 'source-kept-10', client: 'smtp-source', connection: 'kept', sessions: 10, ratePerSecond: null, relays: { hedwig: relayResult('hedwig', 700, 700), postfix: relayResult('postfix', 400, 400) }, ratio: { 'hedwig/postfix': { deliveredPerSecond: 1.75, acceptedPerSecond: 1.75 } } },
    { cell: 'rate-half', client: 'load', connection: 'kept', sessions: 50, ratePerSecond: 450, relays: { hedwig: relayResult('hedwig', 450, 450, 260), postfix: { error: 'boom' } }, ratio: {} },
  ];

  it('judges each target from the cells, failing a cell below 2x, a p99 at 250 ms or more, a process at 150 MB or more', () => {
    const targets = judgeTargets(cells) as Record<string, { met: boolean | null; cells?: Array<{ cell: string; met: boolean }>; p99Ms?: number; peakRssMB?: Record<string, number> }>;
    const twice = targets['hedwig >= 2x Postfix in every cell (delivered/s and accepted/s)']!;
    assert.equal(twice.met, false);
    assert.deepEqual(
      twice.cells!.map((c) => [c.cell, c.met]),
      [
        ['source-new-10', true],
        ['source-kept-10', false],
      ],
    );
    const latency = targets['p99 accept->delivered < 250 ms at half the highest rate']!;
    assert.equal(latency.met, false);
    assert.equal(latency.p99Ms, 260);
    const rss = targets['every process < 150 MB RSS']!;
    assert.equal(rss.met, false);
    assert.deepEqual(rss.peakRssMB, { 'hedwig.mailman': 110, 'hedwig.postoffice': 160 }, 'the sink is not hedwig');
  });

  it('summarizes one row per cell and relay, with the error of a relay that failed', () => {
    const rows = summarize(cells);
    assert.equal(rows.length, 6);
    assert.equal(rows[0]!.ratioToPostfix, '2.25 (2.5)');
    assert.equal(rows[0]!.acceptanceP50P99Ms, '1 / 10');
    assert.equal(rows[0]!.maxPeakRssMB, 160);
    assert.equal(rows[5]!.error, 'boom');
    assert.equal(rows[5]!.deliveredPerSecond, null);
  });
});
