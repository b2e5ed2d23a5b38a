import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { IdempotencyStore, type IdempotencyOptions } from '../../postoffice/idempotency.ts';
import { openStore, type Store } from '../../shared/store/open.ts';

const NOW = Date.UTC(2026, 0, 1);
let ids = 0;

function keys(overrides: Partial<IdempotencyOptions> = {}): IdempotencyStore {
  return new IdempotencyStore({ ttlSeconds: 60, owner: 'po-a', staleMs: 30_000, newMessageId: () => `id-${++ids}`, ...overrides });
}

async function memoryStore(): Promise<Store> {
  return openStore({ url: 'sqlite::memory:', timeoutMs: 1000, password: undefined, historySeconds: 60 });
}

const accepted = (id: string) => ({ id, suppressed: [] });

describe('idempotency keys in memory (no store, or the store unavailable)', () => {
  it('answers a retry with the answer of the first request once its put is done', async () => {
    const store = keys();
    const first = await store.claim('app1.example.com', 'k1', 'fp', NOW);
    assert.equal(first.status, 'new');
    if (first.status === 'new') first.complete({ id: first.messageId, suppressed: ['s@example.org'] });
    const retry = await store.claim('app1.example.com', 'k1', 'fp', NOW + 1000);
    assert.equal(retry.status, 'duplicate');
    if (retry.status === 'duplicate' && first.status === 'new') assert.deepEqual(await retry.answer, { id: first.messageId, suppressed: ['s@example.org'] });
  });

  it('makes a retry that arrives during the put wait for its outcome', async () => {
    const store = keys();
    const first = await store.claim('app1.example.com', 'k1', 'fp', NOW);
    const retry = await store.claim('app1.example.com', 'k1', 'fp', NOW);
    assert.equal(retry.status, 'duplicate');
    if (first.status === 'new') setImmediate(() => first.complete(accepted('id-x')));
    if (retry.status === 'duplicate') assert.equal((await retry.answer).id, 'id-x');
  });

  it('refuses the same key for a different message, and keys are per client', async () => {
    const store = keys();
    const first = await store.claim('app1.example.com', 'k1', 'fp', NOW);
    if (first.status === 'new') first.complete(accepted('id-1'));
    assert.equal((await store.claim('app1.example.com', 'k1', 'other', NOW)).status, 'mismatch');
    assert.equal((await store.claim('app2.example.com', 'k1', 'other', NOW)).status, 'new');
  });

  it('lets a retry queue again after the first put failed', async () => {
    const store = keys();
    const first = await store.claim('app1.example.com', 'k1', 'fp', NOW);
    const waiting = await store.claim('app1.example.com', 'k1', 'fp', NOW);
    if (first.status === 'new') first.fail(new Error('beanstalkd down'));
    if (waiting.status === 'duplicate') await assert.rejects(waiting.answer, /beanstalkd down/);
    assert.equal((await store.claim('app1.example.com', 'k1', 'fp', NOW)).status, 'new');
  });

  it('forgets keys after the TTL and the oldest beyond maxEntries', async () => {
    const store = keys({ maxEntries: 2 });
    for (const key of ['a', 'b', 'c']) {
      const claim = await store.claim('app1.example.com', key, 'fp', NOW);
      if (claim.status === 'new') claim.complete(accepted(`id-${key}`));
    }
    assert.equal(store.size, 2);
    assert.equal((await store.claim('app1.example.com', 'a', 'fp', NOW)).status, 'new', 'a was the oldest');
    assert.equal((await store.claim('app1.example.com', 'c', 'fp', NOW + 59_999)).status, 'duplicate');
    assert.equal((await store.claim('app1.example.com', 'c', 'fp', NOW + 60_000)).status, 'new', 'expired after the TTL');
    assert.equal(store.size, 1, 'expired entries are pruned');
  });

  it('falls back to memory when the store fails, and says so', async () => {
    const store = await memoryStore();
    await store.close();
    const errors: unknown[] = [];
    const keysWithBrokenStore = keys({ store, onStoreError: (err) => errors.push(err) });
    const claim = await keysWithBrokenStore.claim('app1.example.com', 'k1', 'fp', NOW);
    assert.equal(claim.status, 'new');
    assert.equal(errors.length, 1);
  });
});

describe('idempotency keys in the shared store', () => {
  it('answers a retry that reaches another post office (or this one after a restart)', async () => {
    const store = await memoryStore();
    const a = keys({ store, owner: 'po-a' });
    const first = await a.claim('app1.example.com', 'k1', 'fp', NOW);
    assert.equal(first.status, 'new');
    if (first.status !== 'new') return;
    first.complete(accepted(first.messageId));
    await store.recordQueued([{ id: first.messageId, fqdn: 'app1.example.com', mailfrom: '', rcpttos: ['x@example.org'], receivedAt: NOW, size: 1, ref: { server: 's', jobId: '1' }, key: { fqdn: 'app1.example.com', key: 'k1' } }], NOW);
    const b = keys({ store, owner: 'po-b' });
    const retry = await b.claim('app1.example.com', 'k1', 'fp', NOW + 5000);
    assert.equal(retry.status, 'duplicate');
    if (retry.status === 'duplicate') assert.equal((await retry.answer).id, first.messageId);
    assert.equal((await b.claim('app1.example.com', 'k1', 'different', NOW + 5000)).status, 'mismatch');
    await store.close();
  });

  it('puts the same job again (same id and receivedAt) after the claim was opened or its owner stopped answering', async () => {
    const store = await memoryStore();
    const a = keys({ store, owner: 'po-a' });
    const first = await a.claim('app1.example.com', 'k1', 'fp', NOW);
    assert.equal(first.status, 'new');
    if (first.status !== 'new') return;
    // po-a put the job and was killed before it could answer or record it.
    const b = keys({ store, owner: 'po-b', waitMs: 0 });
    assert.equal((await b.claim('app1.example.com', 'k1', 'fp', NOW + 1000)).status, 'busy', 'the owner may still be putting it');
    const later = await b.claim('app1.example.com', 'k1', 'fp', NOW + 30_000);
    assert.equal(later.status, 'new');
    if (later.status === 'new') assert.deepEqual([later.messageId, later.receivedAt, later.takenOver], [first.messageId, NOW, true]);

    const c = keys({ store, owner: 'po-c', waitMs: 0 });
    const other = await c.claim('app1.example.com', 'k2', 'fp', NOW);
    if (other.status !== 'new') return assert.fail('expected a new claim');
    await store.openKey('app1.example.com', 'k2', 'po-c');
    const retry = await keys({ store, owner: 'po-d' }).claim('app1.example.com', 'k2', 'fp', NOW + 10);
    assert.equal(retry.status, 'new', 'an open claim is taken over at once');
    if (retry.status === 'new') assert.equal(retry.messageId, other.messageId);
    await store.close();
  });

  it('waits for another post office that is putting the message and answers with its id', async () => {
    const store = await memoryStore();
    const a = keys({ store, owner: 'po-a' });
    const first = await a.claim('app1.example.com', 'k1', 'fp', NOW);
    if (first.status !== 'new') return assert.fail('expected a new claim');
    const waiting = keys({ store, owner: 'po-b', waitMs: 5000 }).claim('app1.example.com', 'k1', 'fp', NOW + 10);
    setTimeout(() => {
      void store.recordQueued([{ id: first.messageId, fqdn: 'app1.example.com', mailfrom: '', rcpttos: ['x@example.org'], receivedAt: NOW, size: 1, ref: { server: 's', jobId: '1' }, key: { fqdn: 'app1.example.com', key: 'k1' }, suppressed: ['gone@example.org'] }], NOW);
    }, 150);
    const answer = await waiting;
    assert.equal(answer.status, 'duplicate');
    if (answer.status === 'duplicate') assert.deepEqual(await answer.answer, { id: first.messageId, suppressed: [] });
    await store.close();
  });
});
