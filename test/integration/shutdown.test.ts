/**
 * Graceful shutdown of each tier under load, every tier a real process. While messages
 * flow, one tier gets SIGTERM: it stops accepting, finishes or hands back what is in
 * flight, and exits 0 (each tier exits 1 instead when its own bound runs out, so exit
 * code 0 is "within the bound"). After a restart every message that was accepted
 * (202 from the post office, 250 from mailman) reaches the destination exactly once.
 * Senders behave like real clients: a refused or failed attempt is retried.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import nodemailer from 'nodemailer';
import { startBeanstalkd, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { arrivals, inPool, messageIdOf, numberedMessage, postMessage, type SignedSender } from '../helpers/mail-load.ts';
import { freePort, waitFor } from '../helpers/ports.ts';
import { startSmtpSink, type SmtpSink } from '../helpers/smtp-sink.ts';
import { startTier, type TierProcess } from '../helpers/tiers.ts';

const FQDN = 'app1.example.test';
const KEY = '5h7td0wn'.repeat(8);
const TO = 'bob@dest.test';
const RETRY_PAUSE_MS = 100;
const MAX_ATTEMPTS = 150;

function pause(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

describe('graceful shutdown under load', { timeout: 180_000 }, () => {
  let beanstalkd: BeanstalkdProcess;
  let sink: SmtpSink;
  const tiers: { postoffice?: TierProcess; worker?: TierProcess; mailman?: TierProcess } = {};
  let postofficePort: number;
  let mailmanPort: number;
  const spoolDir = mkdtempSync(join(tmpdir(), 'hedwig-shutdown-spool-'));
  let sender: SignedSender;

  const start = {
    postoffice: () =>
      startTier(
        'postoffice',
        {
          listen: { host: '127.0.0.1', port: postofficePort },
          beanstalk: { servers: [beanstalkd.address] },
          limits: { maxMessageBytes: 100_000, maxRecipients: 10 },
          clients: { [FQDN]: { key: KEY, senderDomains: ['example.test'] } },
        },
        { readyPort: postofficePort },
      ),
    worker: () =>
      startTier('worker', {
        beanstalk: { servers: [beanstalkd.address] },
        concurrency: 2,
        ehloName: 'relay.example.test',
        routes: { 'dest.test': `127.0.0.1:${sink.port}` },
        retry: { delaysSeconds: [1], maxLifetimeSeconds: 600 },
        shutdownGraceMs: 5_000,
        ops: { host: '127.0.0.1', port: 0 },
      }),
    mailman: () =>
      startTier(
        'mailman',
        {
          listen: { host: '127.0.0.1', port: mailmanPort },
          allowedNetworks: ['127.0.0.0/8'],
          postoffice: { url: `http://127.0.0.1:${postofficePort}`, fqdn: FQDN, key: KEY, timeoutMs: 2_000 },
          spool: { dir: spoolDir },
          forwarder: { minBackoffMs: 200, maxBackoffMs: 1_000 },
          ops: { host: '127.0.0.1', port: 0 },
        },
        { readyPort: mailmanPort },
      ),
  };

  before(async () => {
    beanstalkd = await startBeanstalkd({ fsyncMs: 0, maxJobSize: 200_000 });
    sink = await startSmtpSink();
    postofficePort = await freePort();
    mailmanPort = await freePort();
    sender = { url: `http://127.0.0.1:${postofficePort}`, fqdn: FQDN, key: KEY };
    tiers.postoffice = await start.postoffice();
    tiers.worker = await start.worker();
    tiers.mailman = await start.mailman();
  });

  after(async () => {
    await Promise.allSettled(Object.values(tiers).map((tier) => tier.stop()));
    await Promise.allSettled([sink?.stop(), beanstalkd?.stop()]);
  });

  /** Posts `count` messages to the signed API from `senders` clients; resolves with the numbers accepted (202). */
  function postAll(tag: string, count: number, senders: number, accepted: Set<number>): Promise<void> {
    return inPool(count, senders, async (n) => {
      for (let attempt = 0; attempt < MAX_ATTEMPTS && !accepted.has(n); attempt++) {
        // A fresh idempotency key per attempt: the post office that answered nothing may be a new process.
        const { status } = await postMessage(sender, numberedMessage(tag, n, TO), TO, `${tag}-${n}-${attempt}`);
        if (status === 202) accepted.add(n);
        else await pause(RETRY_PAUSE_MS);
      }
    });
  }

  async function allArrive(tag: string, count: number): Promise<Map<string, number>> {
    await waitFor(
      () => {
        const seen = arrivals(sink);
        return [...Array(count).keys()].every((n) => seen.has(messageIdOf(tag, n)));
      },
      { timeoutMs: 60_000, what: `all ${count} ${tag} messages at the sink` },
    );
    return new Map([...arrivals(sink)].filter(([id]) => id.startsWith(`<${tag}-`)));
  }

  it('post office: finishes the requests in flight, exits 0, and every 202 is delivered', async (t) => {
    const count = 60;
    const accepted = new Set<number>();
    const sending = postAll('po', count, 4, accepted);
    await waitFor(() => accepted.size >= 15, { intervalMs: 5, what: '15 accepted' });
    const stopping = tiers.postoffice!;
    assert.equal(await stopping.stop(), 0, stopping.stderr());
    const acceptedByStopped = stopping.logs.filter((l) => l.event === 'queued').length;
    tiers.postoffice = await start.postoffice();
    await sending;

    assert.equal(accepted.size, count, 'every message was accepted, by one process or the other');
    const seen = await allArrive('po', count);
    assert.deepEqual([...seen.values()].filter((n) => n !== 1), [], 'each message arrives exactly once');
    const afterSignal = stopping.logs.slice(stopping.logs.findIndex((l) => l.event === 'shutdown')).filter((l) => l.event === 'queued').length;
    t.diagnostic(`stopped post office queued ${acceptedByStopped} (${afterSignal} after SIGTERM); the restarted one ${count - acceptedByStopped}`);
  });

  it('mailman: answers or spools what is in flight, exits 0, and forwards its spool after the restart', async (t) => {
    const count = 40;
    const accepted = new Set<number>();
    const smtp = nodemailer.createTransport({ host: '127.0.0.1', port: mailmanPort, secure: false, ignoreTLS: true, connectionTimeout: 5_000 });
    const sending = inPool(count, 4, async (n) => {
      for (let attempt = 0; attempt < MAX_ATTEMPTS && !accepted.has(n); attempt++) {
        try {
          await smtp.sendMail({ envelope: { from: 'load@example.test', to: [TO] }, raw: numberedMessage('mm', n, TO) });
          accepted.add(n);
        } catch {
          await pause(RETRY_PAUSE_MS);
        }
      }
    });
    // First inline forwarding; then, with the post office gone, mailman spools.
    await waitFor(() => accepted.size >= 8, { intervalMs: 5, what: '8 accepted' });
    assert.equal(await tiers.postoffice!.stop(), 0);
    await waitFor(() => accepted.size >= 20, { intervalMs: 5, what: '20 accepted' });
    const stopping = tiers.mailman!;
    assert.equal(await stopping.stop(), 0, stopping.stderr());
    const spooledAtExit = readdirSync(join(spoolDir, 'new')).length;
    assert.ok(spooledAtExit > 0, 'messages accepted while the post office was down wait in the spool');

    tiers.postoffice = await start.postoffice();
    tiers.mailman = await start.mailman();
    await sending;
    smtp.close();

    assert.equal(accepted.size, count);
    const seen = await allArrive('mm', count);
    assert.deepEqual([...seen.values()].filter((n) => n !== 1), [], 'each message arrives exactly once');
    await waitFor(() => readdirSync(join(spoolDir, 'new')).length === 0, { what: 'an empty spool' });
    t.diagnostic(`${spooledAtExit} messages were in mailman's spool when it exited`);
  });

  it('worker: finishes the deliveries in flight, leaves the rest queued, exits 0, and the restarted worker delivers them', async (t) => {
    const count = 80;
    const accepted = new Set<number>();
    const delivered = () => [...arrivals(sink).keys()].filter((id) => id.startsWith('<wk-')).length;
    // SIGTERM while the worker delivers and the post office keeps queueing.
    const sending = postAll('wk', count, 4, accepted);
    await waitFor(() => delivered() >= 5, { intervalMs: 5, what: 'the first deliveries' });
    const stopping = tiers.worker!;
    assert.equal(await stopping.stop(), 0, stopping.stderr());
    const deliveredBefore = delivered();
    await sending;
    assert.equal(accepted.size, count);
    assert.equal(delivered(), deliveredBefore, 'nothing is delivered while no worker runs');
    assert.ok(deliveredBefore < count, 'work was left in the queue for the next worker');
    assert.ok(!stopping.logs.some((l) => l.event === 'shutdown_abort_deliveries' || l.event === 'settle_failed'), 'in-flight deliveries finished and were settled');

    tiers.worker = await start.worker();
    const seen = await allArrive('wk', count);
    assert.deepEqual([...seen.values()].filter((n) => n !== 1), [], 'each message arrives exactly once');
    const finishedAfterSignal = stopping.logs.slice(stopping.logs.findIndex((l) => l.event === 'shutdown')).filter((l) => l.event === 'delivered').length;
    t.diagnostic(`${deliveredBefore} delivered by the stopped worker (${finishedAfterSignal} finished after SIGTERM), ${count - deliveredBefore} by the restarted one`);
  });
});
