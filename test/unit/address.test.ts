import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { domainOf, hasAddressLiteral, isValidMailbox } from '../../shared/address.ts';

describe('RFC 5321 mailbox validation', () => {
  for (const address of [
    'a@example.test',
    'first.last+tag@sub.example.com',
    "o'brien@example.ie",
    '"quoted local"@example.com',
    'jörg@bücher.example',
    'x@localhost',
  ]) {
    it(`accepts ${address}`, () => assert.equal(isValidMailbox(address), true));
  }
  for (const [address, why] of [
    ['', 'empty'],
    ['no-at-sign', 'no @'],
    ['@example.com', 'empty local part'],
    ['a@', 'empty domain'],
    ['a@example.com\r\nRCPT TO:<evil@x.test>', 'CRLF injection'],
    ['a\n@example.com', 'bare LF'],
    ['a b@example.com', 'space in dot-string'],
    ['a..b@example.com', 'double dot'],
    ['.a@example.com', 'leading dot'],
    ['a@-example.com', 'label starts with hyphen'],
    ['a@example..com', 'empty label'],
    ['a@example.com.', 'trailing dot'],
    ['a@[999.1.1.1]', 'bad IPv4 literal'],
    [`${'x'.repeat(65)}@example.com`, 'local part over 64 octets'],
    [`a@${'x'.repeat(63)}.${'y'.repeat(63)}.${'z'.repeat(63)}.${'w'.repeat(63)}.com`, 'over 256 octets path'],
    ['<a@example.com>', 'angle brackets'],
    ['a@b@example.com', 'two @ (unquoted)'],
    ['a@1.2.3.4', 'numeric top-level label'],
  ] as const) {
    it(`rejects ${JSON.stringify(address)} (${why})`, () => assert.equal(isValidMailbox(address), false));
  }
  it('refuses address literals unless asked to accept them (jobs queued before), and checks them then (issue 12.8)', () => {
    for (const literal of ['user@[127.0.0.1]', 'user@[192.0.2.1]', 'user@[IPv6:::1]', 'user@[IPv6:2001:db8::1]']) {
      assert.equal(isValidMailbox(literal), false, literal);
      assert.equal(isValidMailbox(literal, { addressLiteral: true }), true, literal);
      assert.equal(hasAddressLiteral(literal), true, literal);
    }
    assert.equal(isValidMailbox('a@[999.1.1.1]', { addressLiteral: true }), false);
    assert.equal(isValidMailbox('a@[IPv6:1.2.3.4]', { addressLiteral: true }), false);
    assert.equal(hasAddressLiteral('a@example.com'), false);
  });
  it('takes the domain lower-cased for grouping', () => assert.equal(domainOf('A@Dest.TEST'), 'dest.test'));
});
