/**
 * Smoke test of the real-client benchmark (`npm run bench -- --mode matrix`), so a broken
 * bench shows up in CI and not on the day someone wants figures: the private Postfix
 * instance starts, relays what smtp-source sends to the bench sink and stops; and the
 * whole matrix runner, on a few messages per cell, drives hedwig and Postfix with
 * smtp-source and msmtp and writes a report whose counts add up. Nothing here is timed.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { runSmtpSource } from '../../bench/clients.ts';
import { postfixUnavailable, startPostfixRelay } from '../../bench/postfix.ts';
import { processAlive as alive } from '../../bench/proc.ts';
import { portOpen } from '../../bench/tiers.ts';
import { startSinkProcess, type SinkProcess } from '../../bench/sink-process.ts';
import { freePort, waitFor } from '../helpers/ports.ts';

const root = resolve(import.meta.dirname, '..', '..');

describe('benchmark harness (matrix mode)', { timeout: 300_000 }, () => {
  let sink: SinkProcess;
  let postfixMissing: string | undefined;
  const dir = mkdtempSync(join(tmpdir(), 'hedwig-bench-smoke-'));

  before(async () => {
    chmodSync(dir, 0o711); // Postfix's daemons (mail_owner) must reach its queue in here
    postfixMissing = await postfixUnavailable();
    sink = await startSinkProcess(await freePort());
  });

  after(async () => {
    await sink?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('a private Postfix instance starts, relays 5 smtp-source messages to the sink as its own, and stops', async (t) => {
    // Postfix's master runs only as root (or through sudo -n): CI runs the suite as root.
    if (postfixMissing) return t.skip(postfixMissing);
    const port = await freePort();
    const relay = await startPostfixRelay({ dir: join(dir, 'postfix'), relayhost: { host: '127.0.0.1', port: sink.port }, myhostname: 'postfix.smoke.example', port });
    try {
      assert.ok(alive(relay.masterPid), 'the master runs');
      assert.match(relay.version, /^\d+\.\d+/);
      await sink.reset();
      const run = await runSmtpSource({ port, messages: 5, sessions: 2, size: 2048, kept: false });
      assert.equal(run.exitCode, 0, run.stderr);
      const stats = await waitFor(
        async () => {
          const s = await sink.stats();
          return (s.byRelay['postfix.smoke.example']?.received ?? 0) >= 5 ? s : undefined;
        },
        { timeoutMs: 60_000, what: '5 arrivals from Postfix' },
      );
      assert.deepEqual(Object.keys(stats.byRelay), ['postfix.smoke.example']);
      assert.equal(stats.byRelay['postfix.smoke.example']!.duplicates, 0);
      const { ids, kinds } = await sink.records();
      assert.deepEqual([...ids].sort(), [1, 2, 3, 4, 5], 'smtp-source -N numbers the messages 1..5 through their recipients');
      assert.ok(kinds.every((k) => k === 'rcpt'));
      // qmgr removes a queue file once the smtp client reports the delivery, a moment after the sink has it.
      await waitFor(() => relay.queued() === 0, { timeoutMs: 30_000, what: "Postfix's queue to empty" });
    } finally {
      await relay.stop();
    }
    assert.equal(alive(relay.masterPid), false, 'the master is gone after stop');
    assert.equal(await portOpen(port), false, 'nothing listens on its port any more');
  });

  it('the matrix runner drives every cell kind through each relay and reports counts that add up', async () => {
    const out = join(dir, 'matrix.json');
    const relays = postfixMissing ? 'hedwig' : 'hedwig,postfix';
    const args = ['--import', 'tsx', 'bench/run.ts', '--mode', 'matrix', '--messages', '12', '--warmup', '5', '--probe-rate', '5', '--cells', 'source-new-2,source-kept-2,msmtp-2,rate-half', '--relays', relays, '--runtime', 'tsx', '--log-level', 'warn', '--timeout-s', '120', '--out', out];
    const child = spawn(process.execPath, args, { cwd: root, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const code = await new Promise<number | null>((r) => child.once('exit', r));
    assert.equal(code, 0, stderr.slice(-3000));
    assert.ok(existsSync(out));
    const report = JSON.parse(readFileSync(out, 'utf8'));
    assert.equal(report.mode, 'matrix');
    assert.deepEqual(
      report.cells.map((c: { cell: string }) => c.cell),
      ['source-new-2', 'source-kept-2', 'msmtp-2', 'rate-half'],
    );
    for (const cell of report.cells) {
      assert.deepEqual(Object.keys(cell.relays).sort(), relays.split(',').sort(), `${cell.cell}: every relay ran`);
      for (const [name, r] of Object.entries<Record<string, any>>(cell.relays)) {
        const where = `${cell.cell} ${name}`;
        assert.equal(r.error, undefined, `${where}: ${r.error}`);
        assert.equal(r.accepted, 12, where);
        assert.equal(r.delivered, 12, where);
        assert.equal(r.missing, 0, where);
        assert.equal(r.duplicates, 0, where);
        assert.equal(r.foreignArrivals, 0, where);
        assert.ok(r.throughput.deliveredPerSecond > 0, where);
        assert.ok(r.latencyMs.acceptance.count > 0 && r.latencyMs.delivery.count > 0, `${where}: timed messages`);
        // /proc counts CPU in 10 ms ticks: Postfix's daemons can relay 12 messages within fewer
        // than one tick (seen under load), so for them a figure is required, not a non-zero one.
        const cpu = r.cpuSecondsPer1000Messages[`${name} (all its processes)`];
        assert.ok(typeof cpu === 'number' && Number.isFinite(cpu) && (name === 'postfix' ? cpu >= 0 : cpu > 0), `${where}: CPU measured (${cpu})`);
        assert.ok(Object.keys(r.peakRssMB).some((p) => p.startsWith(name === 'postfix' ? 'postfix.smtpd' : 'hedwig.mailman')), `${where}: RSS per process`);
      }
      if (!postfixMissing && cell.client !== 'load') assert.ok(cell.ratio['hedwig/postfix'].deliveredPerSecond > 0, `${cell.cell}: ratio`);
    }
    const hedwig = report.cells[0].relays.hedwig;
    assert.ok(hedwig.meanBytesAtSink > 2048, 'hedwig adds a DKIM-Signature');
    assert.ok(report.relays.hedwig.dkim.startsWith('RSA-2048'));
    assert.equal(typeof report.machine.otherCpuSeconds, 'number');
    assert.ok(report.revision.commit);
    assert.ok('hedwig >= 2x Postfix in every cell (delivered/s and accepted/s)' in report.targets);
    assert.match(stderr, /accepted\/s/, 'the summary table is printed');
  });
});
