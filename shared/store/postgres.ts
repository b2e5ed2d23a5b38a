import pg from 'pg';
import type { Row, SqlEngine, SqlExecutor, SqlValue } from './engine.ts';

const INT8_OID = 20;
// Millisecond timestamps are BIGINT; they fit a JavaScript number exactly (pg hands them over as strings).
const types = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') => (oid === INT8_OID ? (value: string) => Number(value) : pg.types.getTypeParser(oid, format))) as typeof pg.types.getTypeParser,
};

/** Any constant: the advisory lock that serialises migrations of concurrent start-ups. */
const MIGRATION_LOCK = 7_346_501;

/**
 * PostgreSQL through node-postgres (`pg`), a small pool per process. Every query is bounded by
 * `timeoutMs` on the client side and by `statement_timeout` on the server, so a store that
 * hangs makes a caller fail over quickly instead of holding a request.
 */
/**
 * The password (store.passwordFile) as part of the connection string: node-postgres lets what
 * it parses from `connectionString` replace its other options, so a separate `password` option
 * was dropped (the URL has none) and every password login failed.
 */
function withPassword(url: string, password: string | undefined): string {
  if (password === undefined) return url;
  const parsed = new URL(url);
  // Percent-encoded by hand: the URL setter leaves `%` as it is, and node-postgres decodes it.
  parsed.password = encodeURIComponent(password);
  return parsed.toString();
}

export class PostgresEngine implements SqlEngine {
  readonly kind = 'postgres';
  readonly #pool: pg.Pool;

  constructor(url: string, options: { timeoutMs: number; password?: string | undefined; maxConnections?: number; onError?: (err: Error) => void }) {
    this.#pool = new pg.Pool({
      connectionString: withPassword(url, options.password),
      max: options.maxConnections ?? 10,
      connectionTimeoutMillis: options.timeoutMs,
      query_timeout: options.timeoutMs,
      statement_timeout: options.timeoutMs,
      idleTimeoutMillis: 30_000,
      types,
      application_name: 'hedwig',
    });
    // An idle connection that breaks (server restart) is reported here; without a listener it would crash the process.
    this.#pool.on('error', (err) => options.onError?.(err));
  }

  async all<T extends Row = Row>(sql: string, params: readonly SqlValue[] = []): Promise<T[]> {
    return (await this.#pool.query(sql, params as SqlValue[])).rows as T[];
  }

  async run(sql: string, params: readonly SqlValue[] = []): Promise<number> {
    return (await this.#pool.query(sql, params as SqlValue[])).rowCount ?? 0;
  }

  transaction<T>(body: (tx: SqlExecutor) => Promise<T>): Promise<T> {
    return this.#inTransaction(body, false);
  }

  exclusive<T>(body: (tx: SqlExecutor) => Promise<T>): Promise<T> {
    return this.#inTransaction(body, true);
  }

  async close(): Promise<void> {
    await this.#pool.end();
  }

  async #inTransaction<T>(body: (tx: SqlExecutor) => Promise<T>, locked: boolean): Promise<T> {
    const client = await this.#pool.connect();
    const tx: SqlExecutor = {
      all: async <R extends Row>(sql: string, params: readonly SqlValue[] = []) => (await client.query(sql, params as SqlValue[])).rows as R[],
      run: async (sql, params = []) => (await client.query(sql, params as SqlValue[])).rowCount ?? 0,
    };
    let broken: unknown;
    try {
      await client.query('BEGIN');
      if (locked) await client.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK]);
      const result = await body(tx);
      await client.query('COMMIT');
      return result;
    } catch (err) {
      await client.query('ROLLBACK').catch((rollbackErr: unknown) => {
        broken = rollbackErr;
      });
      throw err;
    } finally {
      // A connection whose ROLLBACK failed is in an unknown state: destroy it rather than reuse it.
      client.release(broken instanceof Error ? broken : undefined);
    }
  }
}
