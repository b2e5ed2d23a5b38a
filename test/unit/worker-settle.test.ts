import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { encodeJob, failedJobSchema, jobSizeFor, MAX_RESPONSE_CHARS, outboundJobSchema, type OutboundJob } from '../../shared/job.ts';
import { boundedResponse } from '../../worker/classify.ts';
import type { RecipientResult } from '../../worker/classify.ts';
import { retryDelaySeconds, settle } from '../../worker/settle.ts';

const HOUR = 3_600_000;
const received = 1_700_000_000_000;
const policy = { delaysSeconds: [300, 900, 3600], maxLifetimeSeconds: 5 * 24 * 3600 };

function job(overrides: Partial<OutboundJob> = {}): OutboundJob {
  return {
    v: 1,
    id: 'msg-1',
    fqdn: 'app1.example.com',
    mailfrom: 'sender@example.com',
    rcpttos: ['a@one.test', 'b@one.test', 'c@two.test'],
    data: Buffer.from('Subject: x\r\n\r\nhello\r\n').toString('base64'),
    receivedAt: received,
    attempts: 0,
    ...overrides,
  };
}

const delivered = (recipient: string): RecipientResult => ({ recipient, outcome: 'delivered', greylisted: false, responseCode: 250, response: '250 OK', mx: 'mx.one.test' });
const bounced = (recipient: string): RecipientResult => ({
  recipient,
  outcome: 'bounced',
  greylisted: false,
  responseCode: 550,
  enhancedCode: '5.1.1',
  response: '550 5.1.1 no such user',
  mx: 'mx.one.test',
});
const deferred = (recipient: string, greylisted = false): RecipientResult => ({
  recipient,
  outcome: 'deferred',
  greylisted,
  responseCode: 450,
  enhancedCode: greylisted ? '4.2.0' : '4.2.1',
  response: greylisted ? '450 4.2.0 greylisted' : '450 4.2.1 busy',
  mx: 'mx.two.test',
});

describe('settle', () => {
  it('all delivered: nothing to put, the job can be deleted', () => {
    const s = settle(job(), ['a@one.test', 'b@one.test', 'c@two.test'].map(delivered), { policy, attemptStartedAt: received, now: received + 1000 });
    assert.equal(s.delivered.length, 3);
    assert.equal(s.failedJob, null);
    assert.equal(s.retry, null);
  });

  it('a bounced recipient goes to the failed tube with its reason; the job holds only failed recipients', () => {
    const s = settle(job(), [delivered('a@one.test'), bounced('b@one.test'), delivered('c@two.test')], { policy, attemptStartedAt: received + 10, now: received + 20 });
    assert.equal(s.retry, null);
    assert.ok(s.failedJob);
    failedJobSchema.parse(s.failedJob);
    assert.deepEqual(s.failedJob.job.rcpttos, ['b@one.test']);
    assert.deepEqual(s.failedJob.failures, [
      {
        recipient: 'b@one.test',
        outcome: 'bounced',
        responseCode: 550,
        enhancedCode: '5.1.1',
        response: '550 5.1.1 no such user',
        mx: 'mx.one.test',
        attempts: 1,
        firstAttemptAt: received + 10,
        lastAttemptAt: received + 10,
      },
    ]);
    assert.equal(s.failedJob.failedAt, received + 20);
  });

  it('deferred recipients get a new job with attempts + 1 and the delay from the schedule', () => {
    const s = settle(job({ attempts: 1, firstAttemptAt: received }), [delivered('a@one.test'), delivered('b@one.test'), deferred('c@two.test')], {
      policy,
      attemptStartedAt: received + HOUR,
      now: received + HOUR,
    });
    assert.ok(s.retry);
    outboundJobSchema.parse(s.retry.job);
    assert.deepEqual(s.retry.job.rcpttos, ['c@two.test']);
    assert.equal(s.retry.job.id, 'msg-1', 'the message keeps its id across attempts');
    assert.equal(s.retry.job.attempts, 2);
    assert.equal(s.retry.job.firstAttemptAt, received);
    assert.equal(s.retry.job.lastAttemptAt, received + HOUR);
    assert.equal(s.retry.job.data, job().data);
    assert.equal(s.retry.delaySeconds, 900);
  });

  it('the last delay of the schedule repeats', () => {
    assert.equal(retryDelaySeconds(policy, 0, false), 300);
    assert.equal(retryDelaySeconds(policy, 2, false), 3600);
    assert.equal(retryDelaySeconds(policy, 17, false), 3600);
  });

  it('greylisting gets the first, short delay whatever the attempt number', () => {
    const s = settle(job({ attempts: 4, rcpttos: ['a@one.test'] }), [deferred('a@one.test', true)], { policy, attemptStartedAt: received + HOUR, now: received + HOUR });
    assert.equal(s.retry?.delaySeconds, 300);
    assert.equal(s.retry?.greylisted, true);
  });

  it('past the maximum lifetime, deferred recipients expire into the failed tube', () => {
    const late = received + policy.maxLifetimeSeconds * 1000 + 1;
    const s = settle(job({ attempts: 30, firstAttemptAt: received, rcpttos: ['a@one.test', 'c@two.test'] }), [bounced('a@one.test'), deferred('c@two.test')], { policy, attemptStartedAt: late, now: late });
    assert.equal(s.retry, null);
    assert.deepEqual(
      s.failedJob?.failures.map((f) => [f.recipient, f.outcome, f.attempts]),
      [
        ['a@one.test', 'bounced', 31],
        ['c@two.test', 'expired', 31],
      ],
    );
  });

  it('a recipient without a verdict is retried, never dropped; a duplicate verdict counts once', () => {
    const s = settle(job(), [delivered('a@one.test'), delivered('a@one.test'), bounced('b@one.test')], { policy, attemptStartedAt: received, now: received });
    assert.deepEqual(s.delivered.map((r) => r.recipient), ['a@one.test']);
    assert.deepEqual(s.retry?.job.rcpttos, ['c@two.test']);
    assert.equal(s.retry?.recipients[0]?.outcome, 'deferred');
  });

  it('every recipient ends in exactly one of delivered, bounced, expired or the retry job', () => {
    const outcomes = [delivered, bounced, (r: string) => deferred(r), (r: string) => deferred(r, true)];
    for (const now of [received + 1000, received + policy.maxLifetimeSeconds * 1000]) {
      for (let mask = 0; mask < 4 ** 3; mask++) {
        const recipients = ['a@one.test', 'b@one.test', 'c@two.test'];
        const results = recipients.map((r, i) => outcomes[Math.floor(mask / 4 ** i) % 4]!(r));
        const s = settle(job(), results, { policy, attemptStartedAt: now, now });
        const ended = [...s.delivered, ...s.bounced, ...s.expired].map((r) => r.recipient).concat(s.retry?.job.rcpttos ?? []);
        assert.deepEqual(ended.sort(), recipients, `mask ${mask}`);
        assert.deepEqual(s.failedJob?.job.rcpttos.sort() ?? [], [...s.bounced, ...s.expired].map((r) => r.recipient).sort());
      }
    }
  });

  it('when a message is still queued after delayWarningSeconds, the sender is due one delay warning', () => {
    const fourHours = received + 4 * HOUR;
    const only = (rcpttos: string[], overrides: Partial<OutboundJob> = {}) => job({ rcpttos, ...overrides });
    const early = settle(only(['c@two.test']), [deferred('c@two.test')], { policy, attemptStartedAt: received, now: received + HOUR, delayWarningSeconds: 14_400 });
    assert.equal(early.delayWarning, null, 'not yet');
    assert.equal(early.retry?.job.delayWarnedAt, undefined);

    const due = settle(only(['a@one.test', 'c@two.test'], { attempts: 3 }), [delivered('a@one.test'), deferred('c@two.test')], { policy, attemptStartedAt: fourHours, now: fourHours, delayWarningSeconds: 14_400 });
    assert.deepEqual(due.delayWarning?.map((r) => r.recipient), ['c@two.test'], 'only the recipients still waiting');
    assert.equal(due.retry?.job.delayWarnedAt, fourHours, 'remembered in the retry job');
    assert.equal(due.retryUntil, received + policy.maxLifetimeSeconds * 1000);

    const later = settle(due.retry!.job, [deferred('c@two.test')], { policy, attemptStartedAt: fourHours + HOUR, now: fourHours + HOUR, delayWarningSeconds: 14_400 });
    assert.equal(later.delayWarning, null, 'one warning per message');
    assert.equal(later.retry?.job.delayWarnedAt, fourHours);

    const off = settle(only(['c@two.test']), [deferred('c@two.test')], { policy, attemptStartedAt: fourHours, now: fourHours, delayWarningSeconds: 0 });
    assert.equal(off.delayWarning, null, '0 switches warnings off');
  });

  it('a requeued message (receivedAt after its old warning) can be warned about again', () => {
    const requeuedAt = received + 6 * 86_400_000;
    const s = settle(job({ rcpttos: ['c@two.test'], receivedAt: requeuedAt, delayWarnedAt: received + 4 * HOUR }), [deferred('c@two.test')], {
      policy,
      attemptStartedAt: requeuedAt + 5 * HOUR,
      now: requeuedAt + 5 * HOUR,
      delayWarningSeconds: 14_400,
    });
    assert.ok(s.delayWarning);
  });

  it('no delay warning when the recipients expire instead', () => {
    const late = received + policy.maxLifetimeSeconds * 1000;
    const s = settle(job({ rcpttos: ['c@two.test'] }), [deferred('c@two.test')], { policy, attemptStartedAt: late, now: late, delayWarningSeconds: 14_400 });
    assert.equal(s.delayWarning, null);
    assert.equal(s.expired.length, 1);
  });

  it('never schedules a retry after the end of the lifetime', () => {
    const nearlyOver = received + policy.maxLifetimeSeconds * 1000 - 60_000;
    const s = settle(job({ attempts: 9, rcpttos: ['c@two.test'] }), [deferred('c@two.test')], { policy, attemptStartedAt: nearlyOver, now: nearlyOver });
    assert.equal(s.retry?.delaySeconds, 60);
  });
});

describe('failed records fit in a beanstalkd job (jobSizeFor sizes -z)', () => {
  // The longest valid recipients, in JSON bytes: 64 bytes of local part full of escaped
  // quoted pairs, then a domain of three-byte characters up to 254 characters in all.
  function longestRecipient(i: number): string {
    const local = `"${'\\"'.repeat(30)}${String(i).padStart(2, '0')}"`;
    const label = (n: number) => '€'.repeat(n);
    let domain = `${label(60)}.${label(60)}.${label(60)}`;
    domain = `${domain}.${label(254 - local.length - 1 - domain.length - 1)}`;
    return `${local}@${domain}`;
  }

  it('holds a message of the maximum size with every recipient failing with the longest reply', () => {
    const maxMessageBytes = 1_000_000;
    const maxRecipients = 100;
    const rcpttos = Array.from({ length: maxRecipients }, (_, i) => longestRecipient(i));
    const original = outboundJobSchema.parse(job({ rcpttos, data: Buffer.alloc(maxMessageBytes, 0xff).toString('base64') }));
    assert.equal(rcpttos[0]!.length, 254);

    const longestReply = `550 5.1.1 ${'"€'.repeat(2000)}\u0001\ud800`;
    const results = rcpttos.map((recipient) => ({ ...bounced(recipient), response: boundedResponse(longestReply), mx: `${'m'.repeat(60)}.`.repeat(4).slice(0, 253) }));
    const { failedJob } = settle(original, results, { policy, attemptStartedAt: received + HOUR, now: received + HOUR });

    const record = encodeJob(failedJobSchema.parse(failedJob));
    assert.ok(record.length <= jobSizeFor(maxMessageBytes, maxRecipients), `${record.length} > ${jobSizeFor(maxMessageBytes, maxRecipients)}`);
    assert.ok(encodeJob(original).length <= jobSizeFor(maxMessageBytes, maxRecipients));
  });

  it('keeps at most MAX_RESPONSE_CHARS of a reply, well-formed and without control characters', () => {
    const kept = boundedResponse(`451 4.3.0 ${'x'.repeat(5000)}\r\u0000\ud83d`);
    assert.ok(kept.length <= MAX_RESPONSE_CHARS);
    assert.match(kept, /^451 4\.3\.0 x+ \[… truncated\]$/);
    assert.equal(boundedResponse('550-5.1.1 first\n550 5.1.1 second\u0007'), '550-5.1.1 first\n550 5.1.1 second ', 'line breaks stay, control characters go');
    assert.equal(boundedResponse('250 ok \ud800'), '250 ok \ufffd');
  });
});
