import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { IdempotencyStore } from '../../postoffice/idempotency.ts';

const NOW = Date.UTC(2026, 0, 1);

describe('idempotency store', () => {
  it('answers a retry with the id of the first request once its put is done', async () => {
    const store = new IdempotencyStore({ ttlSeconds: 60 });
    const first = store.claim('app1.example.com', 'k1', 'fp', NOW);
    assert.equal(first.status, 'new');
    if (first.status === 'new') first.complete('id-1');
    const retry = store.claim('app1.example.com', 'k1', 'fp', NOW + 1000);
    assert.equal(retry.status, 'duplicate');
    if (retry.status === 'duplicate') assert.equal(await retry.id, 'id-1');
  });

  it('makes a retry that arrives during the put wait for its outcome', async () => {
    const store = new IdempotencyStore({ ttlSeconds: 60 });
    const first = store.claim('app1.example.com', 'k1', 'fp', NOW);
    const retry = store.claim('app1.example.com', 'k1', 'fp', NOW);
    assert.equal(retry.status, 'duplicate');
    if (first.status === 'new') setImmediate(() => first.complete('id-1'));
    if (retry.status === 'duplicate') assert.equal(await retry.id, 'id-1');
  });

  it('refuses the same key for a different message, and keys are per client', () => {
    const store = new IdempotencyStore({ ttlSeconds: 60 });
    const first = store.claim('app1.example.com', 'k1', 'fp', NOW);
    if (first.status === 'new') first.complete('id-1');
    assert.equal(store.claim('app1.example.com', 'k1', 'other', NOW).status, 'mismatch');
    assert.equal(store.claim('app2.example.com', 'k1', 'other', NOW).status, 'new');
  });

  it('lets a retry queue again after the first put failed', async () => {
    const store = new IdempotencyStore({ ttlSeconds: 60 });
    const first = store.claim('app1.example.com', 'k1', 'fp', NOW);
    const waiting = store.claim('app1.example.com', 'k1', 'fp', NOW);
    if (first.status === 'new') first.abandon(new Error('beanstalkd down'));
    if (waiting.status === 'duplicate') await assert.rejects(waiting.id, /beanstalkd down/);
    assert.equal(store.claim('app1.example.com', 'k1', 'fp', NOW).status, 'new');
  });

  it('forgets keys after the TTL and the oldest beyond maxEntries', () => {
    const store = new IdempotencyStore({ ttlSeconds: 60, maxEntries: 2 });
    for (const key of ['a', 'b', 'c']) {
      const claim = store.claim('app1.example.com', key, 'fp', NOW);
      if (claim.status === 'new') claim.complete(`id-${key}`);
    }
    assert.equal(store.size, 2);
    assert.equal(store.claim('app1.example.com', 'a', 'fp', NOW).status, 'new', 'a was the oldest');
    assert.equal(store.claim('app1.example.com', 'c', 'fp', NOW + 59_999).status, 'duplicate');
    assert.equal(store.claim('app1.example.com', 'c', 'fp', NOW + 60_000).status, 'new', 'expired after the TTL');
    assert.equal(store.size, 1, 'expired entries are pruned');
  });
});
