/**
 * mailman's forwarder against a scripted post office client and a real spool directory: the
 * pacing (backoff per failing attempt, reset by the first success, concurrency that grows),
 * bounded retries per entry, and the inline gate the SMTP side asks.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { Forwarder, type ForwarderOptions } from '../../mailman/forwarder.ts';
import { createMailmanMetrics } from '../../mailman/metrics.ts';
import type { ForwardResult, MailmanSubmission, PostofficeClient } from '../../mailman/postoffice-client.ts';
import { Spool, newSpoolId } from '../../mailman/spool.ts';
import { waitFor } from '../helpers/ports.ts';

const dirs: string[] = [];
after(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

const ACCEPT: ForwardResult = { kind: 'accepted', id: 'po' };
const REFUSED: ForwardResult = { kind: 'temporary', cause: 'unavailable', reason: 'ECONNREFUSED: connect ECONNREFUSED' };
const TIMEOUT: ForwardResult = { kind: 'temporary', cause: 'timeout', reason: 'ETIMEOUT: no answer within 100 ms' };
const ERROR_500: ForwardResult = { kind: 'temporary', cause: 'error', reason: 'http 500 internal_error' };

type Script = (message: MailmanSubmission, call: number) => ForwardResult | Promise<ForwardResult>;

async function setup(script: Script, messages: Array<string | { body: string; receivedAt: number }>, options: Partial<ForwarderOptions> = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'hedwig-forwarder-'));
  dirs.push(dir);
  const spool = new Spool(join(dir, 'spool'));
  await spool.init();
  const ids: string[] = [];
  for (const [i, m] of messages.entries()) {
    const id = newSpoolId(1_000 + i);
    ids.push(id);
    const { body, receivedAt } = typeof m === 'string' ? { body: m, receivedAt: Date.now() } : m;
    await spool.write({ id, mailfrom: '', rcpttos: ['b@dest.test'], receivedAt, data: Buffer.from(body) });
  }
  const calls: MailmanSubmission[] = [];
  let inFlight = 0;
  let maxInFlight = 0;
  let firstInFlight = 0;
  const client: PostofficeClient = {
    async forward(message) {
      const call = calls.push(message);
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      if (calls.length === 1) firstInFlight = inFlight;
      try {
        // One turn of the event loop, so forwards started together overlap as real ones do.
        await new Promise((resolve) => setImmediate(resolve));
        return await script(message, call);
      } finally {
        inFlight--;
      }
    },
    close() {},
  };
  const logs: Array<Record<string, unknown>> = [];
  const logger = pino({ level: 'info' }, { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) });
  const registry = new Registry();
  const metrics = createMailmanMetrics(registry, () => spool.depth());
  const forwarder = new Forwarder({ spool, client, logger, metrics, minBackoffMs: 10, maxBackoffMs: 40, maxProbeIntervalMs: 1_000, concurrency: 4, maxAttempts: 3, maxAgeMs: 3_600_000, ...options });
  const bodyOf = (m: MailmanSubmission) => m.data.toString();
  return { spool, ids, calls, logs, forwarder, registry, bodyOf, maxInFlight: () => maxInFlight, firstInFlight: () => firstInFlight };
}

/** The token a transaction starting now would get (also while the gate is shut, for the tests' reports). */
function epochOf(forwarder: Forwarder): number {
  return (forwarder as unknown as { outages: number }).outages;
}

function reasonOf(spool: Spool, id: string): Record<string, unknown> {
  return JSON.parse(readFileSync(join(spool.failedDir, `${id}.reason.json`), 'utf8')) as Record<string, unknown>;
}

describe('forwarder: pacing', () => {
  it('forwards every spooled message with its id as the idempotency key and empties the spool', async () => {
    const t = await setup(() => ACCEPT, ['m0', 'm1', 'm2', 'm3', 'm4']);
    await t.forwarder.start();
    await waitFor(async () => (await t.spool.depth()) === 0, { what: 'the spool to drain' });
    await t.forwarder.stop();
    assert.deepEqual(t.calls.map((c) => c.idempotencyKey).sort(), t.ids);
    assert.equal(t.logs.filter((l) => l.event === 'forwarded').length, 5);
  });

  it('backs off per failing attempt (doubling up to maxBackoffMs) and resets on the first success, not after a whole drain', async () => {
    // Three refusals, one success, one refusal, then everything succeeds.
    const t = await setup((_, call) => (call <= 3 || call === 5 ? REFUSED : ACCEPT), ['m0', 'm1', 'm2', 'm3'], { concurrency: 1 });
    await t.forwarder.start();
    await waitFor(async () => (await t.spool.depth()) === 0, { timeoutMs: 5_000, what: 'the spool to drain' });
    await t.forwarder.stop();
    const backoffs = t.logs.filter((l) => l.event === 'forward_backoff').map((l) => l.retryInMs);
    assert.deepEqual(backoffs, [10, 20, 40, 10], 'the refusal after a success starts again at minBackoffMs');
    assert.equal(t.calls.length, 8);
  });

  it('probes an unavailable post office at least every maxProbeIntervalMs, while one entry still backs off up to maxBackoffMs', async () => {
    const t = await setup((_, call) => (call <= 4 ? REFUSED : ACCEPT), ['m0'], { concurrency: 1, maxBackoffMs: 1_000, maxProbeIntervalMs: 25 });
    await t.forwarder.start();
    await waitFor(async () => (await t.spool.depth()) === 0, { timeoutMs: 5_000, what: 'the spool to drain' });
    await t.forwarder.stop();
    assert.deepEqual(t.logs.filter((l) => l.event === 'forward_backoff').map((l) => l.retryInMs), [10, 20, 25, 25]);
  });

  it('starts with one forward at a time and lets one more run in parallel per success, up to concurrency', async () => {
    const t = await setup(() => ACCEPT, Array.from({ length: 30 }, (_, i) => `m${i}`), { concurrency: 4 });
    await t.forwarder.start();
    await waitFor(async () => (await t.spool.depth()) === 0, { what: 'the spool to drain' });
    await t.forwarder.stop();
    assert.ok(t.maxInFlight() >= 2 && t.maxInFlight() <= 4, `at most 4 at once, more than 1 once grown: ${t.maxInFlight()}`);
    assert.equal(t.firstInFlight(), 1, 'the first forward alone');
    assert.match(await t.registry.metrics(), /hedwig_mailman_forwarder_concurrency 4/);
  });

  it('after an outage probes with a single forward, and forwards that were under way do not double the backoff again', async () => {
    // Calls 10 to 16 are refused: 10 to 13 are held until all four are in flight (the
    // concurrency has grown to 4 by then) and refused together; 14 to 16 are the probes after
    // each pause.
    const inFlightAtCall: number[] = [];
    let current = 0;
    const held: Array<() => void> = [];
    const t = await setup(async (_, call) => {
      inFlightAtCall[call] = ++current;
      if (call >= 10 && call <= 13) {
        await new Promise<void>((resolve) => {
          held.push(resolve);
          if (held.length === 4) for (const release of held) release();
        });
      } else {
        await new Promise((resolve) => setImmediate(resolve));
      }
      current--;
      return call >= 10 && call <= 16 ? REFUSED : ACCEPT;
    }, Array.from({ length: 30 }, (_, i) => `m${i}`), { concurrency: 4 });
    await t.forwarder.start();
    await waitFor(async () => (await t.spool.depth()) === 0, { timeoutMs: 5_000, what: 'the spool to drain' });
    await t.forwarder.stop();
    const backoffs = t.logs.filter((l) => l.event === 'forward_backoff').map((l) => l.retryInMs);
    assert.deepEqual(backoffs, [10, 20, 40, 40]);
    assert.deepEqual(inFlightAtCall.slice(14, 18), [1, 1, 1, 1], 'each probe, and the first forward after it, alone');
  });
});

describe('forwarder: bounded retries (a message the post office keeps failing on)', () => {
  it('forwards the others while entries that get 500 sort first and fill the concurrency, then moves those to failed/ with the reason', async () => {
    // Issue 12.2: four entries the post office answers 500 for, oldest first, and
    // forwarder.concurrency 4; three small ones behind them must still be forwarded.
    const t = await setup((m) => (t.bodyOf(m).startsWith('big') ? ERROR_500 : ACCEPT), ['big0', 'big1', 'big2', 'big3', 'small0', 'small1', 'small2'], { concurrency: 4, maxAttempts: 3 });
    await t.forwarder.start();
    await waitFor(async () => (await t.spool.depth()) === 0, { timeoutMs: 5_000, what: 'every entry to leave new/' });
    await t.forwarder.stop();
    const forwarded = t.calls.filter((c) => t.bodyOf(c).startsWith('small')).length;
    assert.equal(forwarded, 3, 'each small message forwarded once');
    assert.equal(t.calls.filter((c) => t.bodyOf(c) === 'big0').length, 3, 'maxAttempts tries of each failing one');
    const failed = readdirSync(t.spool.failedDir).filter((n) => !n.endsWith('.json')).sort();
    assert.deepEqual(failed, t.ids.slice(0, 4));
    assert.deepEqual(reasonOf(t.spool, t.ids[0]!), { ...reasonOf(t.spool, t.ids[0]!), status: 0, error: 'too_many_attempts', attempts: 3 });
    assert.match(String(reasonOf(t.spool, t.ids[0]!).message), /http 500 internal_error/);
    const lines = t.logs.filter((l) => l.event === 'failed');
    assert.equal(lines.length, 4);
    assert.deepEqual([lines[0]!.error, lines[0]!.attempts], ['too_many_attempts', 3]);
    assert.equal(t.logs.filter((l) => l.event === 'forward_backoff').length, 0, 'a 500 about one message pauses nothing else');
  });

  it('counts a timeout against the message while others get through', async () => {
    const t = await setup((m) => (t.bodyOf(m) === 'slow' ? TIMEOUT : ACCEPT), ['slow', 'm1', 'm2', 'm3', 'm4', 'm5', 'm6', 'm7'], { concurrency: 1, maxAttempts: 2 });
    await t.forwarder.start();
    await waitFor(async () => (await t.spool.depth()) === 0, { timeoutMs: 5_000, what: 'every entry to leave new/' });
    await t.forwarder.stop();
    assert.equal(reasonOf(t.spool, t.ids[0]!).error, 'too_many_attempts');
    assert.equal(t.calls.filter((c) => t.bodyOf(c) !== 'slow').length, 7);
  });

  it('does not use up attempts while the post office is down or frozen for everyone', async () => {
    let calls = 0;
    const t = await setup(() => (++calls <= 12 ? (calls % 2 ? TIMEOUT : REFUSED) : ACCEPT), ['m0', 'm1'], { concurrency: 1, maxAttempts: 2, maxBackoffMs: 20 });
    await t.forwarder.start();
    await waitFor(async () => (await t.spool.depth()) === 0, { timeoutMs: 5_000, what: 'the spool to drain' });
    await t.forwarder.stop();
    assert.ok(calls > 12);
    assert.deepEqual(readdirSync(t.spool.failedDir), [], 'nothing given up on');
    assert.equal(t.logs.filter((l) => l.event === 'forwarded').length, 2);
  });

  it('moves an entry older than maxAgeMs to failed/ (expired) after its next failed attempt', async () => {
    const t = await setup((m) => (t.bodyOf(m) === 'old' ? REFUSED : ACCEPT), [{ body: 'old', receivedAt: Date.now() - 7_200_000 }, 'new'], { maxAgeMs: 3_600_000 });
    await t.forwarder.start();
    await waitFor(async () => (await t.spool.depth()) === 0, { timeoutMs: 5_000, what: 'the spool to drain' });
    await t.forwarder.stop();
    assert.equal(reasonOf(t.spool, t.ids[0]!).error, 'expired');
    assert.equal(t.logs.find((l) => l.event === 'failed')?.error, 'expired');
  });

  it('moves a permanently rejected message to failed/ and carries on with the rest', async () => {
    const t = await setup((m) => (t.bodyOf(m) === 'm0' ? { kind: 'rejected', status: 403, error: 'sender_domain_not_allowed', message: 'no' } : ACCEPT), ['m0', 'm1', 'm2']);
    await t.forwarder.start();
    await waitFor(async () => (await t.spool.depth()) === 0, { what: 'the spool to drain' });
    await t.forwarder.stop();
    assert.ok(readdirSync(t.spool.failedDir).includes(t.ids[0]!));
    const failed = t.logs.find((l) => l.event === 'failed');
    assert.deepEqual([failed?.spoolId, failed?.status, failed?.error], [t.ids[0], 403, 'sender_domain_not_allowed']);
  });

  it('moves an unreadable spool file to failed/ instead of retrying it forever', async () => {
    const t = await setup(() => ACCEPT, []);
    const id = newSpoolId();
    writeFileSync(join(t.spool.newDir, id), '{"v":1,"id":"x"}\ntruncated');
    await t.forwarder.start();
    await waitFor(() => readdirSync(t.spool.failedDir).includes(`${id}.reason.json`), { what: 'the file in failed/' });
    await t.forwarder.stop();
    assert.equal(t.calls.length, 0);
  });
});

describe('forwarder: the inline gate', () => {
  it('closes on an inline outage or timeout (spool at once), not on a 500, and opens on the first success', async () => {
    const t = await setup(() => ACCEPT, [], { minBackoffMs: 60_000, maxBackoffMs: 60_000 });
    await t.forwarder.start();
    assert.equal(Boolean(t.forwarder.inlineAttempt()), true);
    t.forwarder.reportInline(ERROR_500, { epoch: epochOf(t.forwarder) });
    assert.equal(Boolean(t.forwarder.inlineAttempt()), true, 'a 500 is about that message');
    t.forwarder.reportInline(TIMEOUT, { epoch: epochOf(t.forwarder) });
    assert.equal(Boolean(t.forwarder.inlineAttempt()), false, 'after a timeout every session spools at once');
    assert.match(await t.registry.metrics(), /hedwig_mailman_postoffice_up 0/);
    t.forwarder.reportInline(ACCEPT, { epoch: epochOf(t.forwarder) });
    assert.equal(Boolean(t.forwarder.inlineAttempt()), true);
    assert.match(await t.registry.metrics(), /hedwig_mailman_postoffice_up 1/);
    await t.forwarder.stop();
  });

  it('a success from the spool reopens it and ends the pause at once', async () => {
    const t = await setup(() => ACCEPT, [], { minBackoffMs: 60_000, maxBackoffMs: 60_000 });
    await t.forwarder.start();
    t.forwarder.reportInline(REFUSED, { epoch: epochOf(t.forwarder) });
    assert.equal(Boolean(t.forwarder.inlineAttempt()), false);
    // Spooled during the outage; an inline success elsewhere ends the 60 s pause at once.
    await t.spool.write({ id: newSpoolId(), mailfrom: '', rcpttos: ['b@dest.test'], receivedAt: Date.now(), data: Buffer.from('x') });
    t.forwarder.notify();
    t.forwarder.reportInline(ACCEPT, { epoch: epochOf(t.forwarder) });
    await waitFor(async () => (await t.spool.depth()) === 0, { timeoutMs: 5_000, what: 'the spooled message to be forwarded' });
    await t.forwarder.stop();
  });

  it('stop() waits for a forward in flight and leaves unsent messages in the spool', async () => {
    let release: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const t = await setup(async () => {
      await gate;
      return ACCEPT;
    }, ['m0', 'm1', 'm2']);
    await t.forwarder.start();
    await waitFor(() => t.calls.length === 1, { what: 'first forward to start' });
    let stopped = false;
    const stopping = t.forwarder.stop().then(() => (stopped = true));
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(stopped, false, 'stop waits for the forward in flight');
    release();
    await stopping;
    assert.equal(t.calls.length, 1);
    assert.equal((await t.spool.list()).length, 2);
  });
});
