import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { BeanstalkClient } from '../../shared/beanstalk.ts';
import { decodeFailedJob, encodeJob, TUBE, type FailedJob, type OutboundJob } from '../../shared/job.ts';
import { tubeCounts } from '../../shared/tube-stats.ts';
import { workerConfigSchema } from '../../worker/config.ts';
import { startWorker, type RunningWorker } from '../../worker/server.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { startDns, type DnsServer } from '../helpers/dns.ts';
import { freePort } from '../helpers/ports.ts';
import { startSmtpSink, type SmtpSink } from '../helpers/smtp-sink.ts';
import { testStoreUrl } from '../helpers/store.ts';

/**
 * Mail the worker must never try to deliver, through a real worker, beanstalkd and DNS
 * (dnsmasq): MX hosts whose only addresses are IPv6 forms of internal addresses (issue
 * 12.9), and recipients at address literals in jobs queued before the post office refused
 * them (12.8). Both bounce at the first attempt, and the worker opens no connection.
 */
describe('mail the worker refuses to deliver', { timeout: 90_000 }, () => {
  let beanstalkd: BeanstalkdProcess;
  let dns: DnsServer;
  let sink: SmtpSink;
  let worker: RunningWorker;
  let producer: BeanstalkClient;
  const logs: Array<Record<string, unknown>> = [];

  // One domain per form; each MX host has only that address.
  const forms: Record<string, string> = {
    'mapped.test': '::ffff:127.0.0.1',
    'compatible.test': '::127.0.0.1',
    'translated.test': '::ffff:0:127.0.0.1',
    'nat64.test': '64:ff9b::7f00:1',
    'nat64-local.test': '64:ff9b:1::808:808',
    'sixtofour.test': '2002:7f00:1::1',
    'teredo.test': '2001:0:4136:e378:8000:63bf:3fff:fdd2',
    'sitelocal.test': 'fec0::1',
    'ula.test': 'fd00::25',
    'documentation.test': '2001:db8::25',
  };

  before(async () => {
    const port = await freePort();
    // Listens where the IPv4-mapped and -compatible forms lead: any connection would show here.
    sink = await startSmtpSink({ host: '127.0.0.1', port });
    dns = await startDns({
      mx: Object.fromEntries(Object.keys(forms).map((domain) => [domain, [{ host: `mx.${domain}`, preference: 10 }]])),
      hosts: Object.fromEntries(Object.entries(forms).map(([domain, address]) => [`mx.${domain}`, [address]])),
    });
    beanstalkd = await startBeanstalkd({ maxJobSize: 1_048_576 });
    const config = workerConfigSchema.parse({
      store: { url: testStoreUrl() },
      beanstalk: { servers: [beanstalkd.address] },
      concurrency: 1,
      ehloName: 'worker.hedwig.test',
      dns: { servers: [dns.server], timeoutMs: 2000 },
      smtpPort: port,
      allowPrivateAddresses: false,
      timeouts: { connectMs: 2000, greetingMs: 2000, socketMs: 5000 },
      retry: { delaysSeconds: [60], maxLifetimeSeconds: 3600 },
      bounces: { enabled: false },
      ops: { host: '127.0.0.1', port: 0 },
      shutdownGraceMs: 2000,
    });
    const logger = pino({ level: 'info' }, { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) });
    worker = await startWorker(config, { logger, registry: new Registry() });
    producer = new BeanstalkClient({ host: beanstalkd.host, port: beanstalkd.port });
    await producer.connect();
  });

  after(async () => {
    await worker?.stop();
    await producer?.close();
    await beanstalkd?.stop();
    await dns?.stop();
    await sink?.stop();
  });

  async function failedRecordOf(rcpttos: string[]): Promise<FailedJob> {
    const job: OutboundJob = { v: 1, id: randomUUID(), fqdn: 'app1.example.com', mailfrom: 'app@example.com', rcpttos, data: Buffer.from('Subject: x\r\n\r\nhi\r\n').toString('base64'), receivedAt: Date.now(), attempts: 0 };
    await producer.putTo(TUBE.outbound, encodeJob(job), { ttrSeconds: 60 });
    const reader = new BeanstalkClient({ host: beanstalkd.host, port: beanstalkd.port });
    try {
      await reader.connect();
      await reader.watchOnly(TUBE.failed);
      const reserved = await reader.reserve(20);
      assert.ok(reserved, 'a failed-tube record');
      await reserved.delete();
      return decodeFailedJob(reserved.payload);
    } finally {
      await reader.close();
    }
  }

  it('bounces MX hosts that only have IPv6 forms of internal addresses, without connecting to any', async () => {
    const rcpttos = Object.keys(forms).map((domain) => `user@${domain}`);
    const record = await failedRecordOf(rcpttos);
    assert.deepEqual(new Set(record.failures.map((f) => f.recipient)), new Set(rcpttos), 'every recipient failed at the first attempt');
    for (const failure of record.failures) {
      assert.equal(failure.outcome, 'bounced', failure.recipient);
      assert.equal(failure.enhancedCode, '5.4.4', `${failure.recipient}: ${failure.response}`);
      assert.equal(failure.attempts, 1);
    }
    assert.equal(sink.connections, 0, 'nothing connected to the loopback listener');
    const connects = logs.filter((l) => l.event === 'attempt' && l.stage === 'connect');
    assert.deepEqual(connects, [], 'no connection was attempted');
    assert.equal((await tubeCounts(producer, TUBE.outbound)).delayed, 0, 'nothing left to retry');
  });

  it('bounces recipients at address literals at once (a job queued before the post office refused them)', async () => {
    const record = await failedRecordOf(['user@[127.0.0.1]', 'user@[IPv6:::1]']);
    assert.deepEqual(
      record.failures.map((f) => [f.recipient, f.outcome, f.enhancedCode]),
      [
        ['user@[127.0.0.1]', 'bounced', '5.1.2'],
        ['user@[IPv6:::1]', 'bounced', '5.1.2'],
      ],
    );
    assert.equal(sink.connections, 0);
    assert.equal((await tubeCounts(producer, TUBE.outbound)).delayed, 0, 'no retry scheduled');
  });
});
