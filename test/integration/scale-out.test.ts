/**
 * Scale-out: one post office puts to two beanstalkd servers and a worker reserves from
 * both. One beanstalkd is killed (SIGKILL) while messages flow in and out; the post office
 * fails over to the other without refusing anything, and once the killed server is back
 * from its binlog every accepted message has reached the destination. Delivery is
 * at-least-once: the duplicates are counted and bounded by what was in flight at the kill.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { BeanstalkClient, type Stats } from '../../shared/beanstalk.ts';
import { TUBE } from '../../shared/job.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { arrivals, inPool, messageIdOf, numberedMessage, postMessage, type SignedSender } from '../helpers/mail-load.ts';
import { freePort, waitFor } from '../helpers/ports.ts';
import { startSmtpSink, type SmtpSink } from '../helpers/smtp-sink.ts';
import { startTier, type TierProcess } from '../helpers/tiers.ts';

const FQDN = 'app1.example.test';
const KEY = '5ca1e0u7'.repeat(8);
const TO = 'bob@dest.test';
const SENDERS = 4;
const WORKER_CONCURRENCY = 4;
/** Before the worker starts, while it runs with both servers up, and while one server is down. */
const PHASES = { queuedFirst: 40, bothUp: 10, oneDown: 30 } as const;

async function tubeStats(server: BeanstalkdProcess): Promise<Stats> {
  const probe = new BeanstalkClient({ host: server.host, port: server.port });
  await probe.connect();
  try {
    return await probe.statsTube(TUBE.outbound);
  } finally {
    await probe.close();
  }
}

async function totalJobs(server: BeanstalkdProcess): Promise<number> {
  return Number((await tubeStats(server))['total-jobs']);
}

/** Jobs ready, reserved and delayed in the outbound tube. */
async function tubeCounts(server: BeanstalkdProcess): Promise<number[]> {
  const stats = await tubeStats(server);
  return ['current-jobs-ready', 'current-jobs-reserved', 'current-jobs-delayed'].map((name) => Number(stats[name]));
}

describe('two beanstalkd servers, one killed under load', { timeout: 120_000 }, () => {
  let serverA: BeanstalkdProcess;
  let serverB: BeanstalkdProcess;
  let sink: SmtpSink;
  let postoffice: TierProcess;
  let worker: TierProcess | undefined;
  let sender: SignedSender;
  /** HTTP statuses per message number, in the order they were answered. */
  const answers = new Map<number, number[]>();

  /** Posts messages first..first+count-1, retrying each (same idempotency key) until it is accepted. */
  async function send(first: number, count: number): Promise<void> {
    await inPool(count, SENDERS, async (i) => {
      const n = first + i;
      const statuses: number[] = [];
      answers.set(n, statuses);
      for (let attempt = 0; attempt < 20; attempt++) {
        const { status } = await postMessage(sender, numberedMessage('scale', n, TO), TO, `scale-${n}`);
        statuses.push(status);
        if (status === 202) return;
        await new Promise((r) => setTimeout(r, 200));
      }
    });
  }

  before(async () => {
    [serverA, serverB] = await Promise.all([startBeanstalkd({ fsyncMs: 0, maxJobSize: 200_000 }), startBeanstalkd({ fsyncMs: 0, maxJobSize: 200_000 })]);
    sink = await startSmtpSink();
    const port = await freePort();
    postoffice = await startTier(
      'postoffice',
      {
        listen: { host: '127.0.0.1', port },
        beanstalk: { servers: [serverA.address, serverB.address] },
        limits: { maxMessageBytes: 100_000, maxRecipients: 10 },
        clients: { [FQDN]: { key: KEY, senderDomains: ['example.test'] } },
      },
      { readyPort: port },
    );
    sender = { url: `http://127.0.0.1:${port}`, fqdn: FQDN, key: KEY };
  });

  after(async () => {
    await Promise.allSettled([worker?.stop(), postoffice?.stop()]);
    await Promise.allSettled([sink?.stop(), serverA?.stop(), serverB?.stop()]);
  });

  it('spreads the puts, fails over while one server is down, and delivers every accepted message once it is back', async (t) => {
    // Queued before any worker runs, so the server about to die holds undelivered jobs.
    await send(0, PHASES.queuedFirst);
    const [onA, onB] = await Promise.all([totalJobs(serverA), totalJobs(serverB)]);
    assert.equal(onA + onB, PHASES.queuedFirst);
    assert.ok(onA > 0 && onB > 0, `round-robin spreads the puts over both servers (A ${onA}, B ${onB})`);

    worker = await startTier('worker', {
      beanstalk: { servers: [serverA.address, serverB.address] },
      concurrency: WORKER_CONCURRENCY,
      ehloName: 'relay.example.test',
      routes: { 'dest.test': `127.0.0.1:${sink.port}` },
      retry: { delaysSeconds: [1], maxLifetimeSeconds: 600 },
      ops: { host: '127.0.0.1', port: 0 },
    });
    // Kill B while the worker is delivering and the senders are posting.
    const flowing = send(PHASES.queuedFirst, PHASES.bothUp);
    await waitFor(() => sink.messages.length > 0, { timeoutMs: 30_000, intervalMs: 5, what: 'the first delivery' });
    await serverB.kill();
    await flowing;
    await send(PHASES.queuedFirst + PHASES.bothUp, PHASES.oneDown);

    const total = PHASES.queuedFirst + PHASES.bothUp + PHASES.oneDown;
    const refused = [...answers].filter(([, statuses]) => statuses.some((s) => s !== 202));
    assert.deepEqual(refused, [], 'every post was accepted at once: the post office failed over to the live server');
    assert.equal(answers.size, total);

    // What B held is not lost, only delayed: once A is drained, B's undelivered jobs are still missing.
    await waitFor(async () => (await tubeCounts(serverA)).every((count) => count === 0), { timeoutMs: 30_000, what: 'server A drained' });
    const missingWhileBDown = total - arrivals(sink).size;
    assert.ok(missingWhileBDown > 0, 'the killed server held undelivered jobs');
    await serverB.restart();

    await waitFor(
      () => {
        const seen = arrivals(sink);
        return [...Array(total).keys()].every((n) => seen.has(messageIdOf('scale', n)));
      },
      { timeoutMs: 60_000, what: `all ${total} accepted messages at the sink` },
    );
    const seen = arrivals(sink);
    assert.equal(seen.size, total, 'nothing but our messages arrived');
    const duplicates = [...seen.values()].reduce((sum, count) => sum + count - 1, 0);
    // A duplicate is a delivery whose job could not be deleted because its server died
    // (settle_failed: at most one per reserve loop on B), or a put whose answer the kill
    // swallowed so the post office put it again elsewhere (at most one per sender).
    const settleFailed = worker!.logs.filter((l) => l.event === 'settle_failed').length;
    const loopsOnB = WORKER_CONCURRENCY / 2;
    assert.ok(settleFailed <= loopsOnB, `${settleFailed} deliveries lost their job's server`);
    assert.ok(duplicates >= settleFailed && duplicates <= settleFailed + SENDERS, `${duplicates} duplicates, ${settleFailed} settle failures`);
    // The worker logs a delivery after recording it (store, then delete): the line may trail the arrival.
    const expectedDelivered = total + duplicates - settleFailed;
    await waitFor(() => worker!.logs.filter((l) => l.event === 'delivered').length >= expectedDelivered, { timeoutMs: 10_000, what: 'the last delivered log lines' }).catch(() => undefined);
    const delivered = worker!.logs.filter((l) => l.event === 'delivered').length;
    assert.equal(delivered, expectedDelivered, 'every arrival is a logged delivery, except those whose job could not be deleted');
    t.diagnostic(`puts: A ${onA}, B ${onB} before the kill; ${missingWhileBDown} waited for B's restart; ${duplicates} duplicates of ${total} (${settleFailed} settle failures)`);
  });
});
