import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isAscii, isValidDomain, isValidMailbox } from '../../shared/address.ts';
import { parseAddressList } from '../../shared/header-addresses.ts';
import { normalizeLineEnds, splitMessage } from '../../shared/message-header.ts';
import { createSubmissionParser } from '../../postoffice/submission.ts';

/**
 * V8's backtracking regex engine throws "Maximum call stack size exceeded" on a quantified
 * group over a few million characters (issue 12.1). Everything in shared/ and the post
 * office that sees a whole message, a header field or an unbounded field gets 15 MB here
 * (more than a base64-encoded 10 MiB message) and must answer, not throw.
 */
const N = 15_000_000;

describe('no regular-expression stack overflow on large input (shared/, post office)', () => {
  it('address checks bound the length first', () => {
    assert.equal(isValidMailbox(`${'a'.repeat(N)}@example.com`), false);
    assert.equal(isValidMailbox(`a@${'b.'.repeat(N / 2)}com`), false);
    assert.equal(isValidDomain('a.'.repeat(N / 2)), false);
    assert.equal(isAscii('a'.repeat(N)), true);
  });

  it('header splitting and address lists are linear', () => {
    const header = Buffer.from(`To: ${'a@b.test, '.repeat(N / 10)}\r\nSubject: x\r\n\r\nbody`);
    assert.equal(splitMessage(header).fields.length, 2);
    assert.equal(normalizeLineEnds(Buffer.from('x\n'.repeat(N / 2))).length, N * 1.5);
    assert.ok(parseAddressList(`(${'('.repeat(N)}`).ok === false);
  });

  it('the submission parser checks a maximal data_base64 and refuses a broken one', () => {
    const parse = createSubmissionParser({ maxMessageBytes: 11 * 1024 * 1024, maxRecipients: 1 });
    const text = Buffer.alloc(10 * 1024 * 1024, 'x').toString('base64');
    assert.ok(parse({ mailfrom: '', rcpttos: ['a@example.com'], data_base64: text }).ok);
    assert.equal(parse({ mailfrom: '', rcpttos: ['a@example.com'], data_base64: `${text.slice(0, -4)}A===` }).ok, false);
  });
});
