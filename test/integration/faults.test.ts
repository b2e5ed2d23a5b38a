/**
 * The fault suite: a steady stream of SMTP submissions into the whole relay (every tier
 * its own process, beanstalkd with its binlog) while, one after another, each tier is
 * SIGKILLed and restarted, beanstalkd is killed and restarted, the receiving MX drops
 * connections in the middle of DATA, and the post office is down for 30 seconds.
 *
 * The promise under test: every message that got a 250 from mailman reaches the MX,
 * unchanged. Delivery is at-least-once, so copies are allowed; they are counted and
 * reported, not failed.
 */
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { benchMessage, BENCH_SENDER, BENCH_SENDER_DOMAIN, BENCH_RECIPIENT_DOMAIN, recipientFor } from '../../bench/message.ts';
import { runSmtpLoad, type SmtpLoadResult } from '../../bench/smtp-load.ts';
import { BeanstalkClient } from '../../shared/beanstalk.ts';
import { TUBE, jobSizeFor } from '../../shared/job.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { freePort, waitFor } from '../helpers/ports.ts';
import { startSmtpSink, type SmtpSink } from '../helpers/smtp-sink.ts';
import { startTier, type TierProcess } from '../helpers/tiers.ts';

const FQDN = 'app1.faults.test';
const KEY = 'fa017e57'.repeat(8);
const MESSAGES = 200;
const RATE_PER_SECOND = 5; // 40 s of submissions: long enough to span every fault below
const MESSAGE_BYTES = 1500;
const POSTOFFICE_OUTAGE_MS = 30_000;
const ID_HEADER = /\r\nX-Bench-Id: (\d+)\r\n/;

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function benchIdOf(raw: Buffer): number | undefined {
  const match = ID_HEADER.exec(`\r\n${raw.toString('latin1', 0, 8192)}`);
  return match ? Number(match[1]) : undefined;
}

describe('faults under load', { timeout: 240_000 }, () => {
  let beanstalkd: BeanstalkdProcess;
  let sink: SmtpSink;
  const tiers: Partial<Record<'postoffice' | 'worker' | 'mailman', TierProcess>> = {};
  /** The log lines of every incarnation of each tier: the evidence that each fault hit traffic. */
  const incarnations: Record<string, Array<Array<Record<string, unknown>>>> = { postoffice: [], worker: [], mailman: [] };
  const events = (name: string, event: string) => incarnations[name]!.flat().filter((line) => line.event === event);
  const ports = { postoffice: 0, mailman: 0, workerOps: 0 };
  const spoolDir = join(mkdtempSync(join(tmpdir(), 'hedwig-faults-')), 'spool');
  let load: SmtpLoadResult;

  async function start(name: 'postoffice' | 'worker' | 'mailman'): Promise<void> {
    const configs = {
      postoffice: {
        listen: { host: '127.0.0.1', port: ports.postoffice },
        beanstalk: { servers: [beanstalkd.address] },
        limits: { maxMessageBytes: 65_536, maxRecipients: 10 },
        clients: { [FQDN]: { key: KEY, senderDomains: [BENCH_SENDER_DOMAIN] } },
      },
      worker: {
        beanstalk: { servers: [beanstalkd.address] },
        concurrency: 4,
        ehloName: 'relay.faults.test',
        routes: { [BENCH_RECIPIENT_DOMAIN]: `127.0.0.1:${sink.port}` },
        timeouts: { connectMs: 2000, greetingMs: 2000, socketMs: 5000 },
        retry: { delaysSeconds: [1], maxLifetimeSeconds: 3600 },
        shutdownGraceMs: 2000,
        ops: { host: '127.0.0.1', port: ports.workerOps },
      },
      mailman: {
        listen: { host: '127.0.0.1', port: ports.mailman },
        allowedNetworks: ['127.0.0.0/8'],
        hostname: 'mailman.faults.test',
        postoffice: { url: `http://127.0.0.1:${ports.postoffice}`, fqdn: FQDN, key: KEY, timeoutMs: 2000 },
        spool: { dir: spoolDir },
        forwarder: { minBackoffMs: 200, maxBackoffMs: 1000 },
        ops: { host: '127.0.0.1', port: 0 },
      },
    };
    const readyPort = { postoffice: ports.postoffice, worker: ports.workerOps, mailman: ports.mailman }[name];
    const tier = await startTier(name, configs[name], { readyPort });
    tiers[name] = tier;
    incarnations[name]!.push(tier.logs);
  }

  before(async () => {
    beanstalkd = await startBeanstalkd({ maxJobSize: jobSizeFor(65_536, 10), fsyncMs: 0 });
    sink = await startSmtpSink();
    ports.postoffice = await freePort();
    ports.mailman = await freePort();
    ports.workerOps = await freePort();
    await start('postoffice');
    await start('worker');
    await start('mailman');
  });

  after(async () => {
    await Promise.allSettled(Object.values(tiers).map((tier) => tier.stop()));
    await Promise.allSettled([sink?.stop(), beanstalkd?.stop()]);
  });

  it('delivers every accepted message while each tier is killed, beanstalkd restarts, the MX drops DATA and the post office is down for 30 s', async (t) => {
    const running = runSmtpLoad({
      host: '127.0.0.1',
      port: ports.mailman,
      messages: MESSAGES,
      concurrency: 4,
      ratePerSecond: RATE_PER_SECOND,
      from: BENCH_SENDER,
      recipient: recipientFor,
      message: (id) => benchMessage(id, MESSAGE_BYTES),
      // A real client retries a 4xx or a lost connection; mailman is down for a moment below.
      maxAttempts: 100,
      retryDelayMs: 300,
      deadlineMs: 150_000,
    });

    const accepted = () => sink.messages.length;
    const step = async (what: string, fault: () => Promise<void>) => {
      await sleep(2000);
      t.diagnostic(`${what} (sink holds ${accepted()} messages)`);
      await fault();
    };

    await step('SIGKILL mailman and restart it on the same spool', async () => {
      await tiers.mailman!.kill();
      await start('mailman');
    });
    await step('SIGKILL the post office and restart it', async () => {
      await tiers.postoffice!.kill();
      await start('postoffice');
    });
    await step('SIGKILL the worker and restart it', async () => {
      await tiers.worker!.kill();
      await start('worker');
    });
    await step('SIGKILL beanstalkd and restart it from its binlog', async () => {
      await beanstalkd.kill();
      await beanstalkd.restart();
    });
    await step('the MX drops the connection mid-DATA, five times', async () => {
      sink.script = { dropDuringData: { times: 5 } };
    });
    await step(`the post office goes down for ${POSTOFFICE_OUTAGE_MS / 1000} s`, async () => {
      await tiers.postoffice!.stop();
      await sleep(POSTOFFICE_OUTAGE_MS);
      await start('postoffice');
    });

    load = await running;
    t.diagnostic(`accepted ${load.accepted}/${MESSAGES}; failed attempts the client retried: ${JSON.stringify(load.failures)}`);
    assert.equal(load.accepted, MESSAGES, `every message is accepted in the end by a client that retries (failed attempts: ${JSON.stringify(load.failures)})`);

    const acceptedIds = [...load.acceptedAt.keys()].filter((id) => !Number.isNaN(load.acceptedAt[id]!));
    await waitFor(
      () => {
        const arrived = new Set(sink.messages.map((m) => benchIdOf(m.raw)));
        return acceptedIds.every((id) => arrived.has(id));
      },
      { timeoutMs: 90_000, intervalMs: 250, what: 'every accepted message at the MX' },
    );

    const copies = new Map<number, number>();
    for (const message of sink.messages) {
      const id = benchIdOf(message.raw);
      assert.ok(id !== undefined, 'only benchmark messages reach the MX');
      copies.set(id, (copies.get(id) ?? 0) + 1);
      const sent = benchMessage(id, MESSAGE_BYTES);
      assert.deepEqual(message.raw.subarray(message.raw.length - sent.length), sent, `message ${id} arrived changed`);
      assert.deepEqual(message.rcptTo, [recipientFor(id)]);
    }
    const duplicates = [...copies.values()].reduce((sum, n) => sum + n - 1, 0);
    const report = { accepted: load.accepted, delivered: copies.size, copiesBeyondTheFirst: duplicates, messagesWithCopies: [...copies.values()].filter((n) => n > 1).length };
    t.diagnostic(`duplicates: ${JSON.stringify(report)}`);
    assert.equal(copies.size, MESSAGES);

    // Evidence that each fault really hit traffic, so a quiet run cannot pass by accident.
    assert.ok(load.failures.ECONNREFUSED || load.failures.ECONNRESET || load.failures.ECLOSED, 'clients saw mailman go away');
    assert.ok(events('mailman', 'spooled').length > 0, 'mailman spooled while the post office was down');
    // A drop on a fresh connection defers the recipient; on a kept one the worker reconnects at once.
    const recovered = events('worker', 'deferred').length + events('worker', 'connection_lost').length;
    assert.ok(recovered >= 5, `the worker recovered from the five dropped transactions (deferred or connection_lost: ${recovered})`);
    assert.equal(sink.stalled, 0);

    const probe = new BeanstalkClient({ host: '127.0.0.1', port: beanstalkd.port });
    await probe.connect();
    try {
      const failed = await probe.statsTube(TUBE.failed).catch(() => ({ 'total-jobs': '0' }));
      assert.equal(Number(failed['total-jobs']), 0, 'nothing went to the failed tube');
      await waitFor(async () => {
        const outbound = await probe.statsTube(TUBE.outbound);
        return ['ready', 'reserved', 'delayed', 'buried'].every((state) => Number(outbound[`current-jobs-${state}`]) === 0);
      }, { what: 'the outbound tube to be empty' });
    } finally {
      await probe.close();
    }
    for (const tier of Object.values(tiers)) assert.equal(tier.child.exitCode, null, `${tier.name} is still running`);
  });
});
