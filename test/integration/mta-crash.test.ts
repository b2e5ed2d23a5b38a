import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { BeanstalkClient } from '../../shared/beanstalk.ts';
import { encodeJob, TUBE, type OutboundJob } from '../../shared/job.ts';
import { workerConfigSchema } from '../../worker/config.ts';
import { startWorker } from '../../worker/server.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { waitFor } from '../helpers/ports.ts';
import { startSmtpSink } from '../helpers/smtp-sink.ts';
import { startTier, type TierProcess } from '../helpers/tiers.ts';
import { testStoreUrl } from '../helpers/store.ts';

/**
 * Crashes: a worker process killed with SIGKILL in the middle of a delivery, and a job that
 * keeps being picked up and never settled. Delivery is at-least-once: nothing is lost, and
 * what a receiver accepted before the crash may arrive again.
 */
describe('worker crashes', { timeout: 90_000 }, () => {
  let beanstalkd: BeanstalkdProcess;
  let client: BeanstalkClient;

  before(async () => {
    beanstalkd = await startBeanstalkd();
    client = new BeanstalkClient({ host: beanstalkd.host, port: beanstalkd.port });
    await client.connect();
  });

  after(async () => {
    await client?.close();
    await beanstalkd?.stop();
  });

  function job(rcpttos: string[]): OutboundJob {
    return {
      v: 1,
      id: randomUUID(),
      fqdn: 'app1.example.com',
      mailfrom: 'app@example.com',
      rcpttos,
      data: Buffer.from(`From: app@example.com\r\nSubject: crash\r\nMessage-ID: <${rcpttos[0]}.crash@example.com>\r\n\r\nhello\r\n`).toString('base64'),
      receivedAt: Date.now(),
      attempts: 0,
    };
  }

  async function tubeCounts(tube: string) {
    const stats = await client.statsTube(tube);
    return { ready: Number(stats['current-jobs-ready']), reserved: Number(stats['current-jobs-reserved']), delayed: Number(stats['current-jobs-delayed']), buried: Number(stats['current-jobs-buried']) };
  }

  it('SIGKILL mid-delivery: after a restart every recipient is delivered; duplicates are counted (at-least-once)', async (t) => {
    // Two domains in one job: fast.test accepts at once, hung.test takes the message and never answers.
    const fast = await startSmtpSink({ host: '127.0.0.2' });
    const hung = await startSmtpSink({ host: '127.0.0.3', script: { stallAfterData: { times: 1 } } });
    t.after(() => fast.stop());
    t.after(() => hung.stop());
    const config = {
      beanstalk: { servers: [beanstalkd.address] },
      concurrency: 1,
      ehloName: 'worker.hedwig.test',
      routes: { 'fast.test': `${fast.host}:${fast.port}`, 'hung.test': `${hung.host}:${hung.port}` },
      timeouts: { connectMs: 3000, greetingMs: 3000, socketMs: 60_000 },
      retry: { delaysSeconds: [1], maxLifetimeSeconds: 60 },
      ops: { host: '127.0.0.1', port: 0 },
      shutdownGraceMs: 1000,
    };
    let worker: TierProcess = await startTier('worker', config);
    t.after(() => worker.kill());

    await client.use(TUBE.outbound);
    const queued = job(['a@fast.test', 'b@hung.test']);
    await client.put(encodeJob(queued), { ttrSeconds: 60 });
    await waitFor(() => fast.messages.length === 1 && hung.stalled === 1, { what: 'fast.test delivered and hung.test mid-delivery' });

    await worker.kill();
    // The reserving connection died with the process: beanstalkd puts the job straight back.
    await waitFor(async () => (await tubeCounts(TUBE.outbound)).ready === 1, { what: 'the job back in ready' });

    worker = await startTier('worker', config);
    await waitFor(async () => Object.values(await tubeCounts(TUBE.outbound)).every((n) => n === 0), { timeoutMs: 20_000, what: 'the job settled and deleted' });
    // The worker logs a settlement after deleting its job (put before delete, then the log), and
    // its log lines reach this process through a pipe: wait for them rather than race them.
    const restarted = worker;
    const settledEvents = () => restarted.logs.filter((l) => l.messageId === queued.id && ['delivered', 'deferred', 'bounced', 'duplicate_job'].includes(String(l.event)));
    // A timeout here is reported by the assertion on `delivered` below, with what was logged.
    await waitFor(() => settledEvents().length >= 2 || settledEvents().some((l) => l.event === 'duplicate_job'), { timeoutMs: 10_000 }).catch(() => undefined);

    const accepted = { fast: fast.messages.length, hung: hung.messages.length };
    const duplicates = accepted.fast - 1 + (accepted.hung - 1);
    t.diagnostic(`accepted: fast.test ${accepted.fast}, hung.test ${accepted.hung} (plus ${hung.stalled} transfer left unanswered by the kill); duplicates: ${duplicates}`);
    assert.ok(accepted.fast >= 1 && accepted.hung >= 1, 'every recipient delivered at least once');
    assert.ok(accepted.fast <= 2 && accepted.hung <= 1, 'at most one extra copy per crash');
    for (const message of [...fast.messages, ...hung.messages]) {
      // Every copy is the same message: a receiver can drop duplicates by Message-ID.
      assert.match(message.raw.toString(), /^Message-ID: <a@fast\.test\.crash@example\.com>\r$/m);
      assert.ok(message.raw.toString().endsWith('\r\n\r\nhello\r\n'));
    }
    const delivered = worker.logs.filter((l) => l.event === 'delivered' && l.messageId === queued.id).map((l) => l.recipient);
    assert.deepEqual(delivered.sort(), ['a@fast.test', 'b@hung.test'], `the restarted worker settled both recipients (it logged: ${JSON.stringify(settledEvents().map((l) => [l.event, l.recipient]))})`);
    assert.equal(await worker.stop(), 0);
  });

  it('a job picked up again and again without an outcome (a crash loop) is buried, not retried forever', async (t) => {
    const tube = 'crash-loop';
    await client.use(tube);
    const jobId = await client.put(encodeJob(job(['someone@example.com'])), { ttrSeconds: 60 });
    // Twenty holders that never settled it (as if each crashed): reserve and hand it back.
    await client.watch(tube);
    for (let i = 0; i < 20; i++) {
      const reserved = await client.reserve(5);
      assert.equal(reserved?.id, jobId);
      await reserved.release();
    }
    await client.ignore(tube);

    const logs: Array<Record<string, unknown>> = [];
    const config = workerConfigSchema.parse({ store: { url: testStoreUrl() },
      beanstalk: { servers: [beanstalkd.address], tube, failedTube: `${tube}-failed` },
      concurrency: 1,
      ops: { host: '127.0.0.1', port: 0 },
    });
    const worker = await startWorker(config, { logger: pino({}, { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) }), registry: new Registry() });
    t.after(() => worker.stop());

    await waitFor(async () => (await client.statsJob(jobId)).state === 'buried', { what: 'the job buried' });
    const line = logs.find((l) => l.event === 'job_reserved_too_often');
    assert.equal(line?.jobId, jobId);
    assert.equal(line?.reserves, 21);
    assert.equal(logs.filter((l) => l.event === 'attempt').length, 0, 'no delivery attempted');
  });
});
