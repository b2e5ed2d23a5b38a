import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import MailComposer from 'nodemailer/lib/mail-composer';
import { pino } from 'pino';
import { BeanstalkClient } from '../../shared/beanstalk.ts';
import { encodeJob, TUBE, type OutboundJob } from '../../shared/job.ts';
import { createDeliverer } from '../../worker/deliver.ts';
import { loadDkimPrivateKey } from '../../worker/dkim.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { freePort } from '../helpers/ports.ts';
import { startSmtpSink, type SinkMessage, type SmtpSink } from '../helpers/smtp-sink.ts';
import { startTier, type TierProcess } from '../helpers/tiers.ts';
import { makeDkimKey, makeEd25519DkimKey, verifyWithDkimpy, verifyWithMailauth, type TestDkimKey } from '../helpers/worker-dkim.ts';

/**
 * Messages as the recipient's MX receives them carry two DKIM signatures, rsa-sha256 and
 * ed25519-sha256 (RFC 8463), and two independent verifiers accept each of them: mailauth and
 * Debian's python3-dkim. The deliverer is driven directly for the message shapes; one job
 * goes through a real worker process to show the keys are loaded from its config.
 */
describe('DKIM signatures on delivered mail', { timeout: 90_000 }, () => {
  let sink: SmtpSink;
  let key: TestDkimKey;
  let edKey: TestDkimKey;
  let records: Record<string, string>;

  before(async () => {
    sink = await startSmtpSink();
    key = makeDkimKey('example.com', 'sel2026');
    edKey = makeEd25519DkimKey('example.com', 'ed2026');
    records = { ...key.records, ...edKey.records };
  });

  after(async () => {
    await sink?.stop();
  });

  async function deliverSigned(raw: Buffer, from = 'app@example.com', authority: { notice?: boolean } = {}): Promise<SinkMessage> {
    const loaded = loadDkimPrivateKey(key.keyFile);
    const loadedEd = loadDkimPrivateKey(edKey.keyFile);
    assert.ok(loaded.ok && loadedEd.ok);
    const deliverer = createDeliverer({
      ehloName: 'out.example.com',
      timeouts: { connectMs: 3000, greetingMs: 3000, socketMs: 5000 },
      logger: pino({ level: 'silent' }),
      outgoing: {
        hostname: 'out.example.com',
        dkim: new Map([
          [
            'example.com',
            [
              { domain: 'example.com', selector: key.selector, algorithm: 'rsa-sha256', privateKey: loaded.key },
              { domain: 'example.com', selector: edKey.selector, algorithm: 'ed25519-sha256', privateKey: loadedEd.key },
            ],
          ],
        ]),
        nullSenderDomain: 'example.com',
        received: true,
      },
    });
    const before = sink.messages.length;
    const results = await deliverer.deliver({
      messageId: randomUUID(),
      domain: 'dest.test',
      from,
      recipients: ['rcpt@dest.test'],
      raw,
      hosts: [{ name: '127.0.0.1', preference: 0, addresses: ['127.0.0.1'], port: sink.port }],
      receivedAt: Date.now(),
      submittedBy: 'app1.example.com',
      ...authority,
    });
    assert.equal(results[0]?.outcome, 'delivered', JSON.stringify(results));
    return sink.messages[before]!;
  }

  async function assertBothVerify(received: Buffer, label: string): Promise<void> {
    assert.match(received.toString('latin1'), /^DKIM-Signature: v=1; a=rsa-sha256; c=relaxed\/relaxed; d=example\.com;\s+q=dns\/txt; s=sel2026;/, label);
    assert.match(received.toString('latin1'), /\r\nDKIM-Signature: v=1; a=ed25519-sha256; c=relaxed\/relaxed; d=example\.com;\s+q=dns\/txt; s=ed2026;/, label);
    const both = [{ algorithm: 'rsa-sha256', pass: true }, { algorithm: 'ed25519-sha256', pass: true }];
    const python = await verifyWithDkimpy(received, records);
    assert.deepEqual(python.signatures, both, `${label}: python3-dkim: ${python.detail}`);
    const node = await verifyWithMailauth(received, records);
    assert.deepEqual(node.signatures, both, `${label}: mailauth: ${node.detail}`);
    assert.equal(node.domain, 'example.com');
  }

  const head = 'From: App <app@example.com>\r\nTo: rcpt@dest.test\r\nSubject: test\r\nDate: Thu, 1 Jan 2025 00:00:00 +0000\r\nMessage-ID: <m1@example.com>\r\n';

  it('verifies an ASCII message', async () => {
    const got = await deliverSigned(Buffer.from(`${head}\r\nHello,\r\n\r\n  indented   line with  spaces \t\r\n\r\n\r\n`));
    await assertBothVerify(got.raw, 'ascii');
  });

  it('verifies an 8-bit Latin-1 body', async () => {
    const raw = Buffer.concat([
      Buffer.from(`${head}MIME-Version: 1.0\r\nContent-Type: text/plain; charset=ISO-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n`),
      Buffer.from('caf\xe9 cr\xe8me br\xfbl\xe9e \xa0\xff\r\n', 'latin1'),
    ]);
    const got = await deliverSigned(raw);
    assert.ok(got.raw.includes(Buffer.from('caf\xe9 cr\xe8me', 'latin1')), '8-bit bytes arrive unchanged');
    await assertBothVerify(got.raw, 'latin1');
  });

  it('verifies a UTF-8 body with non-breaking spaces and a raw UTF-8 Subject', async () => {
    const bodyOnly = Buffer.from(`${head}MIME-Version: 1.0\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nPrix\u00a0: 10\u00a0€ — ça marche\u00a0\r\n`);
    await assertBothVerify((await deliverSigned(bodyOnly)).raw, 'utf-8 body');
    // mailauth 4.13.3 mis-handled raw UTF-8 in header values; from 5 on both verifiers judge this one.
    const utf8Header = Buffer.from(`${head.replace('Subject: test', 'Subject: Grüße\u00a0aus Köln')}MIME-Version: 1.0\r\nContent-Type: text/plain; charset=UTF-8\r\n\r\nok\r\n`);
    await assertBothVerify((await deliverSigned(utf8Header)).raw, 'utf-8 header');
  });

  it('verifies an empty body and a message that ends right after its header section', async () => {
    await assertBothVerify((await deliverSigned(Buffer.from(`${head}\r\n`))).raw, 'empty body');
    await assertBothVerify((await deliverSigned(Buffer.from(head))).raw, 'no body at all');
  });

  it('verifies long lines and long folded header fields', async () => {
    const recipients = Array.from({ length: 30 }, (_, i) => `recipient-number-${i}@dest.test`).join(',\r\n ');
    const longLine = 'x'.repeat(990);
    const raw = Buffer.from(`${head.replace('To: rcpt@dest.test', `To: ${recipients}`)}\r\n${longLine}\r\n${'word '.repeat(180)}\r\n`);
    await assertBothVerify((await deliverSigned(raw)).raw, 'long lines');
  });

  it('verifies a multipart message with an attachment', async () => {
    const composer = new MailComposer({
      from: 'App <app@example.com>',
      to: 'rcpt@dest.test',
      subject: 'report',
      text: 'see attached',
      html: '<p>see <b>attached</b></p>',
      attachments: [{ filename: 'data.bin', content: Buffer.from(Array.from({ length: 3000 }, (_, i) => i % 256)) }],
    });
    const raw = await composer.compile().build();
    await assertBothVerify((await deliverSigned(raw)).raw, 'attachment');
  });

  it('signs after the header edits: Bcc gone, Message-ID and Date added, Received on top (unsigned)', async () => {
    const raw = Buffer.from('From: app@example.com\r\nTo: rcpt@dest.test\r\nBcc: secret@elsewhere.test\r\nSubject: edits\r\n\r\nbody\r\n');
    const got = await deliverSigned(raw);
    const text = got.raw.toString('latin1');
    assert.doesNotMatch(text, /^Bcc:/im);
    assert.match(text, /^Message-ID: <[^>]+@example\.com>$/m);
    assert.match(text, /^Date: /m);
    assert.match(text, /^Received: from app1\.example\.com by out\.example\.com \(hedwig\) id /m);
    assert.match(text, /h=From:Subject:Date:Message-ID:To;/i);
    await assertBothVerify(got.raw, 'edited');
  });

  it('signs the worker own null-sender notices with the notices domain', async () => {
    const got = await deliverSigned(Buffer.from('From: MAILER-DAEMON@example.com\r\nTo: app@dest.test\r\nSubject: Undelivered Mail\r\n\r\nbounce\r\n'), '', { notice: true });
    assert.equal(got.mailFrom, '');
    await assertBothVerify(got.raw, 'null sender');
  });

  describe('through a worker process', () => {
    let beanstalkd: BeanstalkdProcess;
    let worker: TierProcess | undefined;

    after(async () => {
      await worker?.stop();
      await beanstalkd?.stop();
    });

    it('loads the key from its config and signs what it delivers', async () => {
      beanstalkd = await startBeanstalkd();
      worker = await startTier('worker', {
        beanstalk: { servers: [beanstalkd.address] },
        concurrency: 1,
        ehloName: 'out.example.com',
        routes: { 'dest.test': `127.0.0.1:${sink.port}` },
        dkim: {
          'example.com': [
            { selector: key.selector, keyFile: key.keyFile },
            { selector: edKey.selector, keyFile: edKey.keyFile },
          ],
        },
        ops: { host: '127.0.0.1', port: await freePort() },
      });
      const client = new BeanstalkClient({ host: '127.0.0.1', port: beanstalkd.port });
      await client.connect();
      await client.use(TUBE.outbound);
      const job: OutboundJob = {
        v: 1,
        id: randomUUID(),
        fqdn: 'app1.example.com',
        mailfrom: 'app@example.com',
        rcpttos: ['rcpt@dest.test'],
        data: Buffer.from(`${head}\r\nthrough the worker\r\n`).toString('base64'),
        receivedAt: Date.now(),
        attempts: 0,
      };
      const before = sink.messages.length;
      await client.put(encodeJob(job));
      await client.close();
      const [, got] = [await sink.waitForMessages(before + 1), sink.messages[before]!];
      await assertBothVerify(got.raw, 'worker process');
      const attempt = worker.logs.find((l) => l.event === 'attempt' && l.messageId === job.id);
      assert.equal(attempt?.dkim, 'example.com/sel2026,example.com/ed2026');
    });
  });
});
