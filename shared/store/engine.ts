/**
 * The little SQL the store needs, over two engines: node:sqlite (embedded) and PostgreSQL
 * (pg). Statements are written once, with PostgreSQL's `$1` placeholders and the SQL both
 * engines understand (INSERT ... ON CONFLICT, RETURNING, BIGINT, TEXT); the SQLite engine
 * rewrites `$n` to its own `?n`.
 */
export type SqlValue = string | number | null;
export type Row = Record<string, SqlValue>;

export interface SqlExecutor {
  all<T extends Row = Row>(sql: string, params?: readonly SqlValue[]): Promise<T[]>;
  /** Resolves with the number of rows changed. */
  run(sql: string, params?: readonly SqlValue[]): Promise<number>;
}

export interface SqlEngine extends SqlExecutor {
  readonly kind: 'sqlite' | 'postgres';
  /** BEGIN ... COMMIT around `body`, ROLLBACK when it throws. Nothing else runs on the transaction's connection meanwhile. */
  transaction<T>(body: (tx: SqlExecutor) => Promise<T>): Promise<T>;
  /** Like transaction(), holding a lock that makes concurrent start-ups migrate one after the other. */
  exclusive<T>(body: (tx: SqlExecutor) => Promise<T>): Promise<T>;
  close(): Promise<void>;
}
