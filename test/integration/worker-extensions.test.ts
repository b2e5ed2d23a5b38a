import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import type { OutboundJob } from '../../shared/job.ts';
import type { RecipientResult } from '../../worker/classify.ts';
import { createDeliverer } from '../../worker/deliver.ts';
import { loadDkimPrivateKey } from '../../worker/dkim.ts';
import { failureNotice } from '../../worker/notices.ts';
import { has8bit } from '../../worker/seven-bit.ts';
import { startSmtpSink, type SmtpSink } from '../helpers/smtp-sink.ts';
import { parseDsn } from '../helpers/worker-dsn.ts';
import { makeDkimKey, verifyWithDkimpy, type TestDkimKey } from '../helpers/worker-dkim.ts';

/**
 * What the receiving server's EHLO announces, against real servers (smtp-server): a SIZE
 * smaller than the message (issue 12.14) and no 8BITMIME for an 8-bit message (12.13).
 */
const silent = pino({ level: 'silent' });

async function deliver(sink: SmtpSink, raw: Buffer, key?: TestDkimKey): Promise<RecipientResult[]> {
  const loaded = key ? loadDkimPrivateKey(key.keyFile) : undefined;
  const deliverer = createDeliverer({
    ehloName: 'out.example.com',
    timeouts: { connectMs: 3000, greetingMs: 3000, socketMs: 5000 },
    logger: silent,
    ...(key && loaded?.ok
      ? { outgoing: { hostname: 'out.example.com', dkim: new Map([['example.com', [{ domain: 'example.com', selector: key.selector, algorithm: loaded.algorithm, privateKey: loaded.key }]]]), received: false } }
      : {}),
  });
  try {
    return await deliverer.deliver({
      messageId: 'ext-1',
      domain: 'dest.test',
      from: 'app@example.com',
      recipients: ['rcpt@dest.test'],
      raw,
      hosts: [{ name: 'mx.dest.test', preference: 0, addresses: ['127.0.0.1'], port: sink.port }],
      receivedAt: Date.now(),
    });
  } finally {
    await deliverer.close?.();
  }
}

describe('a message larger than the SIZE the server announced', { timeout: 30_000 }, () => {
  let sink: SmtpSink;
  before(async () => {
    sink = await startSmtpSink({ size: 500 });
  });
  after(() => sink?.stop());

  it('bounces with 5.3.4, and the notice names the server and what it announced, never a client error code', async () => {
    const raw = Buffer.from(`From: app@example.com\r\nSubject: big\r\nMessage-ID: <big@example.com>\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\n\r\n${'x'.repeat(2000)}\r\n`);
    const [result] = await deliver(sink, raw);
    assert.deepEqual([result?.outcome, result?.responseCode, result?.enhancedCode, result?.mx], ['bounced', 552, '5.3.4', 'mx.dest.test']);
    assert.equal(sink.messages.length, 0);

    const job: OutboundJob = { v: 1, id: 'ext-1', fqdn: 'app1.example.com', mailfrom: 'app@example.com', rcpttos: ['rcpt@dest.test'], data: raw.toString('base64'), receivedAt: Date.now(), attempts: 1 };
    const failure = { recipient: 'rcpt@dest.test', outcome: 'bounced' as const, responseCode: result!.responseCode!, enhancedCode: result!.enhancedCode!, response: result!.response, mx: result!.mx!, attempts: 1, firstAttemptAt: Date.now(), lastAttemptAt: Date.now() };
    const notice = await failureNotice({ v: 1, job, failures: [failure], failedAt: Date.now() }, raw, { enabled: true, from: 'MAILER-DAEMON@out.example.com', reportingMta: 'out.example.com' }, Date.now());
    const dsn = await parseDsn(Buffer.from(notice!.data, 'base64'));
    const recipient = dsn.perRecipient[0]!;
    assert.equal(recipient['Status'], '5.3.4');
    assert.equal(recipient['Remote-MTA'], 'dns; mx.dest.test');
    assert.match(recipient['Diagnostic-Code']!, /^smtp; 552 5\.3\.4 message of \d+ bytes exceeds the fixed maximum message size of mx\.dest\.test \(its EHLO reply: 250 SIZE 500\)/);
    assert.doesNotMatch(recipient['Diagnostic-Code']!, /EMESSAGE|X-Hedwig/);
  });
});

describe('an 8-bit message for a server without 8BITMIME', { timeout: 60_000 }, () => {
  let sink: SmtpSink;
  let key: TestDkimKey;
  before(async () => {
    sink = await startSmtpSink({ hide8BITMIME: true });
    key = makeDkimKey('example.com', 'sel8');
  });
  after(() => sink?.stop());

  const body = 'Grüße aus Köln, €100 für alle\r\n.eine Zeile mit Punkt\r\n';

  it('goes out in 7 bit (quoted-printable), signed after the conversion: dkimpy verifies what arrived', async () => {
    const raw = Buffer.concat([
      Buffer.from('From: app@example.com\r\nTo: rcpt@dest.test\r\nSubject: umlauts\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n'),
      Buffer.from(body, 'utf8'),
    ]);
    const [result] = await deliver(sink, raw, key);
    assert.equal(result?.outcome, 'delivered', result?.response);
    const arrived = sink.messages.at(-1)!.raw;
    assert.equal(has8bit(arrived), false, 'no 8-bit byte reached a server that did not offer 8BITMIME');
    assert.match(arrived.toString('latin1'), /\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nGr=C3=BC=C3=9Fe aus K=C3=B6ln/);
    const verdict = await verifyWithDkimpy(arrived, key.records);
    assert.equal(verdict.pass, true, verdict.detail);
  });

  it('bounces with 5.6.3 a message that cannot be converted (8-bit in a header) and sends nothing', async () => {
    const before = sink.messages.length;
    const raw = Buffer.concat([Buffer.from('From: app@example.com\r\nSubject: '), Buffer.from('Grüße', 'utf8'), Buffer.from('\r\n\r\n'), Buffer.from(body, 'utf8')]);
    const [result] = await deliver(sink, raw);
    assert.equal(result?.outcome, 'bounced');
    assert.equal(result?.enhancedCode, '5.6.3');
    assert.match(result!.response, /does not offer 8BITMIME/);
    assert.equal(sink.messages.length, before);
  });
});
