import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { suppressionRuleFor } from '../../shared/store/suppression-rules.ts';

describe('suppression rules', () => {
  const suppresses = (reply: { responseCode?: number; enhancedCode?: string; response: string }) => suppressionRuleFor(reply) !== undefined;

  it('suppresses replies that say the address does not exist', () => {
    assert.ok(suppresses({ responseCode: 550, enhancedCode: '5.1.1', response: '550 5.1.1 <a@example.org>: Recipient address rejected: User unknown' }));
    assert.ok(suppresses({ responseCode: 550, enhancedCode: '5.1.2', response: '550 5.1.2 NXDOMAIN example.invalid' }));
    assert.ok(suppresses({ responseCode: 556, enhancedCode: '5.1.10', response: '556 5.1.10 null MX' }));
    assert.ok(suppresses({ responseCode: 553, enhancedCode: '5.1.3', response: '553 5.1.3 bad address syntax' }));
    assert.ok(suppresses({ responseCode: 550, response: '550 No such user here' }), 'no enhanced code: judged by the text');
    assert.ok(suppresses({ responseCode: 550, response: '550 mailbox unavailable' }));
  });

  it('never suppresses failures that are not the address’s fault', () => {
    assert.ok(!suppresses({ responseCode: 552, enhancedCode: '5.2.2', response: '552 5.2.2 mailbox full' }));
    assert.ok(!suppresses({ responseCode: 550, enhancedCode: '5.7.1', response: '550 5.7.1 user unknown to our policy engine; spam' }), 'an enhanced code decides, whatever the text');
    assert.ok(!suppresses({ responseCode: 554, response: '554 message rejected as spam' }));
    assert.ok(!suppresses({ responseCode: 451, response: '451 no such user (try later)' }), 'temporary replies are never listed');
    assert.ok(!suppresses({ response: 'connection refused' }));
  });
});
