import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { BeanstalkError as ExportedError } from '../../shared/beanstalk.ts';
import { BeanstalkError, checkJobId, checkTube, checkUint, serverError, toStats, toStringList } from '../../shared/beanstalk-protocol.ts';

describe('beanstalkd server replies', () => {
  test('reply words the callers branch on keep their own code', () => {
    for (const word of ['NOT_FOUND', 'JOB_TOO_BIG', 'DRAINING', 'BURIED', 'DEADLINE_SOON']) {
      const err = serverError(word, 'put');
      assert.equal(err.code, word);
      assert.equal(err.reply, word);
    }
  });

  test('every other reply word is PROTOCOL, with the word kept in `reply`', () => {
    for (const word of ['BAD_FORMAT', 'UNKNOWN_COMMAND', 'OUT_OF_MEMORY', 'INTERNAL_ERROR', 'EXPECTED_CRLF', 'NOT_IGNORED', 'TIMED_OUT']) {
      const err = serverError(word, 'reserve');
      assert.equal(err.code, 'PROTOCOL');
      assert.equal(err.reply, word);
      assert.match(err.message, new RegExp(`${word} to reserve`));
    }
  });

  test('errors are HedwigErrors with a code, and the same class the client module exports', () => {
    const err = serverError('NOT_FOUND', 'delete');
    assert.ok(err instanceof ExportedError);
    assert.equal(err.name, 'BeanstalkError');
    assert.ok(err instanceof Error);
  });

  test('stats keep numbers and turn every other value into a string', () => {
    assert.deepEqual(toStats({ id: 3, tube: 'mail', draining: false, version: '1.12' }), { id: 3, tube: 'mail', draining: 'false', version: '1.12' });
    assert.deepEqual(toStats(null), {});
  });

  test('tube lists are strings even when a tube name looks like a number', () => {
    assert.deepEqual(toStringList(['default', 123]), ['default', '123']);
    assert.deepEqual(toStringList(undefined), []);
  });
});

describe('arguments that go on the command line', () => {
  test('tube names follow beanstalkd grammar', () => {
    for (const good of ['default', 'hedwig-outbound', 'a.b_c$(d)+e/f;g', 'x'.repeat(200)]) assert.equal(checkTube(good), good);
    for (const bad of ['', '-leading-dash', 'has space', 'crlf\r\nput', 'x'.repeat(201), 'ümlaut']) {
      assert.throws(() => checkTube(bad), (err: unknown) => err instanceof BeanstalkError && err.code === 'PROTOCOL', bad);
    }
  });

  test('job ids are decimal digits only', () => {
    assert.equal(checkJobId('42'), '42');
    for (const bad of ['', '-1', '1 2', '1\r\ndelete 2', 'abc', '1'.repeat(21)]) {
      assert.throws(() => checkJobId(bad), (err: unknown) => err instanceof BeanstalkError && err.code === 'PROTOCOL', bad);
    }
  });

  test('priorities, delays and counts are unsigned 32-bit integers', () => {
    assert.equal(checkUint(0, 'delay'), 0);
    assert.equal(checkUint(2 ** 32 - 1, 'priority'), 2 ** 32 - 1);
    for (const bad of [-1, 1.5, 2 ** 32, Number.NaN, Number.POSITIVE_INFINITY]) {
      assert.throws(() => checkUint(bad, 'delay'), (err: unknown) => err instanceof BeanstalkError && err.code === 'PROTOCOL', String(bad));
    }
  });
});
