import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { StatusUpdate } from '../../shared/message-status.ts';
import { MIGRATIONS } from '../../shared/store/migrations.ts';
import { openStore, type Store } from '../../shared/store/open.ts';
import { freePort } from '../helpers/ports.ts';
import { startPostgres, type PostgresProcess } from '../helpers/postgres.ts';

/**
 * The store's behaviour, one suite run against each engine: the embedded SQLite file and a
 * real PostgreSQL. Every test works on its own message ids and keys, so they share a database.
 */

const NOW = Date.UTC(2026, 5, 1, 12);
const policy = { enabled: true, ttlSeconds: 30 * 86_400 };
let counter = 0;
const unique = (prefix: string) => `${prefix}-${process.pid}-${++counter}`;

function update(messageId: string, overrides: Partial<StatusUpdate> = {}): StatusUpdate {
  return {
    v: 1,
    messageId,
    fqdn: 'app1.example.com',
    mailfrom: 'app@example.com',
    receivedAt: NOW,
    attempts: 1,
    state: 'done',
    recipients: [{ recipient: 'a@example.org', state: 'delivered', responseCode: 250, response: '250 ok', mx: 'mx.example.org', at: NOW + 1000 }],
    at: NOW + 1000,
    ...overrides,
  };
}

let postgres: PostgresProcess | undefined;
const sqliteDir = mkdtempSync(join(tmpdir(), 'hedwig-store-'));

const engines: Array<{ name: string; url: () => string }> = [
  { name: 'sqlite', url: () => `sqlite:${join(sqliteDir, 'store.db')}` },
  { name: 'postgres', url: () => postgres!.url },
];

before(async () => {
  postgres = await startPostgres();
});
after(async () => {
  await postgres?.stop();
});

for (const engine of engines) {
  describe(`store on ${engine.name}`, () => {
    let store: Store;
    before(async () => {
      store = await openStore({ url: engine.url(), timeoutMs: 5000, password: undefined, historySeconds: 7 * 86_400 });
    });
    after(async () => {
      await store.close();
    });

    it('applies the migrations once, also when several processes open it at the same time', async () => {
      const more = await Promise.all([1, 2, 3].map(() => openStore({ url: engine.url(), timeoutMs: 5000, password: undefined, historySeconds: 60 })));
      const rows = await store.engine.all('SELECT version FROM hedwig_schema_migrations ORDER BY version');
      assert.deepEqual(rows.map((r) => Number(r.version)), MIGRATIONS.map((m) => m.version));
      await Promise.all(more.map((s) => s.close()));
    });

    it('claims an idempotency key once; a second claim sees the first, another host has its own keys', async () => {
      const key = unique('key');
      const claim = { fqdn: 'app1.example.com', key, fingerprint: 'fp1', messageId: 'm1', receivedAt: NOW, owner: 'po-a', now: NOW, ttlMs: 60_000 };
      assert.deepEqual(await store.claimKey(claim), { claimed: true });
      const second = await store.claimKey({ ...claim, messageId: 'm2', owner: 'po-b', fingerprint: 'fp2' });
      assert.equal(second.claimed, false);
      if (!second.claimed) assert.deepEqual(second.existing, { fingerprint: 'fp1', messageId: 'm1', receivedAt: NOW, state: 'pending', owner: 'po-a', claimedAt: NOW });
      assert.deepEqual(await store.claimKey({ ...claim, fqdn: 'app2.example.com' }), { claimed: true });
    });

    it('lets one post office take over an open or abandoned claim, keeping the message id and receivedAt', async () => {
      const key = unique('key');
      const claim = { fqdn: 'app1.example.com', key, fingerprint: 'fp', messageId: 'm-orig', receivedAt: NOW, owner: 'po-dead', now: NOW, ttlMs: 60_000 };
      await store.claimKey(claim);
      await store.openKey('app1.example.com', key, 'po-someone-else');
      assert.equal((await store.readKey('app1.example.com', key))!.state, 'pending', 'only the owner opens its claim');
      const existing = (await store.readKey('app1.example.com', key))!;
      assert.equal(await store.takeOverKey('app1.example.com', key, existing, 'po-b', NOW + 30_000), true);
      assert.equal(await store.takeOverKey('app1.example.com', key, existing, 'po-c', NOW + 30_000), false, 'the second taker lost the race');
      const taken = (await store.readKey('app1.example.com', key))!;
      assert.deepEqual([taken.owner, taken.messageId, taken.receivedAt, taken.state], ['po-b', 'm-orig', NOW, 'pending']);
      await store.openKey('app1.example.com', key, 'po-b');
      assert.equal((await store.readKey('app1.example.com', key))!.state, 'open');
    });

    it('claims an expired key anew', async () => {
      const key = unique('key');
      const claim = { fqdn: 'app1.example.com', key, fingerprint: 'fp', messageId: 'old', receivedAt: NOW, owner: 'po-a', now: NOW, ttlMs: 1000 };
      await store.claimKey(claim);
      assert.deepEqual(await store.claimKey({ ...claim, messageId: 'new', now: NOW + 1000 }), { claimed: true });
      assert.equal((await store.readKey('app1.example.com', key))!.messageId, 'new');
    });

    it('records queued messages and marks their keys queued in the same transaction', async () => {
      const id = unique('msg');
      const key = unique('key');
      await store.claimKey({ fqdn: 'app1.example.com', key, fingerprint: 'fp', messageId: id, receivedAt: NOW, owner: 'po-a', now: NOW, ttlMs: 60_000 });
      await store.recordQueued([{ id, fqdn: 'app1.example.com', mailfrom: 'app@example.com', rcpttos: ['a@Example.org', 'b@example.net'], receivedAt: NOW, size: 123, ref: { server: '127.0.0.1:11300', jobId: '42' }, key: { fqdn: 'app1.example.com', key } }], NOW);
      assert.equal((await store.readKey('app1.example.com', key))!.state, 'queued');
      const message = (await store.getMessage(id))!;
      assert.equal(message.state, 'queued');
      assert.deepEqual(message.job, { server: '127.0.0.1:11300', jobId: '42' });
      assert.deepEqual(message.recipients.map((r) => [r.recipient, r.state]), [['a@Example.org', 'queued'], ['b@example.net', 'queued']]);
      assert.equal(message.size, 123);
    });

    it('follows a message through a deferral to delivery and keeps the history; an older update never overwrites a newer one', async () => {
      const id = unique('msg');
      await store.recordQueued([{ id, fqdn: 'app1.example.com', mailfrom: 'app@example.com', rcpttos: ['a@example.org', 'b@example.net'], receivedAt: NOW, size: 10, ref: { server: 's:1', jobId: '1' } }], NOW);
      const deferred = update(id, {
        state: 'deferred',
        nextAttemptAt: NOW + 300_000,
        retry: { server: 's:1', jobId: '7' },
        recipients: [
          { recipient: 'a@example.org', state: 'delivered', responseCode: 250, response: '250 ok', at: NOW + 1000 },
          { recipient: 'b@example.net', state: 'deferred', responseCode: 451, enhancedCode: '4.7.1', response: '451 4.7.1 greylisted', at: NOW + 1000 },
        ],
      });
      await store.applyStatus(deferred, NOW + 1000, policy);
      let message = (await store.getMessage(id))!;
      assert.deepEqual([message.state, message.attempts, message.nextAttemptAt, message.job?.jobId, message.expiresAt], ['deferred', 1, NOW + 300_000, '7', null]);
      const later = update(id, { attempts: 2, at: NOW + 301_000, recipients: [{ recipient: 'b@example.net', state: 'delivered', responseCode: 250, response: '250 ok', at: NOW + 301_000 }] });
      await store.applyStatus(later, NOW + 301_000, policy);
      await store.applyStatus(deferred, NOW + 302_000, policy); // arrives late
      message = (await store.getMessage(id))!;
      assert.deepEqual([message.state, message.attempts, message.job], ['done', 2, null]);
      assert.equal(message.expiresAt, NOW + 301_000 + 7 * 86_400_000);
      assert.deepEqual(message.recipients.map((r) => [r.recipient, r.state, r.responseCode]), [['a@example.org', 'delivered', 250], ['b@example.net', 'delivered', 250]]);
    });

    it('keeps what a fast worker reported when the queued record arrives after it', async () => {
      const id = unique('msg');
      await store.applyStatus(update(id), NOW + 1000, policy);
      await store.recordQueued([{ id, fqdn: 'app1.example.com', mailfrom: 'app@example.com', rcpttos: ['a@example.org'], receivedAt: NOW, size: 10, ref: { server: 's:1', jobId: '1' } }], NOW + 1001);
      const message = (await store.getMessage(id))!;
      assert.deepEqual([message.state, message.job, message.mailfrom, message.recipients[0]!.state], ['done', null, 'app@example.com', 'delivered']);
    });

    it('lists messages still queued with the filters of hedwig queue list', async () => {
      const sender = `${unique('list')}@example.com`;
      const ids = [unique('msg'), unique('msg'), unique('msg')];
      await store.recordQueued(
        [
          { id: ids[0]!, fqdn: 'h', mailfrom: sender, rcpttos: ['x@gmail.example', 'y@other.example'], receivedAt: NOW - 3_600_000, size: 1, ref: { server: 's:1', jobId: '1' } },
          { id: ids[1]!, fqdn: 'h', mailfrom: sender, rcpttos: ['z@other.example'], receivedAt: NOW - 60_000, size: 1, ref: { server: 's:1', jobId: '2' } },
          { id: ids[2]!, fqdn: 'h', mailfrom: sender, rcpttos: ['w@gmail.example'], receivedAt: NOW, size: 1, ref: { server: 's:1', jobId: '3' } },
        ],
        NOW,
      );
      await store.applyStatus(update(ids[2]!, { mailfrom: sender, recipients: [{ recipient: 'w@gmail.example', state: 'delivered', response: '250', at: NOW + 5 }], at: NOW + 5 }), NOW + 5, policy);
      const mine = (filter = {}) => store.listActive({ sender, ...filter }).then((list) => list.map((m) => m.id));
      assert.deepEqual(await mine(), [ids[0], ids[1]], 'done messages are not listed; oldest first');
      assert.deepEqual(await mine({ domain: 'GMAIL.example' }), [ids[0]]);
      assert.deepEqual(await mine({ recipient: 'Z@other.example' }), [ids[1]]);
      assert.deepEqual(await mine({ receivedBefore: NOW - 600_000 }), [ids[0]]);
      assert.deepEqual(await mine({ limit: 1 }), [ids[0]]);
      assert.deepEqual((await store.listActive({ sender, domain: 'gmail.example' }))[0]!.recipients.map((r) => r.recipient), ['x@gmail.example', 'y@other.example']);
      assert.equal(await store.setHeld([ids[1]!], true, NOW), 1);
      assert.deepEqual(await mine({ held: true }), [ids[1]]);
      await store.markDeleted(ids[1]!, NOW, 'deleted by an operator');
      assert.deepEqual(await mine(), [ids[0]]);
      const deleted = (await store.getMessage(ids[1]!))!;
      assert.deepEqual([deleted.state, deleted.held, deleted.recipients[0]!.state], ['deleted', false, 'deleted']);
    });

    it('lets exactly one job make the first attempt of a message', async () => {
      const id = unique('msg');
      const results = await Promise.all([
        store.firstAttempt(id, NOW, { server: 's:1', jobId: '10' }, NOW),
        store.firstAttempt(id, NOW, { server: 's:1', jobId: '11' }, NOW),
        store.firstAttempt(id, NOW, { server: 's:2', jobId: '10' }, NOW),
      ]);
      assert.equal(results.filter((r) => r === 'first').length, 1);
      const owner = results.indexOf('first');
      const ownerRef = [{ server: 's:1', jobId: '10' }, { server: 's:1', jobId: '11' }, { server: 's:2', jobId: '10' }][owner]!;
      assert.equal(await store.firstAttempt(id, NOW, ownerRef, NOW + 5), 'first', 'the owner job reserved again');
      assert.equal(await store.firstAttempt(id, NOW + 1, { server: 's:9', jobId: '1' }, NOW), 'first', 'a requeued message (new receivedAt) is a new life');
    });

    it('suppresses recipients that bounced with a "no such address" reply, not others, and leaves manual entries alone', async () => {
      const id = unique('msg');
      const gone = `${unique('gone')}@example.org`;
      const full = `${unique('full')}@example.org`;
      const manual = `${unique('manual')}@example.org`;
      await store.suppress({ address: manual, source: 'manual', responseCode: null, enhancedCode: null, response: 'asked to stop', messageId: null, createdAt: NOW, expiresAt: null });
      const applied = await store.applyStatus(
        update(id, {
          recipients: [
            { recipient: gone.toUpperCase(), state: 'bounced', responseCode: 550, enhancedCode: '5.1.1', response: '550 5.1.1 no such user', at: NOW },
            { recipient: full, state: 'bounced', responseCode: 552, enhancedCode: '5.2.2', response: '552 5.2.2 mailbox full', at: NOW },
            { recipient: manual, state: 'bounced', responseCode: 550, enhancedCode: '5.1.1', response: '550 5.1.1 unknown', at: NOW },
          ],
        }),
        NOW,
        policy,
      );
      assert.deepEqual(applied.suppressed.map((s) => s.address), [gone]);
      const found = await store.suppressed([gone, full, manual, 'nobody@example.org'], NOW + 1);
      assert.deepEqual(found.map((s) => s.address).sort(), [gone, manual].sort());
      assert.equal(found.find((s) => s.address === manual)!.expiresAt, null, 'the manual entry kept its (absent) expiry');
      assert.deepEqual(await store.suppressed([gone], NOW + 30 * 86_400_000), [], 'expired after the TTL');
      assert.equal(await store.unsuppress(gone.toUpperCase()), true);
      assert.equal(await store.unsuppress(gone), false);
      assert.ok((await store.listSuppressions({ domain: 'EXAMPLE.org', source: 'manual' }, NOW)).some((s) => s.address === manual));
      const off = await store.applyStatus(update(unique('msg'), { recipients: [{ recipient: `${unique('x')}@example.org`, state: 'bounced', enhancedCode: '5.1.1', response: '550', at: NOW }] }), NOW, { ...policy, enabled: false });
      assert.deepEqual(off.suppressed, [], 'nothing is added with suppression off');
    });

    it('prunes history, keys, suppressions and first attempts past their retention, never a queued message', async () => {
      const done = unique('msg');
      const queued = unique('msg');
      await store.applyStatus(update(done), NOW, policy);
      await store.recordQueued([{ id: queued, fqdn: 'h', mailfrom: '', rcpttos: ['q@example.org'], receivedAt: NOW - 100 * 86_400_000, size: 1, ref: { server: 's', jobId: '1' } }], NOW);
      const removed = await store.prune(NOW + 8 * 86_400_000, { firstAttemptMs: 86_400_000 });
      assert.ok(removed.messages! >= 1);
      assert.equal(await store.getMessage(done), undefined);
      assert.equal((await store.getMessage(queued))?.state, 'queued');
    });
  });
}

describe('store errors', () => {
  it('names the setting and the URL without the password when the database is unreachable', async () => {
    const port = await freePort();
    await assert.rejects(
      openStore({ url: `postgres://hedwig:secret@127.0.0.1:${port}/hedwig`, timeoutMs: 2000, password: undefined, historySeconds: 60 }, { setting: 'store.url' }),
      (err: Error) => {
        assert.match(err.message, new RegExp(`^store.url: cannot open postgres://hedwig:\\*\\*\\*@127.0.0.1:${port}/hedwig: ECONNREFUSED`));
        assert.doesNotMatch(err.message, /secret/);
        return true;
      },
    );
  });

  it('refuses a database whose schema is newer than this hedwig', async () => {
    const url = `sqlite:${join(sqliteDir, 'newer.db')}`;
    const store = await openStore({ url, timeoutMs: 1000, password: undefined, historySeconds: 60 });
    await store.engine.run('INSERT INTO hedwig_schema_migrations (version, name, applied_at) VALUES (999, $1, 0)', ['from the future']);
    await store.close();
    await assert.rejects(openStore({ url, timeoutMs: 1000, password: undefined, historySeconds: 60 }), /schema is version 999, newer than this hedwig knows/);
  });
});
