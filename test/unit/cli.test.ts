import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { beanstalkServers, parseDuration } from '../../cli/args.ts';
import { failureMatches, matchingFailures, parseFilter, reasonClass } from '../../cli/failed-filter.ts';
import { headerSection, splitForRetry } from '../../cli/failed-records.ts';
import { formatLine, IdGraph, lineMatches, lineTime, sortLines, type LogLine } from '../../cli/log-search.ts';
import { formatAge, table } from '../../cli/output.ts';
import { lateProgress, selectQueued } from '../../cli/queue-control.ts';
import type { MessageRecord, Store } from '../../shared/store/store.ts';
import type { FailedJob, Failure } from '../../shared/job.ts';

const NOW = Date.parse('2024-05-01T12:00:00Z');

function failure(recipient: string, responseCode: number | undefined, enhancedCode: string | undefined, outcome: Failure['outcome'] = 'bounced'): Failure {
  return {
    recipient,
    outcome,
    ...(responseCode !== undefined ? { responseCode } : {}),
    ...(enhancedCode !== undefined ? { enhancedCode } : {}),
    response: `${responseCode ?? ''} ${enhancedCode ?? ''} text`,
    attempts: 2,
    firstAttemptAt: NOW - 7200_000,
    lastAttemptAt: NOW - 3600_000,
  };
}

function record(failures: Failure[], failedAt = NOW - 3600_000): FailedJob {
  return {
    v: 1,
    job: {
      v: 1,
      id: 'm-1',
      fqdn: 'app1.example.com',
      mailfrom: 'app@example.com',
      rcpttos: failures.map((f) => f.recipient),
      data: Buffer.from('Subject: hi\r\nX-Long: a\r\n  b\r\n\r\nsecret body\r\n').toString('base64'),
      receivedAt: NOW - 86_400_000,
      attempts: 2,
      firstAttemptAt: NOW - 7200_000,
      lastAttemptAt: NOW - 3600_000,
    },
    failures,
    failedAt,
  };
}

describe('cli arguments', () => {
  it('parses durations in seconds, minutes, hours, days and weeks', () => {
    assert.equal(parseDuration('90s', '--since'), 90_000);
    assert.equal(parseDuration('30m', '--since'), 1_800_000);
    assert.equal(parseDuration('2h', '--since'), 7_200_000);
    assert.equal(parseDuration('1d', '--since'), 86_400_000);
    assert.equal(parseDuration('1w', '--since'), 604_800_000);
    for (const bad of ['', '2', 'h', '1.5h', '-1h', '2 hours']) assert.throws(() => parseDuration(bad, '--since'), { code: 'USAGE' }, bad);
  });

  it('takes beanstalkd servers from --server, else HEDWIG_BEANSTALK_SERVERS, else the default', () => {
    assert.deepEqual(beanstalkServers(['10.0.0.1:11301', '[::1]:11302', 'q.example'], {}), [
      { host: '10.0.0.1', port: 11301 },
      { host: '::1', port: 11302 },
      { host: 'q.example', port: 11300 },
    ]);
    assert.deepEqual(beanstalkServers(undefined, { HEDWIG_BEANSTALK_SERVERS: 'a:1, b:2' }), [
      { host: 'a', port: 1 },
      { host: 'b', port: 2 },
    ]);
    assert.deepEqual(beanstalkServers([], {}), [{ host: '127.0.0.1', port: 11300 }]);
    assert.throws(() => beanstalkServers(['a:99999'], {}), { code: 'USAGE' });
  });
});

describe('failed filters', () => {
  it('match reply codes exactly or by class pattern', () => {
    const f = failure('a@x.test', 550, '5.1.1');
    assert.ok(failureMatches(f, parseFilter({ code: '550' }, NOW)));
    assert.ok(failureMatches(f, parseFilter({ code: '5xx' }, NOW)));
    assert.ok(failureMatches(f, parseFilter({ code: '55X' }, NOW)));
    assert.ok(!failureMatches(f, parseFilter({ code: '554' }, NOW)));
    assert.ok(!failureMatches(failure('a@x.test', undefined, undefined, 'expired'), parseFilter({ code: '5xx' }, NOW)));
    assert.throws(() => parseFilter({ code: '55' }, NOW), { code: 'USAGE' });
  });

  it('match enhanced codes exactly or by prefix, never by a partial number', () => {
    const f = failure('a@x.test', 550, '5.1.10');
    assert.ok(failureMatches(f, parseFilter({ enhanced: '5.1.10' }, NOW)));
    assert.ok(failureMatches(f, parseFilter({ enhanced: '5.1' }, NOW)));
    assert.ok(failureMatches(f, parseFilter({ enhanced: '5' }, NOW)));
    assert.ok(!failureMatches(f, parseFilter({ enhanced: '5.1.1' }, NOW)));
    assert.throws(() => parseFilter({ enhanced: '5.1.x' }, NOW), { code: 'USAGE' });
  });

  it('match the recipient domain without case and select only the matching recipients of a record', () => {
    const r = record([failure('a@One.test', 550, '5.1.1'), failure('b@two.test', 550, '5.1.1')]);
    assert.deepEqual(matchingFailures(r, parseFilter({ domain: 'ONE.test' }, NOW)).map((f) => f.recipient), ['a@One.test']);
    assert.deepEqual(matchingFailures(r, parseFilter({}, NOW)).length, 2);
  });

  it('--since selects records by when they failed', () => {
    const r = record([failure('a@x.test', 550, '5.1.1')], NOW - 3 * 3600_000);
    assert.equal(matchingFailures(r, parseFilter({ since: '2h' }, NOW)).length, 0);
    assert.equal(matchingFailures(r, parseFilter({ since: '4h' }, NOW)).length, 1);
  });

  it('classes reasons by the subject of the enhanced code, expired ones apart', () => {
    assert.equal(reasonClass(failure('a@x.test', 550, '5.1.1')), 'x.1.x addressing (bad mailbox or domain)');
    assert.equal(reasonClass(failure('a@x.test', 554, '5.7.1')), 'x.7.x security or policy');
    assert.equal(reasonClass(failure('a@x.test', 550, undefined)), 'no enhanced status code');
    assert.equal(reasonClass(failure('a@x.test', 451, '4.4.1', 'expired')), 'expired (retried until the maximum lifetime)');
  });
});

describe('failed retry split', () => {
  it('moves the selected recipients with a fresh life and keeps the rest as a failed record', () => {
    const a = failure('a@x.test', 550, '5.1.1');
    const b = failure('b@y.test', 554, '5.7.1');
    const r = record([a, b]);
    const split = splitForRetry(r, [a], NOW);
    assert.deepEqual(split.outbound.rcpttos, ['a@x.test']);
    assert.equal(split.outbound.id, r.job.id, 'the message id is kept');
    assert.equal(split.outbound.attempts, 0);
    assert.equal(split.outbound.receivedAt, NOW);
    assert.ok(!('firstAttemptAt' in split.outbound) && !('lastAttemptAt' in split.outbound));
    assert.equal(split.outbound.data, r.job.data);
    assert.deepEqual(split.remainder?.job.rcpttos, ['b@y.test']);
    assert.deepEqual(split.remainder?.failures, [b]);
    assert.equal(split.remainder?.failedAt, r.failedAt);
    assert.equal(splitForRetry(r, [a, b], NOW).remainder, null);
  });

  it('shows the unfolded header section and never the body', () => {
    const header = headerSection(Buffer.from(record([failure('a@x.test', 550, '5.1.1')]).job.data, 'base64'));
    assert.equal(header, 'Subject: hi\nX-Long: a b');
  });
});

describe('log search', () => {
  const lines = [
    { time: '2024-05-01T10:00:02.000Z', tier: 'postoffice', event: 'queued', messageId: 'P1', mailfrom: 'app@example.com', rcptCount: 1 },
    { time: '2024-05-01T10:00:01.000Z', tier: 'mailman', event: 'accepted', spoolId: 'M1', postofficeId: 'P1', mailfrom: 'app@example.com' },
    { time: '2024-05-01T10:00:03.000Z', tier: 'worker', event: 'attempt', messageId: 'P1', mx: 'mx.x.test', response: '250 ok' },
    { time: '2024-05-01T10:00:04.000Z', tier: 'worker', event: 'delivered', messageId: 'P1', recipient: 'Rcpt@X.test' },
    { time: '2024-05-01T10:00:05.000Z', tier: 'worker', event: 'delivered', messageId: 'P2', recipient: 'other@x.test' },
    { time: '2024-05-01T10:00:00.500Z', tier: 'mailman', event: 'spooled', spoolId: 'M1' },
  ];

  function search(address: string): string[] {
    const graph = new IdGraph(address);
    for (const fields of lines) graph.add(fields);
    const ids = graph.matchingIds();
    const matched: LogLine[] = lines
      .map((fields, i) => ({ text: JSON.stringify(fields), fields, time: lineTime(fields)!, source: 0, lineNumber: i }))
      .filter((line) => lineMatches(line.fields, address, ids));
    return sortLines(matched).map((l) => `${String(l.fields.tier)}/${String(l.fields.event)}`);
  }

  it('follows a recipient through the worker, the post office and mailman (via postofficeId), in time order', () => {
    assert.deepEqual(search('rcpt@x.test'), ['mailman/spooled', 'mailman/accepted', 'postoffice/queued', 'worker/attempt', 'worker/delivered']);
  });

  it('finds every message of a sender and nothing of unrelated messages', () => {
    assert.deepEqual(search('app@example.com'), ['mailman/spooled', 'mailman/accepted', 'postoffice/queued', 'worker/attempt', 'worker/delivered']);
    assert.deepEqual(search('other@x.test'), ['worker/delivered']);
    assert.deepEqual(search('nobody@x.test'), []);
  });

  it('reads pino epoch and ISO times and formats a readable line', () => {
    assert.equal(lineTime({ time: 1714557600000 }), 1714557600000);
    assert.equal(lineTime({ time: '2024-05-01T10:00:00.000Z' }), 1714557600000);
    assert.equal(lineTime({}), undefined);
    const fields = { level: 30, time: '2024-05-01T10:00:00.000Z', pid: 1, tier: 'worker', event: 'deferred', messageId: 'P1', response: '451 try later', nextAttemptAt: 'x' };
    assert.equal(formatLine({ text: '', fields, time: 1714557600000, source: 0, lineNumber: 1 }), '2024-05-01T10:00:00.000Z worker     deferred   P1 response="451 try later" nextAttemptAt=x');
  });
});

describe('cli output', () => {
  it('formats ages with their two largest units', () => {
    assert.equal(formatAge(0), '0s');
    assert.equal(formatAge(59_999), '59s');
    assert.equal(formatAge(61_000), '1m01s');
    assert.equal(formatAge(3 * 3600_000 + 5 * 60_000), '3h05m');
    assert.equal(formatAge(2 * 86_400_000 + 4 * 3600_000), '2d04h');
    assert.equal(formatAge(null), '-');
  });

  it('aligns table columns and right-aligns numbers', () => {
    assert.equal(table(['TUBE', 'READY'], [['a', 5], ['long-name', 12]]), 'TUBE       READY\na              5\nlong-name     12');
  });
});

describe('queue progress bar', () => {
  const tty = () => {
    const written: string[] = [];
    return { written, stream: Object.assign({ write: (chunk: string) => (written.push(chunk), true) }, { isTTY: true }) as unknown as NodeJS.WritableStream & { isTTY: boolean } };
  };

  it('stays away from work done within a second, and never appears off a terminal', () => {
    const out = tty();
    const bar = lateProgress(out.stream, 'reading', 3);
    bar.tick();
    bar.done();
    assert.deepEqual(out.written, []);
    const late = lateProgress({ write: () => true } as unknown as NodeJS.WritableStream, 'reading', 3, 1000, Date.now() - 5000);
    late.tick();
  });

  it('appears at once when the read of the store alone took over a second', async () => {
    const message = { id: 'm1', held: false, job: null, recipients: [] } as unknown as MessageRecord;
    const store = { listActive: async () => { await new Promise((r) => setTimeout(r, 1100)); return [message]; } } as unknown as Store;
    const out = tty();
    const entries = await selectQueued(store, new Map(), { filter: {}, everything: true }, (total, startedAt) => lateProgress(out.stream, 'reading', total, 1000, startedAt));
    assert.equal(entries.length, 1);
    assert.match(out.written.join(''), /reading \[#+\] 1\/1/);
  });
});
