import { mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import type { Row, SqlEngine, SqlExecutor, SqlValue } from './engine.ts';

/**
 * The embedded engine: Node's built-in SQLite (no native build, nothing to install). The file
 * is in WAL mode, so every process on this host that opens the same file shares it (readers
 * never block the writer); with synchronous=NORMAL a commit survives a crash of the process,
 * and the last commits before a power loss may be lost.
 *
 * node:sqlite is synchronous: statements run on the event loop. They take microseconds here.
 * A file another process is writing (the post office and the workers share one) is waited for
 * off the event loop: SQLite's own busy handler would sleep in the statement, 1, 2, 5, 10 ms
 * and more at a time, with the whole process frozen (issue 13.4: with 10 SMTP sessions the post
 * office slept there about a fifth of the time, every request in flight with it). Instead the
 * busy timeout is 0 and a statement or BEGIN that finds the file locked is tried again after a
 * short timer, for at most `timeoutMs`. Transactions start with BEGIN IMMEDIATE (every one of
 * them writes), so the lock is taken, or waited for, before the body runs and a body never
 * meets a locked file half-way (that would need the whole body again). Every operation on a file
 * goes through one queue per process (shared by every engine on that file), so an async
 * transaction body never interleaves with other statements, and a second connection of this
 * process never waits synchronously for a lock this process itself holds (that would block
 * the event loop until the busy timeout).
 */
const queues = new Map<string, { tail: Promise<unknown>; users: number }>();

export class SqliteEngine implements SqlEngine {
  readonly kind = 'sqlite';
  readonly #db: DatabaseSync;
  readonly #statements = new Map<string, StatementSync>();
  readonly #queue: { tail: Promise<unknown>; users: number };
  readonly #file: string;
  readonly #timeoutMs: number;
  #closed = false;

  constructor(path: string, options: { timeoutMs: number }) {
    const memory = path === ':memory:';
    if (!memory) mkdirSync(dirname(resolve(path)), { recursive: true });
    this.#file = memory ? `:memory:${Math.random()}` : resolve(path);
    this.#queue = queues.get(this.#file) ?? { tail: Promise.resolve(), users: 0 };
    this.#queue.users++;
    queues.set(this.#file, this.#queue);
    this.#timeoutMs = options.timeoutMs;
    // Opening waits synchronously (once, at start-up); from here on a locked file is waited for in #unlocked.
    this.#db = new DatabaseSync(memory ? ':memory:' : resolve(path), { timeout: options.timeoutMs });
    if (!memory) this.#db.exec('PRAGMA journal_mode = WAL');
    this.#db.exec('PRAGMA synchronous = NORMAL');
    this.#db.exec('PRAGMA busy_timeout = 0');
  }

  all<T extends Row = Row>(sql: string, params: readonly SqlValue[] = []): Promise<T[]> {
    return this.#serial(() => this.#unlocked(() => this.#all<T>(sql, params)));
  }

  run(sql: string, params: readonly SqlValue[] = []): Promise<number> {
    return this.#serial(() => this.#unlocked(() => this.#run(sql, params)));
  }

  transaction<T>(body: (tx: SqlExecutor) => Promise<T>): Promise<T> {
    return this.#serial(() => this.#inTransaction('BEGIN IMMEDIATE', body));
  }

  exclusive<T>(body: (tx: SqlExecutor) => Promise<T>): Promise<T> {
    // IMMEDIATE takes the write lock at once: a second process migrating waits for it.
    return this.#serial(() => this.#inTransaction('BEGIN IMMEDIATE', body));
  }

  async close(): Promise<void> {
    await this.#serial(async () => {
      if (this.#closed) return;
      this.#closed = true;
      this.#db.close();
      if (--this.#queue.users === 0) queues.delete(this.#file);
    });
  }

  async #inTransaction<T>(begin: string, body: (tx: SqlExecutor) => Promise<T>): Promise<T> {
    const tx: SqlExecutor = {
      all: async <R extends Row>(sql: string, params: readonly SqlValue[] = []) => this.#all<R>(sql, params),
      run: async (sql, params = []) => this.#run(sql, params),
    };
    await this.#unlocked(() => this.#db.exec(begin));
    try {
      const result = await body(tx);
      this.#db.exec('COMMIT');
      return result;
    } catch (err) {
      if (this.#db.isTransaction) this.#db.exec('ROLLBACK');
      throw err;
    }
  }

  /**
   * Runs `attempt` (one statement outside a transaction, or a BEGIN) until it does not find the
   * file locked by another process, for at most timeoutMs: the first retry after the next turn of
   * the event loop, then after 1, 2, 4 ms, at most 8 ms apart. A locked statement changed nothing,
   * so trying it again is safe. The last error is thrown as SQLite gave it ("database is locked").
   */
  async #unlocked<T>(attempt: () => T): Promise<T> {
    const deadline = Date.now() + this.#timeoutMs;
    for (let retry = 0; ; retry++) {
      try {
        return attempt();
      } catch (err) {
        if (!isBusy(err) || Date.now() >= deadline) throw err;
      }
      await new Promise((r) => (retry === 0 ? setImmediate(r) : setTimeout(r, Math.min(8, 2 ** (retry - 1)))));
    }
  }

  #serial<T>(operation: () => Promise<T> | T): Promise<T> {
    const next = this.#queue.tail.then(() => {
      if (this.#closed) throw new Error('the store is closed');
      return operation();
    });
    this.#queue.tail = next.catch(() => undefined);
    return next;
  }

  #statement(sql: string): StatementSync {
    let statement = this.#statements.get(sql);
    if (!statement) {
      statement = this.#db.prepare(sql.replace(/\$(\d+)/g, '?$1'));
      this.#statements.set(sql, statement);
    }
    return statement;
  }

  #all<T extends Row>(sql: string, params: readonly SqlValue[]): T[] {
    return this.#statement(sql).all(...params) as T[];
  }

  #run(sql: string, params: readonly SqlValue[]): number {
    return Number(this.#statement(sql).run(...params).changes);
  }
}

/** SQLITE_BUSY and its extended codes (BUSY_RECOVERY, BUSY_SNAPSHOT, BUSY_TIMEOUT): the file is locked by another connection. */
function isBusy(err: unknown): boolean {
  const errcode = (err as { errcode?: unknown } | null)?.errcode;
  return typeof errcode === 'number' && (errcode & 0xff) === 5;
}
