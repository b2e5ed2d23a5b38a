import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { DatabaseSync } from 'node:sqlite';
import { SqliteEngine } from '../../shared/store/sqlite.ts';

/**
 * The SQLite engine waits for a file another connection holds locked off the event loop (issue
 * 13.4: SQLite's busy handler slept in the statement with the whole process frozen). Another
 * process is played by a second connection of this one, outside the engine: it takes the write
 * lock, and a timer of this process releases it, which a frozen event loop could never run.
 */
const dir = mkdtempSync(join(tmpdir(), 'hedwig-sqlite-busy-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let files = 0;

async function setUp(timeoutMs: number): Promise<{ engine: SqliteEngine; other: DatabaseSync }> {
  const file = join(dir, `busy-${++files}.db`);
  const engine = new SqliteEngine(file, { timeoutMs });
  await engine.run('CREATE TABLE t (x INTEGER)');
  const other = new DatabaseSync(file, { timeout: 0 });
  return { engine, other };
}

/** Counts timer ticks every 5 ms until stopped: how many ran shows whether the event loop was free. */
function ticker(): { stop(): number } {
  let ticks = 0;
  const timer = setInterval(() => ticks++, 5);
  return {
    stop() {
      clearInterval(timer);
      return ticks;
    },
  };
}

describe('SQLite engine: a file locked by another connection', () => {
  it('waits for the lock with the event loop free, and then runs the statement', async () => {
    const { engine, other } = await setUp(5_000);
    other.exec('BEGIN IMMEDIATE');
    other.exec('INSERT INTO t VALUES (1)');
    const started = Date.now();
    setTimeout(() => other.exec('COMMIT'), 200);
    const ticks = ticker();
    const changed = await engine.run('INSERT INTO t VALUES (2)');
    const ran = ticks.stop();
    assert.equal(changed, 1);
    assert.ok(Date.now() - started >= 190, 'the insert waited for the other connection to commit');
    // 200 ms at 5 ms: about 40 ticks; a busy handler sleeping in the statement lets none run.
    assert.ok(ran >= 15, `the event loop ran ${ran} timer ticks while the statement waited`);
    assert.deepEqual((await engine.all('SELECT x FROM t ORDER BY x')).map((r) => r.x), [1, 2]);
    other.close();
    await engine.close();
  });

  it('takes the write lock at BEGIN, so a transaction body runs only once it holds it', async () => {
    const { engine, other } = await setUp(5_000);
    other.exec('BEGIN IMMEDIATE');
    let bodyRuns = 0;
    let releasedAt = 0;
    setTimeout(() => {
      releasedAt = Date.now();
      other.exec('ROLLBACK');
    }, 150);
    const ticks = ticker();
    const result = await engine.transaction(async (tx) => {
      bodyRuns++;
      assert.ok(releasedAt > 0, 'the body ran while the other connection held the write lock');
      await tx.run('INSERT INTO t VALUES (3)');
      return tx.all('SELECT count(*) AS n FROM t');
    });
    const ran = ticks.stop();
    assert.equal(bodyRuns, 1);
    assert.equal(Number(result[0]!.n), 1);
    assert.ok(ran >= 10, `the event loop ran ${ran} timer ticks while BEGIN waited`);
    other.close();
    await engine.close();
  });

  it('gives up after timeoutMs with SQLite\'s "database is locked", and works again once the lock is gone', async () => {
    const { engine, other } = await setUp(300);
    other.exec('BEGIN IMMEDIATE');
    const started = Date.now();
    await assert.rejects(engine.run('INSERT INTO t VALUES (4)'), (err: Error & { errcode?: number }) => {
      assert.equal(err.errcode, 5);
      assert.match(err.message, /database is locked/);
      return true;
    });
    const waited = Date.now() - started;
    assert.ok(waited >= 290 && waited < 2_000, `waited ${waited} ms for a timeout of 300 ms`);
    other.exec('ROLLBACK');
    assert.equal(await engine.run('INSERT INTO t VALUES (5)'), 1);
    other.close();
    await engine.close();
  });
});
