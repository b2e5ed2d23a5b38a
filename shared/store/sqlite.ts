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
 * node:sqlite is synchronous: statements run on the event loop. They take microseconds here;
 * a busy file (another process writing) waits at most `timeoutMs`. Every operation on a file
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
  #closed = false;

  constructor(path: string, options: { timeoutMs: number }) {
    const memory = path === ':memory:';
    if (!memory) mkdirSync(dirname(resolve(path)), { recursive: true });
    this.#file = memory ? `:memory:${Math.random()}` : resolve(path);
    this.#queue = queues.get(this.#file) ?? { tail: Promise.resolve(), users: 0 };
    this.#queue.users++;
    queues.set(this.#file, this.#queue);
    this.#db = new DatabaseSync(memory ? ':memory:' : resolve(path), { timeout: options.timeoutMs });
    if (!memory) this.#db.exec('PRAGMA journal_mode = WAL');
    this.#db.exec('PRAGMA synchronous = NORMAL');
  }

  all<T extends Row = Row>(sql: string, params: readonly SqlValue[] = []): Promise<T[]> {
    return this.#serial(() => this.#all<T>(sql, params));
  }

  run(sql: string, params: readonly SqlValue[] = []): Promise<number> {
    return this.#serial(() => this.#run(sql, params));
  }

  transaction<T>(body: (tx: SqlExecutor) => Promise<T>): Promise<T> {
    return this.#serial(() => this.#inTransaction('BEGIN', body));
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
    this.#db.exec(begin);
    try {
      const result = await body(tx);
      this.#db.exec('COMMIT');
      return result;
    } catch (err) {
      if (this.#db.isTransaction) this.#db.exec('ROLLBACK');
      throw err;
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
