import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { classifyError, classifyReply, parseReply } from '../../worker/classify.ts';

function verdictFor(response: string, stage?: string) {
  const reply = parseReply(response, stage);
  assert.ok(reply, `not a reply: ${response}`);
  return classifyReply(reply);
}

describe('classify: SMTP replies', () => {
  it('parses the reply code and the enhanced status code', () => {
    assert.deepEqual(parseReply('550 5.1.1 <bob@example.org>: no such user', 'RCPT TO'), {
      code: 550,
      enhanced: '5.1.1',
      text: '550 5.1.1 <bob@example.org>: no such user',
      stage: 'RCPT TO',
    });
    assert.equal(parseReply('250 OK')?.enhanced, undefined);
    assert.equal(parseReply('250-5.5.5x not an enhanced code')?.enhanced, undefined);
    assert.equal(parseReply('hello'), undefined);
  });

  const table: Array<[string, string | undefined, 'delivered' | 'deferred' | 'bounced', boolean]> = [
    ['250 2.0.0 OK queued as 12345', 'DATA', 'delivered', false],
    ['251 2.1.5 user not local; will forward', 'RCPT TO', 'delivered', false],
    ['450 4.2.0 Greylisted, please try again later', 'RCPT TO', 'deferred', true],
    ['451 4.7.1 Please try again later', 'RCPT TO', 'deferred', true],
    ['450 4.2.1 mailbox busy', 'RCPT TO', 'deferred', false],
    ['421 4.7.0 greylisting in action', 'CONN', 'deferred', true],
    ['452 4.5.3 too many recipients', 'RCPT TO', 'deferred', false],
    ['421 4.3.2 service shutting down', 'CONN', 'deferred', false],
    ['552 5.5.3 too many recipients', 'RCPT TO', 'deferred', false],
    ['552 5.3.4 message too big', 'DATA', 'bounced', false],
    ['503 5.5.1 bad sequence of commands', 'RCPT TO', 'deferred', false],
    ['550 5.1.1 no such user', 'RCPT TO', 'bounced', false],
    ['554 5.7.1 rejected as spam', 'DATA', 'bounced', false],
    ['554 no SMTP service here', 'CONN', 'bounced', false],
    ['354 go ahead', 'DATA', 'deferred', false],
  ];
  for (const [response, stage, outcome, greylisted] of table) {
    it(`${response} (${stage}) -> ${outcome}${greylisted ? ', greylisted' : ''}`, () => {
      const verdict = verdictFor(response, stage);
      assert.equal(verdict.outcome, outcome);
      assert.equal(verdict.greylisted, greylisted);
      assert.equal(verdict.response, response);
      assert.equal(verdict.responseCode, Number(response.slice(0, 3)));
    });
  }
});

describe('classify: client errors', () => {
  it('uses the SMTP reply an error carries, with the command it answered', () => {
    const err = Object.assign(new Error('Recipient command failed'), { code: 'EENVELOPE', command: 'RCPT TO', responseCode: 550, response: '550 5.1.1 no such user' });
    assert.deepEqual(classifyError(err), { outcome: 'bounced', greylisted: false, responseCode: 550, enhancedCode: '5.1.1', response: '550 5.1.1 no such user' });
    const tooMany = Object.assign(new Error('x'), { code: 'EENVELOPE', command: 'RCPT TO', response: '552 5.5.3 too many recipients' });
    assert.equal(classifyError(tooMany).outcome, 'deferred');
  });

  for (const code of ['ECONNECTION', 'ETIMEDOUT', 'ESOCKET', 'ETLS', 'EDNS', 'EPROTOCOL']) {
    it(`${code} without a reply is deferred`, () => {
      const verdict = classifyError(Object.assign(new Error('boom'), { code }));
      assert.equal(verdict.outcome, 'deferred');
      assert.equal(verdict.responseCode, undefined);
      assert.match(verdict.response, new RegExp(`^${code}: boom`));
    });
  }

  it('a message the client itself refuses (larger than the server SIZE) is bounced', () => {
    assert.equal(classifyError(Object.assign(new Error('Message size larger than allowed 1000'), { code: 'EMESSAGE', command: 'MAIL FROM' })).outcome, 'bounced');
  });

  it('an unknown error is deferred, never bounced', () => {
    assert.equal(classifyError(new TypeError('undefined is not a function')).outcome, 'deferred');
    assert.equal(classifyError('a string').outcome, 'deferred');
    assert.equal(classifyError(undefined).outcome, 'deferred');
  });
});

describe('classify: the client refusing to send', () => {
  it('maps refusals without a server reply to RFC 3463 codes, without nodemailer error names in the reason', () => {
    const cases: Array<[string, string, string]> = [
      ['EMESSAGE', 'Message size larger than allowed 1000', '5.3.4'],
      ['EMESSAGE', 'Empty message', '5.6.0'],
      ['EENVELOPE', 'Invalid sender "a\\r\\nb"', '5.1.7'],
      ['EENVELOPE', 'Invalid recipient "x"', '5.1.3'],
    ];
    for (const [code, message, enhanced] of cases) {
      const verdict = classifyError(Object.assign(new Error(message), { code }));
      assert.equal(verdict.outcome, 'bounced', message);
      assert.equal(verdict.enhancedCode, enhanced, message);
      assert.equal(verdict.responseCode, undefined, 'no server reply');
      assert.ok(verdict.response.startsWith(`${enhanced} hedwig refused to send it: `), verdict.response);
      assert.doesNotMatch(verdict.response, /EMESSAGE|EENVELOPE/);
    }
  });
});
