import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { OutboundJob } from '../../shared/job.ts';
import type { StatusUpdate } from '../../shared/message-status.ts';
import { statusBody, StatusTable } from '../../postoffice/status.ts';

const NOW = Date.parse('2024-05-01T12:00:00Z');
const job = (id: string): OutboundJob => ({ v: 1, id, fqdn: 'app1.example.com', mailfrom: 'a@example.com', rcpttos: ['x@one.test', 'y@two.test'], data: '', receivedAt: NOW, attempts: 0 });

function update(at: number, overrides: Partial<StatusUpdate> = {}): StatusUpdate {
  return {
    v: 1,
    messageId: 'm1',
    fqdn: 'app1.example.com',
    receivedAt: NOW,
    attempts: 1,
    state: 'deferred',
    nextAttemptAt: at + 300_000,
    recipients: [{ recipient: 'y@two.test', state: 'deferred', responseCode: 451, response: '451 later', at }],
    at,
    ...overrides,
  };
}

describe('message status table', () => {
  it('starts a message as queued and merges updates per recipient', () => {
    const table = new StatusTable({ retainSeconds: 3600, maxEntries: 10 });
    table.queued(job('m1'), { server: 's:1', jobId: '5' }, NOW);
    table.apply(update(NOW + 1000, { recipients: [{ recipient: 'x@one.test', state: 'delivered', responseCode: 250, response: '250 ok', at: NOW + 1000 }, ...update(NOW + 1000).recipients] }), NOW + 1000);
    const body = statusBody(table.get('m1', NOW + 1000)!, 'delayed');
    assert.equal(body.state, 'deferred');
    assert.equal(body.nextAttemptAt, new Date(NOW + 301_000).toISOString());
    assert.deepEqual(body.recipients.map((r) => [r.recipient, r.state, r.responseCode]), [['x@one.test', 'delivered', 250], ['y@two.test', 'deferred', 451]]);

    table.apply(update(NOW + 400_000, { attempts: 2, state: 'done', recipients: [{ recipient: 'y@two.test', state: 'delivered', responseCode: 250, response: '250 ok', at: NOW + 400_000 }] }), NOW + 400_000);
    const done = statusBody(table.get('m1', NOW + 400_000)!, 'unknown');
    assert.equal(done.state, 'done');
    assert.equal(done.nextAttemptAt, null);
    assert.deepEqual(done.recipients.map((r) => r.state), ['delivered', 'delivered'], 'the recipient delivered earlier stays delivered');
  });

  it('ignores an update older than what it already has', () => {
    const table = new StatusTable({ retainSeconds: 3600, maxEntries: 10 });
    table.apply(update(NOW + 2000, { attempts: 2 }), NOW + 2000);
    table.apply(update(NOW + 1000, { attempts: 1 }), NOW + 2000);
    assert.equal(table.get('m1', NOW + 2000)!.attempts, 2);
  });

  it('shows the live job state: ready is queued, reserved is delivering', () => {
    const table = new StatusTable({ retainSeconds: 3600, maxEntries: 10 });
    table.queued(job('m1'), { server: 's:1', jobId: '5' }, NOW);
    assert.equal(statusBody(table.get('m1', NOW)!, 'ready').state, 'queued');
    assert.equal(statusBody(table.get('m1', NOW)!, 'reserved').state, 'delivering');
  });

  it('forgets a message retainSeconds after its next attempt was due, and the oldest beyond maxEntries', () => {
    const table = new StatusTable({ retainSeconds: 60, maxEntries: 2 });
    table.apply(update(NOW), NOW);
    assert.ok(table.get('m1', NOW + 300_000 + 59_000));
    assert.equal(table.get('m1', NOW + 300_000 + 60_000), undefined);
    for (const id of ['a', 'b', 'c']) table.queued(job(id), { server: 's:1', jobId: id }, NOW);
    assert.equal(table.size, 2);
    assert.equal(table.get('a', NOW), undefined);
    assert.ok(table.get('c', NOW));
  });
});
