import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { decodeOutboundJob, encodeJob, type FailedJob, type OutboundJob } from '../../shared/job.ts';
import type { RecipientResult } from '../../worker/classify.ts';
import { addressField, type NoticeSettings } from '../../worker/dsn.ts';
import { delayNotice, failureNotice } from '../../worker/notices.ts';
import { parseDsn } from '../helpers/worker-dsn.ts';

const received = Date.UTC(2026, 0, 5, 8, 0, 0);
const attempted = received + 3_600_000;
const settings: NoticeSettings = { enabled: true, from: 'MAILER-DAEMON@worker.hedwig.test', reportingMta: 'worker.hedwig.test' };

const ORIGINAL = Buffer.from(
  'From: App <app@example.com>\r\nTo: a@one.test\r\nSubject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\r\nMessage-ID: <orig-1@example.com>\r\n' +
    'X-Raw-Utf8: Köln\r\n\r\nthe secret body\r\n',
);

function job(overrides: Partial<OutboundJob> = {}): OutboundJob {
  return {
    v: 1,
    id: 'msg-1',
    fqdn: 'app1.example.com',
    mailfrom: 'app@example.com',
    rcpttos: ['a@one.test'],
    data: ORIGINAL.toString('base64'),
    receivedAt: received,
    attempts: 0,
    ...overrides,
  };
}

function failedRecord(failures: FailedJob['failures'], overrides: Partial<OutboundJob> = {}): FailedJob {
  return { v: 1, job: job({ rcpttos: failures.map((f) => f.recipient), ...overrides }), failures, failedAt: attempted };
}

const common = { attempts: 3, firstAttemptAt: received, lastAttemptAt: attempted };

async function noticeFor(record: FailedJob) {
  const notice = await failureNotice(record, ORIGINAL, settings, attempted + 1000);
  assert.ok(notice, 'a notice is due');
  return { notice, dsn: await parseDsn(Buffer.from(notice.data, 'base64')) };
}

describe('delivery status notifications (RFC 3464)', () => {
  it('a bounce is a multipart/report to the envelope sender, from the null sender, with the three parts in order', async () => {
    const { notice, dsn } = await noticeFor(
      failedRecord([{ recipient: 'nobody@one.test', outcome: 'bounced', responseCode: 550, enhancedCode: '5.1.1', response: '550 5.1.1 no such user', mx: 'mx1.one.test', ...common }]),
    );
    assert.equal(notice.mailfrom, '', 'sent with MAIL FROM:<> so it can never be bounced itself');
    assert.deepEqual(notice.rcpttos, ['app@example.com']);
    assert.equal(notice.attempts, 0);
    assert.equal(notice.fqdn, 'worker.hedwig.test', 'submitted by the worker, not by the app host');
    assert.notEqual(notice.id, 'msg-1', 'the notice is a message of its own');
    decodeOutboundJob(encodeJob(notice));

    assert.equal(dsn.contentType, 'multipart/report');
    assert.equal(dsn.reportType, 'delivery-status');
    assert.deepEqual(
      dsn.parts.map((p) => p.contentType),
      ['text/plain', 'message/delivery-status', 'text/rfc822-headers'],
    );
    assert.equal(dsn.headers['From'], 'Mail Delivery System <MAILER-DAEMON@worker.hedwig.test>');
    assert.equal(dsn.headers['To'], 'app@example.com');
    assert.equal(dsn.headers['Subject'], 'Undelivered Mail Returned to Sender');
    assert.equal(dsn.headers['Auto-Submitted'], 'auto-replied');
    assert.match(dsn.headers['Message-ID']!, /^<[^@>]+@worker\.hedwig\.test>$/);
    assert.equal(dsn.sevenBit, true, 'the notice is 7-bit');
    assert.equal(dsn.bareLf, false, 'CRLF line ends only');
  });

  it('reports each recipient with Final-Recipient, Action, Status, Remote-MTA, Diagnostic-Code and Last-Attempt-Date', async () => {
    const { dsn } = await noticeFor(
      failedRecord([
        { recipient: 'nobody@one.test', outcome: 'bounced', responseCode: 550, enhancedCode: '5.1.1', response: '550 5.1.1 no such user', mx: 'mx1.one.test', ...common },
        { recipient: 'full@two.test', outcome: 'expired', responseCode: 452, enhancedCode: '4.2.2', response: '452 4.2.2 mailbox full', mx: 'mx.two.test', ...common },
      ]),
    );
    assert.deepEqual(dsn.perMessage, {
      'Reporting-MTA': 'dns; worker.hedwig.test',
      'X-Hedwig-Message-ID': 'msg-1',
      'Arrival-Date': 'Mon, 05 Jan 2026 08:00:00 +0000',
    });
    assert.deepEqual(dsn.perRecipient, [
      {
        'Final-Recipient': 'rfc822; nobody@one.test',
        Action: 'failed',
        Status: '5.1.1',
        'Remote-MTA': 'dns; mx1.one.test',
        'Diagnostic-Code': 'smtp; 550 5.1.1 no such user',
        'Last-Attempt-Date': 'Mon, 05 Jan 2026 09:00:00 +0000',
      },
      {
        'Final-Recipient': 'rfc822; full@two.test',
        Action: 'failed',
        Status: '4.2.2',
        'Remote-MTA': 'dns; mx.two.test',
        'Diagnostic-Code': 'smtp; 452 4.2.2 mailbox full',
        'Last-Attempt-Date': 'Mon, 05 Jan 2026 09:00:00 +0000',
      },
    ]);
    const text = dsn.parts[0]!.text;
    assert.match(text, /<nobody@one\.test>: host mx1\.one\.test said: 550 5\.1\.1 no such user/);
    assert.match(text, /<full@two\.test>: gave up/);
  });

  it('returns the original headers, never the body', async () => {
    const { dsn } = await noticeFor(failedRecord([{ recipient: 'nobody@one.test', outcome: 'bounced', responseCode: 550, response: '550 no', mx: 'mx1.one.test', ...common }]));
    const headers = dsn.parts[2]!.text;
    assert.match(headers, /^From: App <app@example\.com>\r?\n/);
    assert.match(headers, /Message-ID: <orig-1@example\.com>/);
    assert.match(headers, /X-Raw-Utf8: Köln/, '8-bit header bytes survive (transfer-encoded)');
    assert.doesNotMatch(headers, /secret body/);
  });

  it('derives Status without an enhanced code, and diagnoses its own failures as X-Hedwig without Remote-MTA', async () => {
    const { dsn } = await noticeFor(
      failedRecord([
        { recipient: 'a@plain.test', outcome: 'bounced', responseCode: 554, response: '554 go away', mx: 'mx.plain.test', ...common },
        { recipient: 'b@nxdomain.test', outcome: 'bounced', responseCode: 550, enhancedCode: '5.1.2', response: '550 5.1.2 nxdomain.test: no such domain (NXDOMAIN)', ...common },
        { recipient: 'c@down.test', outcome: 'expired', response: 'ECONNECTION: connect ECONNREFUSED 127.0.0.9:25', mx: 'mx.down.test', ...common },
      ]),
    );
    const [plain, nxdomain, down] = dsn.perRecipient;
    assert.equal(plain!.Status, '5.0.0');
    assert.equal(plain!['Diagnostic-Code'], 'smtp; 554 go away');
    assert.equal(nxdomain!.Status, '5.1.2');
    assert.equal(nxdomain!['Remote-MTA'], undefined, 'no remote MTA was ever reached');
    assert.equal(nxdomain!['Diagnostic-Code'], 'X-Hedwig; 550 5.1.2 nxdomain.test: no such domain (NXDOMAIN)');
    assert.equal(down!.Status, '4.4.7', 'expired without any reply: delivery time expired');
    assert.equal(down!['Diagnostic-Code'], 'X-Hedwig; ECONNECTION: connect ECONNREFUSED 127.0.0.9:25');
  });

  it('folds a long multi-line reply into 7-bit lines and keeps every word', async () => {
    const words = Array.from({ length: 60 }, (_, i) => `word${i}`).join(' ');
    const response = `550-5.7.1 first line ${words}\n550 5.7.1 second line with a tab\tand ümlaut`;
    const { dsn } = await noticeFor(failedRecord([{ recipient: 'x@one.test', outcome: 'bounced', responseCode: 550, enhancedCode: '5.7.1', response, mx: 'mx1.one.test', ...common }]));
    assert.ok(dsn.longestLine <= 78, `longest line ${dsn.longestLine}`);
    const diagnostic = dsn.perRecipient[0]!['Diagnostic-Code']!;
    assert.ok(diagnostic.startsWith('smtp; 550-5.7.1 first line word0 word1'));
    assert.ok(diagnostic.includes('word59 550 5.7.1 second line with a tab?and ?mlaut'), diagnostic);
  });

  it('writes a UTF-8 recipient as an RFC 6533 utf-8 address, keeping the field ASCII', () => {
    assert.equal(addressField('a@one.test'), 'rfc822; a@one.test');
    assert.equal(addressField('jörg+x@köln.test'), 'utf-8; j\\x{F6}rg\\x{2B}x@k\\x{F6}ln.test');
  });

  it('a delay warning says delayed, with the last temporary status and when retries end', async () => {
    const deferred: RecipientResult[] = [
      { recipient: 'slow@two.test', outcome: 'deferred', greylisted: false, responseCode: 451, enhancedCode: '4.3.0', response: '451 4.3.0 try later', mx: 'mx.two.test' },
    ];
    const retryUntil = received + 5 * 86_400_000;
    const notice = await delayNotice(job({ rcpttos: ['slow@two.test'] }), deferred, { raw: ORIGINAL, settings, attemptStartedAt: attempted, retryUntil, now: attempted });
    assert.ok(notice);
    assert.equal(notice.mailfrom, '');
    const dsn = await parseDsn(Buffer.from(notice.data, 'base64'));
    assert.equal(dsn.headers['Subject'], 'Delayed Mail (still being retried)');
    assert.deepEqual(dsn.perRecipient, [
      {
        'Final-Recipient': 'rfc822; slow@two.test',
        Action: 'delayed',
        Status: '4.3.0',
        'Remote-MTA': 'dns; mx.two.test',
        'Diagnostic-Code': 'smtp; 451 4.3.0 try later',
        'Last-Attempt-Date': 'Mon, 05 Jan 2026 09:00:00 +0000',
        'Will-Retry-Until': 'Sat, 10 Jan 2026 08:00:00 +0000',
      },
    ]);
    assert.match(dsn.parts[0]!.text, /WARNING ONLY/);
  });

  it('never reports on a message from the null sender, and not at all when switched off', async () => {
    const record = failedRecord([{ recipient: 'nobody@one.test', outcome: 'bounced', responseCode: 550, response: '550 no', mx: 'mx1.one.test', ...common }], { mailfrom: '' });
    assert.equal(await failureNotice(record, ORIGINAL, settings, attempted), null, 'a bounce of a bounce would loop');
    const deferred: RecipientResult[] = [{ recipient: 'slow@two.test', outcome: 'deferred', greylisted: false, response: '451 later' }];
    const options = { raw: ORIGINAL, settings, attemptStartedAt: attempted, retryUntil: attempted, now: attempted };
    assert.equal(await delayNotice(job({ mailfrom: '' }), deferred, options), null);

    const off = { ...settings, enabled: false };
    const fromSender = failedRecord([{ recipient: 'nobody@one.test', outcome: 'bounced', responseCode: 550, response: '550 no', mx: 'mx1.one.test', ...common }]);
    assert.equal(await failureNotice(fromSender, ORIGINAL, off, attempted), null);
    assert.equal(await delayNotice(job(), deferred, { ...options, settings: off }), null);
  });
});
