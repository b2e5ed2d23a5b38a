import assert from 'node:assert/strict';
import { after, before, describe, it, type TestContext } from 'node:test';
import { signRequest } from '../../shared/signing.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { freePort, waitFor } from '../helpers/ports.ts';
import { startSmtpSink, type SmtpSink } from '../helpers/smtp-sink.ts';
import { startTier, type TierProcess } from '../helpers/tiers.ts';

/**
 * Chaos: mail under load while one fault at a time hits the relay, each a cause of duplicates
 * issue 18 found avoidable. For each cause the test reports how many messages were accepted,
 * lost and duplicated (`# chaos ...` lines in the test output), asserts that nothing accepted
 * was lost, and that the avoidable duplicates stay at zero:
 *
 * - postoffice-sigkill: the post office is SIGKILLed every 1-3 s under load and restarted at
 *   once. Requests in flight die between the claim of their idempotency key, the put and the
 *   202; the client retries with the same key (as mailman does). A claim left behind is taken
 *   over and the same job put again; if both copies exist the worker delivers one.
 * - postoffice-sigstop: the post office is frozen (SIGSTOP) for 12 s, longer than its 10 s
 *   beanstalkd command timer, twice; the client gives up on requests after 10 s and retries.
 * - drop-after-dot: the receiving MX takes the whole message and drops the connection instead
 *   of answering, now and then, on kept connections. That is a deferral with the usual retry
 *   delay (60 s here, longer than the phase), never an immediate resend on a new connection.
 *
 * Not injected here (unavoidable, README "At-least-once delivery"): a worker killed between
 * the receiver's 250 and the job's delete (test/integration/mta-crash.test.ts).
 *
 * The client is a small retrying HTTP client with mailman's forwarding rule (same
 * Idempotency-Key until a 202; 10 s per request), so each cause is measured on its own,
 * without mailman's spool backoff stretching the phases.
 */

const FQDN = 'app1.example.com';
const KEY = 'c'.repeat(40);
const REQUEST_TIMEOUT_MS = 10_000;

interface PhaseReport {
  cause: string;
  accepted: number;
  lost: number;
  duplicated: number;
  evidence: Record<string, number>;
}

describe('chaos: lost and duplicated messages per cause', { timeout: 420_000 }, () => {
  let beanstalkd: BeanstalkdProcess;
  let sink: SmtpSink;
  let worker: TierProcess;
  let postoffice: TierProcess;
  const postofficeLogs: Array<Record<string, unknown>> = [];
  let postofficePort = 0;
  let postofficeConfig: Record<string, unknown>;

  async function startPostofficeTier(): Promise<void> {
    postoffice = await startTier('postoffice', postofficeConfig, { readyPort: postofficePort });
  }

  /**
   * SIGKILL and restart. beanstalkd is held back a moment first, so that puts are in flight
   * (claimed, sent, unanswered) when the post office dies: beanstalkd stores them once it goes
   * on, and nobody hears of it. That is the window between put and 202, every time.
   */
  async function killAndRestartPostoffice(): Promise<void> {
    beanstalkd.freeze(true);
    await new Promise((r) => setTimeout(r, 300));
    postofficeLogs.push(...postoffice.logs);
    await postoffice.kill();
    beanstalkd.freeze(false);
    await startPostofficeTier();
  }

  before(async () => {
    beanstalkd = await startBeanstalkd({ fsyncMs: 0 });
    sink = await startSmtpSink();
    postofficePort = await freePort();
    postofficeConfig = { listen: { host: '127.0.0.1', port: postofficePort }, beanstalk: { servers: [beanstalkd.address] }, clients: { [FQDN]: { key: KEY, senderDomains: ['example.com'] } } };
    await startPostofficeTier();
    worker = await startTier('worker', {
      beanstalk: { servers: [beanstalkd.address] },
      concurrency: 8,
      ehloName: 'worker.chaos.test',
      routes: { 'chaos.test': `${sink.host}:${sink.port}` },
      retry: { delaysSeconds: [60], maxLifetimeSeconds: 3600 },
      bounces: { enabled: false },
      timeouts: { connectMs: 3000, greetingMs: 3000, socketMs: 10_000 },
      ops: { host: '127.0.0.1', port: await freePort() },
    });
  });

  after(async () => {
    await worker?.kill();
    await postoffice?.kill();
    await beanstalkd?.kill();
    await sink?.stop();
  });

  /** Submits `count` messages, `concurrency` at a time, each retried with its key until a 202. */
  async function load(prefix: string, count: number, concurrency: number, stats: { timeouts: number; refused: number; attempts: number; inFlight?: number }, pauseMs = 0): Promise<Set<string>> {
    const accepted = new Set<string>();
    let next = 0;
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (next < count) {
          const id = `${prefix}-${next++}`;
          const body = JSON.stringify({ mailfrom: 'app@example.com', rcpttos: [`${id}@chaos.test`], data: `Subject: ${id}\r\nX-Chaos-Id: ${id}\r\n\r\nchaos\r\n` });
          for (;;) {
            stats.attempts++;
            stats.inFlight = (stats.inFlight ?? 0) + 1;
            try {
              const headers = signRequest(KEY, { method: 'POST', path: '/v1/messages', fqdn: FQDN, idempotencyKey: id, body });
              const res = await fetch(`http://127.0.0.1:${postofficePort}/v1/messages`, {
                method: 'POST',
                headers: { 'content-type': 'application/json', 'idempotency-key': id, ...headers },
                body,
                signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
              });
              await res.arrayBuffer();
              if (res.status === 202) {
                accepted.add(id);
                if (pauseMs > 0) await new Promise((r) => setTimeout(r, pauseMs));
                break;
              }
              stats.refused++;
            } catch (err) {
              if ((err as Error).name === 'TimeoutError') stats.timeouts++;
              else stats.refused++;
            } finally {
              stats.inFlight!--;
            }
            await new Promise((r) => setTimeout(r, 300));
          }
        }
      }),
    );
    return accepted;
  }

  function arrivals(prefix: string): Map<string, number> {
    const seen = new Map<string, number>();
    for (const m of sink.messages) {
      const id = /^X-Chaos-Id: (\S+)\r?$/m.exec(m.raw.toString('latin1'))?.[1];
      if (id?.startsWith(`${prefix}-`)) seen.set(id, (seen.get(id) ?? 0) + 1);
    }
    return seen;
  }

  async function settle(t: TestContext, cause: string, prefix: string, accepted: Set<string>, evidence: Record<string, number>, options: { waitForAll: boolean }): Promise<PhaseReport> {
    if (options.waitForAll) await waitFor(() => [...accepted].every((id) => arrivals(prefix).has(id)), { timeoutMs: 90_000, intervalMs: 250, what: `every accepted ${cause} message at the sink` }).catch(() => undefined);
    // A little longer, so that copies on their way arrive too.
    await new Promise((r) => setTimeout(r, 3000));
    const seen = arrivals(prefix);
    const report: PhaseReport = {
      cause,
      accepted: accepted.size,
      lost: [...accepted].filter((id) => !seen.has(id)).length,
      duplicated: [...seen.values()].reduce((sum, n) => sum + n - 1, 0),
      evidence,
    };
    t.diagnostic(`chaos ${JSON.stringify(report)}`);
    return report;
  }

  const countLogs = (logs: Array<Record<string, unknown>>, predicate: (l: Record<string, unknown>) => boolean) => logs.filter(predicate).length;

  it('postoffice-sigkill: the post office killed between put and 202 loses and duplicates nothing', async (t) => {
    const stats = { timeouts: 0, refused: 0, attempts: 0 };
    let kills = 0;
    let running = true;
    const killer = (async () => {
      while (running) {
        await new Promise((r) => setTimeout(r, 1500 + Math.random() * 1500));
        if (!running) break;
        await killAndRestartPostoffice();
        kills++;
      }
    })();
    // About 24 messages a second, so that the load lasts through the kills.
    const loaded = load('kill', 600, 12, stats, 500);
    // Kill for 25 s, then let the retries finish (claims left by a killed post office are taken over after 30 s).
    await Promise.race([loaded, new Promise((r) => setTimeout(r, 25_000))]);
    running = false;
    await killer;
    const accepted = await loaded;
    const logs = [...postofficeLogs, ...postoffice.logs];
    const report = await settle(t, 'postoffice-sigkill', 'kill', accepted, {
      kills,
      clientRetries: stats.attempts - accepted.size,
      claimsTakenOver: countLogs(logs, (l) => l.event === 'queued' && l.takenOver === true),
      copiesDeletedByWorker: countLogs(worker.logs, (l) => l.event === 'duplicate_job'),
    }, { waitForAll: true });
    assert.ok(kills >= 5, `${kills} kills`);
    assert.ok(report.evidence.copiesDeletedByWorker! > 0, 'both copies of some jobs existed: without the worker deleting one, they were duplicates');
    assert.ok(report.evidence.claimsTakenOver! > 0, 'some kills hit requests between their claim and their answer');
    assert.equal(report.lost, 0, 'nothing accepted is lost');
    assert.equal(report.duplicated, 0, 'no duplicate from a post office killed after its put');
  });

  it('postoffice-sigstop: a post office frozen longer than its beanstalkd timer loses and duplicates nothing', async (t) => {
    const stats = { timeouts: 0, refused: 0, attempts: 0, inFlight: 0 };
    let inFlightAtFreeze = 0;
    postofficeLogs.push(...postoffice.logs.splice(0));
    const copiesBefore = countLogs(worker.logs, (l) => l.event === 'duplicate_job');
    // About 12 messages a second, so that the load lasts through both freezes.
    const loaded = load('stop', 400, 12, stats, 1000);
    for (let i = 0; i < 2; i++) {
      await new Promise((r) => setTimeout(r, 3000));
      // Make sure puts are in flight at the moment of the freeze: hold beanstalkd back a moment so
      // they queue up, freeze the post office, then let beanstalkd answer them into its socket.
      beanstalkd.freeze(true);
      await new Promise((r) => setTimeout(r, 300));
      postoffice.child.kill('SIGSTOP');
      inFlightAtFreeze += stats.inFlight;
      beanstalkd.freeze(false);
      await new Promise((r) => setTimeout(r, 12_000));
      postoffice.child.kill('SIGCONT');
    }
    const accepted = await loaded;
    const report = await settle(t, 'postoffice-sigstop', 'stop', accepted, {
      freezes: 2,
      clientTimeouts: stats.timeouts,
      putTimeouts: countLogs(postoffice.logs, (l) => l.event === 'queue_failed'),
      putsInFlightAtFreeze: inFlightAtFreeze,
      copiesDeletedByWorker: countLogs(worker.logs, (l) => l.event === 'duplicate_job') - copiesBefore,
    }, { waitForAll: true });
    assert.ok(report.evidence.clientTimeouts! > 0, 'the freezes held requests past the client timeout');
    assert.ok(report.evidence.putsInFlightAtFreeze! > 0, 'puts were in flight when the post office froze');
    assert.equal(report.evidence.putTimeouts, 0, 'no put was answered as timed out after the thaw: the replies in the socket were read');
    assert.equal(report.lost, 0, 'nothing accepted is lost');
    assert.equal(report.duplicated, 0, 'no duplicate from a frozen post office');
  });

  it('drop-after-dot: a receiver that drops the connection after the final dot gets no immediate resend', async (t) => {
    const stats = { timeouts: 0, refused: 0, attempts: 0 };
    const deferredBefore = countLogs(worker.logs, (l) => l.event === 'deferred');
    let drops = 0;
    let running = true;
    const dropper = (async () => {
      while (running) {
        await new Promise((r) => setTimeout(r, 400));
        sink.script.dropAfterData = { times: 1 };
        drops++;
      }
    })();
    const accepted = await load('dot', 400, 12, stats, 500);
    running = false;
    await dropper;
    sink.script.dropAfterData = false;
    const deferred = countLogs(worker.logs, (l) => l.event === 'deferred') - deferredBefore;
    const report = await settle(t, 'drop-after-dot', 'dot', accepted, { drops, deferredForTheUsualRetry: deferred, retryDelaySeconds: 60 }, { waitForAll: true });
    assert.ok(deferred > 0, 'dropped connections hit deliveries');
    assert.equal(report.lost, 0, 'nothing accepted is lost (the receiver holds every dropped message once)');
    // A copy could only come from the retry 60 s later: the receiver took the message but never said so
    // (at-least-once). Within this phase there must be none: no resend on a new connection at once.
    assert.equal(report.duplicated, 0, 'no immediate resend after a connection lost after the final dot');
  });
});
