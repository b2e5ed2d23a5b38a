import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { statusBody } from '../../postoffice/status.ts';
import type { MessageRecord } from '../../shared/store/store.ts';

const NOW = Date.parse('2024-05-01T12:00:00Z');

function record(overrides: Partial<MessageRecord> = {}): MessageRecord {
  return {
    id: 'm1',
    fqdn: 'app1.example.com',
    mailfrom: 'a@example.com',
    rcptCount: 2,
    size: 10,
    receivedAt: NOW,
    state: 'deferred',
    held: false,
    attempts: 1,
    lastAttemptAt: NOW + 1000,
    nextAttemptAt: NOW + 301_000,
    lastResponse: '451 later',
    job: { server: 's:1', jobId: '7' },
    updatedAt: NOW + 1000,
    expiresAt: null,
    recipients: [
      { recipient: 'x@one.test', state: 'delivered', responseCode: 250, enhancedCode: null, response: '250 ok', mx: 'mx.one.test', at: NOW + 1000 },
      { recipient: 'y@two.test', state: 'deferred', responseCode: 451, enhancedCode: '4.7.1', response: '451 later', mx: null, at: NOW + 1000 },
    ],
    ...overrides,
  };
}

describe('message status body', () => {
  it('shows a deferred message with its next attempt and each recipient’s last reply', () => {
    const body = statusBody(record(), 'delayed');
    assert.equal(body.state, 'deferred');
    assert.equal(body.nextAttemptAt, new Date(NOW + 301_000).toISOString());
    assert.deepEqual(body.recipients.map((r) => [r.recipient, r.state, r.responseCode, r.lastResponse]), [['x@one.test', 'delivered', 250, '250 ok'], ['y@two.test', 'deferred', 451, '451 later']]);
  });

  it('takes the live job state while queued: ready is queued, reserved is delivering, held wins unless a worker holds it', () => {
    assert.equal(statusBody(record({ state: 'queued' }), 'ready').state, 'queued');
    assert.equal(statusBody(record({ state: 'queued' }), 'reserved').state, 'delivering');
    assert.equal(statusBody(record({ held: true }), 'buried').state, 'held');
    assert.equal(statusBody(record({ held: true }), 'reserved').state, 'delivering');
  });

  it('answers done and deleted messages from the history, without a next attempt', () => {
    const done = statusBody(record({ state: 'done', job: null, nextAttemptAt: null }), 'unknown');
    assert.deepEqual([done.state, done.nextAttemptAt], ['done', null]);
    assert.equal(statusBody(record({ state: 'deleted' }), 'gone').state, 'deleted');
  });
});
