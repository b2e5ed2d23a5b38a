import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { BeanstalkClient } from '../../shared/beanstalk.ts';
import { decodeFailedJob, encodeJob, TUBE, type OutboundJob } from '../../shared/job.ts';
import { startWorker, type RunningWorker } from '../../worker/server.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { jsonOf, runHedwig } from '../helpers/cli.ts';
import { waitFor } from '../helpers/ports.ts';
import { startSmtpSink, type SmtpSink } from '../helpers/smtp-sink.ts';
import { testWorkerConfig } from '../helpers/worker-config.ts';

/**
 * `hedwig queue stats` and `hedwig failed ...` against a real beanstalkd whose failed tube
 * holds real records: a real worker delivers four messages to an SMTP sink that rejects
 * some recipients permanently. The CLI runs as its own process, exactly as installed.
 *
 *   M1 to x1@a.test (550 5.1.1), ok@a.test (accepted), y1@b.test (554 5.7.1)
 *   M2 to x2@a.test (550 5.1.1)
 *   M3 to z@c.test  (550 5.7.1)
 *   M4 to y2@b.test (554 5.7.1)
 *
 * plus one job in the failed tube that is not a failed record at all.
 */
interface ListedRecord {
  server: string;
  jobId: string;
  messageId: string;
  failures: Array<{ recipient: string; responseCode?: number; enhancedCode?: string; outcome: string }>;
  otherRecipients: number;
}

describe('hedwig queue and failed commands', { timeout: 120_000 }, () => {
  let beanstalkd: BeanstalkdProcess;
  let sink: SmtpSink;
  let worker: RunningWorker;
  let observer: BeanstalkClient;
  let env: NodeJS.ProcessEnv;
  const ids: Record<'M1' | 'M2' | 'M3' | 'M4', string> = { M1: randomUUID(), M2: randomUUID(), M3: randomUUID(), M4: randomUUID() };
  let garbageJobId: string;
  const MESSAGE = 'From: app@sender.test\r\nTo: someone\r\nSubject: quarterly report\r\n\r\nbody text that must never be shown\r\n';

  before(async () => {
    sink = await startSmtpSink({
      script: {
        recipients: {
          'x1@a.test': { code: 550, message: '5.1.1 no such user' },
          'x2@a.test': { code: 550, message: '5.1.1 no such user' },
          'y1@b.test': { code: 554, message: '5.7.1 rejected by policy' },
          'y2@b.test': { code: 554, message: '5.7.1 rejected by policy' },
          'z@c.test': { code: 550, message: '5.7.1 sender blocked' },
        },
      },
    });
    beanstalkd = await startBeanstalkd();
    env = { HEDWIG_BEANSTALK_SERVERS: beanstalkd.address };
    const route = `${sink.host}:${sink.port}`;
    const config = testWorkerConfig(beanstalkd.address, { routes: { 'a.test': route, 'b.test': route, 'c.test': route } });
    worker = await startWorker(config, { logger: pino({ level: 'silent' }), registry: new Registry() });

    observer = new BeanstalkClient({ host: beanstalkd.host, port: beanstalkd.port });
    await observer.connect();
    const put = async (id: string, rcpttos: string[]) => {
      const job: OutboundJob = { v: 1, id, fqdn: 'app1.example.com', mailfrom: 'app@sender.test', rcpttos, data: Buffer.from(MESSAGE).toString('base64'), receivedAt: Date.now(), attempts: 0 };
      await observer.use(TUBE.outbound);
      await observer.put(encodeJob(job), { ttrSeconds: 60 });
      // One at a time, so the failed records are in a known order.
      await waitFor(async () => Number((await observer.statsTube(TUBE.failed).catch(() => ({}) as Record<string, unknown>))['total-jobs'] ?? 0) >= Object.values(ids).indexOf(id) + 1, {
        timeoutMs: 15_000,
        what: `failed record of ${id}`,
      });
    };
    await put(ids.M1, ['x1@a.test', 'ok@a.test', 'y1@b.test']);
    await put(ids.M2, ['x2@a.test']);
    await put(ids.M3, ['z@c.test']);
    await put(ids.M4, ['y2@b.test']);
    await observer.use(TUBE.failed);
    garbageJobId = await observer.put(Buffer.from('not a failed record'), { ttrSeconds: 60 });
  });

  after(async () => {
    await worker?.stop();
    await observer?.close();
    await beanstalkd?.stop();
    await sink?.stop();
  });

  async function failedTubeState(): Promise<{ ready: number; reserved: number; head: string | undefined }> {
    const stats = await observer.statsTube(TUBE.failed);
    await observer.use(TUBE.failed);
    const head = await observer.peekReady();
    return { ready: Number(stats['current-jobs-ready']), reserved: Number(stats['current-jobs-reserved']), head: head?.id };
  }

  async function list(...filters: string[]): Promise<ListedRecord[]> {
    const run = await runHedwig(['failed', 'list', '--json', ...filters], { env });
    assert.equal(run.code, 0, run.stderr);
    return jsonOf<ListedRecord[]>(run);
  }

  const summary = (records: ListedRecord[]) => records.map((r) => [r.messageId, r.failures.map((f) => f.recipient)]);

  it('queue stats shows every hedwig tube with its counts and the age of the oldest message', async () => {
    const run = await runHedwig(['queue', 'stats', '--json'], { env });
    assert.equal(run.code, 0, run.stderr);
    const rows = jsonOf<Array<{ server: string; tube: string; ready: number; delayed: number; reserved: number; buried: number; oldestAgeSeconds: number | null }>>(run);
    const failed = rows.find((r) => r.tube === TUBE.failed);
    const outbound = rows.find((r) => r.tube === TUBE.outbound);
    assert.deepEqual({ ...failed, oldestAgeSeconds: typeof failed?.oldestAgeSeconds }, { server: beanstalkd.address, tube: TUBE.failed, ready: 5, delayed: 0, reserved: 0, buried: 0, oldestAgeSeconds: 'number' });
    assert.deepEqual(outbound, { server: beanstalkd.address, tube: TUBE.outbound, ready: 0, delayed: 0, reserved: 0, buried: 0, oldestAgeSeconds: null });

    const text = await runHedwig(['queue', 'stats'], { env });
    assert.match(text.stdout, /^SERVER\s+TUBE\s+READY\s+DELAYED\s+RESERVED\s+BURIED\s+OLDEST$/m);
    assert.match(text.stdout, new RegExp(`^${beanstalkd.address}\\s+${TUBE.failed}\\s+5\\s+0\\s+0\\s+0\\s+\\S+$`, 'm'));
  });

  it('failed list shows every record in order, leaves the tube exactly as it was and reports the odd job', async () => {
    const before = await failedTubeState();
    const run = await runHedwig(['failed', 'list', '--json'], { env });
    assert.equal(run.code, 0, run.stderr);
    assert.deepEqual(summary(jsonOf<ListedRecord[]>(run)), [
      [ids.M1, ['x1@a.test', 'y1@b.test']],
      [ids.M2, ['x2@a.test']],
      [ids.M3, ['z@c.test']],
      [ids.M4, ['y2@b.test']],
    ]);
    assert.match(run.stderr, new RegExp(`not failed-message records.*/${garbageJobId}`));
    assert.deepEqual(await failedTubeState(), { ...before, reserved: 0 }, 'all back in ready, same head');
    assert.equal(before.ready, 5);

    const text = await runHedwig(['failed', 'list'], { env });
    assert.match(text.stdout, /^ID\s+FAILED\s+MESSAGE\s+RECIPIENT\s+OUTCOME\s+CODE\s+ENHANCED\s+RESPONSE$/m);
    assert.match(text.stdout, new RegExp(`${ids.M1}\\s+x1@a\\.test\\s+bounced\\s+550\\s+5\\.1\\.1\\s+550 5\\.1\\.1 no such user`));
  });

  it('failed list filters by reply code, enhanced code, domain and count', async () => {
    assert.deepEqual(summary(await list('--code', '550')), [
      [ids.M1, ['x1@a.test']],
      [ids.M2, ['x2@a.test']],
      [ids.M3, ['z@c.test']],
    ]);
    assert.deepEqual(summary(await list('--code', '55x', '--enhanced', '5.7')), [
      [ids.M1, ['y1@b.test']],
      [ids.M3, ['z@c.test']],
      [ids.M4, ['y2@b.test']],
    ]);
    assert.deepEqual(summary(await list('--domain', 'B.test')), [
      [ids.M1, ['y1@b.test']],
      [ids.M4, ['y2@b.test']],
    ]);
    assert.deepEqual(summary(await list('--enhanced', '5.7.1', '--limit', '2')), [
      [ids.M1, ['y1@b.test']],
      [ids.M3, ['z@c.test']],
    ]);
    assert.deepEqual(await list('--since', '1h', '--domain', 'nowhere.test'), []);
    assert.equal((await failedTubeState()).ready, 5);
  });

  it('failed show prints the envelope, headers and failures of one record, never the body', async () => {
    const [first] = await list('--limit', '1');
    const run = await runHedwig(['failed', 'show', first!.jobId], { env });
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, new RegExp(`message\\s+${ids.M1}`));
    assert.match(run.stdout, /Subject: quarterly report/);
    assert.match(run.stdout, /x1@a\.test\s+bounced\s+550 5\.1\.1/);
    assert.match(run.stdout, /y1@b\.test\s+bounced\s+554 5\.7\.1/);
    assert.doesNotMatch(run.stdout, /must never be shown/);

    const json = jsonOf<{ job: { id: string }; failures: unknown[]; tube: string }>(await runHedwig(['failed', 'show', `${beanstalkd.address}/${first!.jobId}`, '--json'], { env }));
    assert.equal(json.job.id, ids.M1);
    assert.equal(json.tube, TUBE.failed);
    assert.equal(json.failures.length, 2);

    const missing = await runHedwig(['failed', 'show', '999999'], { env });
    assert.equal(missing.code, 3);
    const notARecord = await runHedwig(['failed', 'show', garbageJobId], { env });
    assert.equal(notARecord.code, 3);
    const bad = await runHedwig(['failed', 'show', 'abc'], { env });
    assert.equal(bad.code, 2);
  });

  it('failed report counts failures by reason class, reply code and domain', async () => {
    const run = await runHedwig(['failed', 'report', '--json'], { env });
    assert.equal(run.code, 0, run.stderr);
    assert.deepEqual(jsonOf(run), {
      records: 4,
      recipients: 5,
      byClass: { 'x.7.x security or policy': 3, 'x.1.x addressing (bad mailbox or domain)': 2 },
      byCode: { '550': 3, '554': 2 },
      byDomain: { 'b.test': 2, 'a.test': 2, 'c.test': 1 },
    });
    const text = await runHedwig(['failed', 'report', '--code', '554'], { env });
    assert.match(text.stdout, /^2 failed recipient\(s\) in 2 record\(s\)$/m);
    assert.match(text.stdout, /^b\.test\s+2$/m);
  });

  it('failed retry --dry-run changes nothing', async () => {
    const before = await failedTubeState();
    const run = await runHedwig(['failed', 'retry', '--dry-run', '--json', '--code', '550', '--domain', 'a.test'], { env });
    assert.equal(run.code, 0, run.stderr);
    const result = jsonOf<{ dryRun: boolean; records: number; recipients: number; moved: Array<{ messageId: string; recipients: string[] }> }>(run);
    assert.deepEqual([result.dryRun, result.records, result.recipients], [true, 2, 2]);
    assert.deepEqual(await failedTubeState(), before);
    assert.equal(Number((await observer.statsTube(TUBE.outbound))['current-jobs-ready']), 0);
  });

  it('failed retry moves exactly the matching recipients to the outbound queue and keeps the rest failed', async () => {
    // Every mailbox accepts now: whatever the retry moves gets delivered, so the sink shows exactly what moved.
    sink.script = {};
    sink.messages.length = 0;
    const run = await runHedwig(['failed', 'retry', '--code', '550', '--enhanced', '5.1.1', '--domain', 'a.test'], { env });
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, /^moved 2 recipient\(s\) in 2 record\(s\) to hedwig-outbound$/m);

    await sink.waitForMessages(2, 15_000);
    assert.deepEqual(sink.messages.map((m) => m.rcptTo).sort(), [['x1@a.test'], ['x2@a.test']], 'only the matching recipients are sent again');
    assert.ok(sink.messages[0]!.raw.toString().endsWith(MESSAGE), 'the message of the failed record is what goes out again (the worker may add header fields on top)');

    // Left in the failed tube: M3 and M4 untouched, in their order, then what is left of M1.
    assert.deepEqual(summary(await list()), [
      [ids.M3, ['z@c.test']],
      [ids.M4, ['y2@b.test']],
      [ids.M1, ['y1@b.test']],
    ]);
    await waitFor(async () => (await observer.statsTube(TUBE.outbound))['current-jobs-ready'] === 0 && (await observer.statsTube(TUBE.outbound))['current-jobs-reserved'] === 0, {
      what: 'the outbound tube to drain',
    });
    assert.equal(sink.messages.length, 2, 'nothing else was sent');
    await observer.use(TUBE.failed);
    assert.equal((await observer.peek(garbageJobId))?.payload.toString(), 'not a failed record');

    const remainder = (await list())[2]!;
    const record = decodeFailedJob((await observer.peek(remainder.jobId))!.payload);
    assert.deepEqual(record.job.rcpttos, ['y1@b.test'], 'the split record holds only the recipients that stay');
  });

  it('answers --help on every command and exits 2 on bad usage', async () => {
    for (const command of [['queue', 'stats'], ['failed', 'list'], ['failed', 'show'], ['failed', 'retry'], ['failed', 'report'], ['grep'], ['send']]) {
      const run = await runHedwig([...command, '--help']);
      assert.equal(run.code, 0, command.join(' '));
      assert.match(run.stdout, new RegExp(`^Usage: hedwig ${command.join(' ')}`), command.join(' '));
    }
    assert.equal((await runHedwig(['failed', 'list', '--bogus'], { env })).code, 2);
    assert.equal((await runHedwig(['nonsense'])).code, 2);
    const down = await runHedwig(['failed', 'list'], { env: { HEDWIG_BEANSTALK_SERVERS: '127.0.0.1:1' } });
    assert.equal(down.code, 1);
    assert.match(down.stderr, /cannot connect to beanstalkd at 127\.0\.0\.1:1/);
  });
});
