import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { comparableDomain, parseAddressList, qualifyAddressList } from '../../shared/header-addresses.ts';

const addresses = (body: string) => {
  const list = parseAddressList(body);
  assert.ok(list.ok, JSON.stringify(list));
  return list.addresses.map((a) => (a.domain === undefined ? a.local : `${a.local}@${a.domain}`));
};

describe('address header fields (shared/header-addresses.ts)', () => {
  it('finds every mailbox of RFC 5322 address lists, groups and comments included', () => {
    assert.deepEqual(addresses(' "Joe Q. Public" <john.q.public@example.com>'), ['john.q.public@example.com']);
    assert.deepEqual(addresses(' Mary Smith <mary@x.test>, jdoe@example.org, Who? <one@y.test>'), ['mary@x.test', 'jdoe@example.org', 'one@y.test']);
    assert.deepEqual(addresses(' Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>'), ['pete@silly.test']);
    assert.deepEqual(addresses(' A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>;, after@z.test'), ['c@a.test', 'joe@where.test', 'jdoe@one.test', 'after@z.test']);
    assert.deepEqual(addresses(' undisclosed-recipients:;'), []);
    assert.deepEqual(addresses(' <@relay.test:user@example.com>'), ['user@example.com']);
    assert.deepEqual(addresses(' "a,b@c" <real@d.test>'), ['real@d.test']);
    assert.deepEqual(addresses(' a@example.com.\r\n\t(folded)'), ['a@example.com.']);
    assert.deepEqual(addresses(' <>'), []);
  });

  it('refuses what does not close: quotes, comments, angle brackets', () => {
    for (const body of [' "unterminated', ' (comment', ' Name <a@b.test', ' <a@b.test> <c@d.test>']) assert.equal(parseAddressList(body).ok, false, body);
  });

  it('qualifies bare local parts in place and leaves everything else byte for byte', () => {
    assert.equal(qualifyAddressList(' root (Cron Daemon)', 'example.com'), ' root@example.com (Cron Daemon)');
    assert.equal(qualifyAddressList(' Cron Daemon <root>', 'example.com'), ' Cron Daemon <root@example.com>');
    assert.equal(qualifyAddressList(' a, "john doe" ,c@d.test', 'example.com'), ' a@example.com, "john doe"@example.com ,c@d.test');
    assert.equal(qualifyAddressList(' a@b.test, undisclosed-recipients:;', 'example.com'), undefined);
    assert.equal(qualifyAddressList(' "unterminated', 'example.com'), undefined);
  });

  it('is linear on a field of megabytes', () => {
    const body = ` ${'a@b.test, '.repeat(500_000)}x`;
    const list = parseAddressList(body);
    assert.ok(list.ok && list.addresses.length === 500_001);
    assert.equal(parseAddressList(` "${'q'.repeat(5_000_000)}`).ok, false);
  });

  it('compares domains as names: UTF-8, any case, a trailing dot', () => {
    assert.equal(comparableDomain('Example.COM.'), 'example.com');
    assert.equal(comparableDomain(Buffer.from('bücher.test').toString('latin1')), 'bücher.test');
  });
});
