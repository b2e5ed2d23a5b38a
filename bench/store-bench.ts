/**
 * `npx tsx bench/store-bench.ts [--records 20000] [--ops 5000] [--concurrency 16] [--engines sqlite,postgres]`
 *
 * The store's operations per second on each engine, as the tiers use them (shared/store/store.ts):
 * recordQueued in batches of 500 (the post office's queued records), claimKey and getMessage
 * (each submission with a key, each GET /v1/messages/:id), applyStatus (each settled attempt,
 * from the workers), suppressed (each submission's check, here against an empty list), `--concurrency` at a time from one
 * process. SQLite: a WAL file in a temp dir (synchronous=NORMAL, what sqlite:PATH opens).
 * PostgreSQL: a fresh Debian PostgreSQL cluster on loopback with fsync on (production
 * settings; the tests run theirs with fsync off). Prints JSON.
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { StatusUpdate } from '../shared/message-status.ts';
import { openStore, type Store } from '../shared/store/open.ts';
import type { QueuedRecord } from '../shared/store/store.ts';
import { postgresAvailable, startPostgres } from '../test/helpers/postgres.ts';

const { values } = parseArgs({
  options: {
    records: { type: 'string', default: '20000' },
    ops: { type: 'string', default: '5000' },
    concurrency: { type: 'string', default: '16' },
    engines: { type: 'string', default: 'sqlite,postgres' },
  },
});
const RECORDS = Number(values.records);
const OPS = Number(values.ops);
const CONCURRENCY = Number(values.concurrency);
const round = (n: number) => Math.round(n);
const progress = (text: string) => process.stderr.write(`store-bench: ${text}\n`);

async function timed(count: number, width: number, op: (i: number) => Promise<unknown>): Promise<{ perSecond: number; seconds: number }> {
  let next = 0;
  const started = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: width }, async () => {
      for (let i = next++; i < count; i = next++) await op(i);
    }),
  );
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return { perSecond: round(count / seconds), seconds: Math.round(seconds * 100) / 100 };
}

async function measure(store: Store): Promise<Record<string, unknown>> {
  const now = Date.now();
  const ids = Array.from({ length: RECORDS }, () => randomUUID());
  const records: QueuedRecord[] = ids.map((id, i) => ({ id, fqdn: 'app1.example.com', mailfrom: 'app@example.com', rcpttos: [`rcpt${i % 1000}@d${i % 100}.example.org`], receivedAt: now - i, size: 2048, ref: { server: '127.0.0.1:11300', jobId: String(i + 1) } }));
  const batches = Array.from({ length: Math.ceil(RECORDS / 500) }, (_, b) => records.slice(b * 500, b * 500 + 500));
  // Batches go one after another, as QueuedRecords writes them.
  const recordQueued = await timed(batches.length, 1, (b) => store.recordQueued(batches[b]!, now));
  const claimKey = await timed(OPS, CONCURRENCY, (i) => store.claimKey({ fqdn: 'app1.example.com', key: `key-${now}-${i}`, fingerprint: 'f', messageId: randomUUID(), receivedAt: now, owner: 'po-1', now, ttlMs: 86_400_000 }));
  const getMessage = await timed(OPS, CONCURRENCY, (i) => store.getMessage(ids[(i * 7919) % RECORDS]!));
  const suppressed = await timed(OPS, CONCURRENCY, (i) => store.suppressed([`rcpt${i % 1000}@d${i % 100}.example.org`], now));
  const policy = { enabled: true, ttlSeconds: 2_592_000 };
  const applyStatus = await timed(OPS, CONCURRENCY, (i) => {
    const id = ids[i % RECORDS]!;
    const update: StatusUpdate = { v: 1, messageId: id, fqdn: 'app1.example.com', mailfrom: 'app@example.com', receivedAt: now - i, attempts: 1, state: 'done', recipients: [{ recipient: `rcpt${i % 1000}@d${i % 100}.example.org`, state: 'delivered', responseCode: 250, response: '250 2.0.0 ok', mx: 'mx.example.org', at: now }], at: now };
    return store.applyStatus(update, now, policy);
  });
  const listStarted = process.hrtime.bigint();
  const listed = await store.listActive({});
  const listActiveSeconds = Math.round((Number(process.hrtime.bigint() - listStarted) / 1e9) * 100) / 100;
  return {
    recordQueued: { recordsPerSecond: round(RECORDS / recordQueued.seconds), batchesPerSecond: recordQueued.perSecond },
    claimKeyPerSecond: claimKey.perSecond,
    getMessagePerSecond: getMessage.perSecond,
    suppressedCheckPerSecond: suppressed.perSecond,
    applyStatusPerSecond: applyStatus.perSecond,
    listActive: { messages: listed.length, seconds: listActiveSeconds },
  };
}

const results: Record<string, unknown> = {};
for (const engine of values.engines.split(',')) {
  if (engine === 'sqlite') {
    const dir = mkdtempSync(join(tmpdir(), 'hedwig-store-bench-'));
    const file = join(dir, 'store.db');
    const store = await openStore({ url: `sqlite:${file}`, timeoutMs: 30_000, password: undefined, historySeconds: 604_800 });
    progress('sqlite');
    results.sqlite = { ...(await measure(store)), fileMB: Math.round(statSync(file).size / 1e5) / 10 };
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  } else if (engine === 'postgres') {
    if (!postgresAvailable()) {
      results.postgres = 'not installed';
      continue;
    }
    const postgres = await startPostgres({ durable: true });
    try {
      const store = await openStore({ url: postgres.url, timeoutMs: 30_000, password: undefined, historySeconds: 604_800 }, { maxConnections: CONCURRENCY });
      progress('postgres');
      results.postgres = await measure(store);
      await store.close();
    } finally {
      await postgres.stop();
    }
  }
  progress(JSON.stringify(results[engine]));
}
process.stdout.write(`${JSON.stringify({ date: new Date().toISOString(), machine: { cpus: cpus().length, model: cpus()[0]?.model, loadavg: loadavg().map((l) => Math.round(l * 10) / 10), node: process.version }, records: RECORDS, ops: OPS, concurrency: CONCURRENCY, results }, null, 2)}\n`);
