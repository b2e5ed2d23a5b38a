import type { SqlEngine, SqlExecutor } from './engine.ts';

/**
 * The store's schema, one SQL text for both engines (SQLite and PostgreSQL understand every
 * statement below the same way). Applied in order at start-up by whichever process starts
 * first (under a lock), recorded in hedwig_schema_migrations. A released migration is never
 * edited: a change is a new entry at the end.
 *
 * Times are milliseconds since the epoch (BIGINT). Table names carry a `hedwig_` prefix so
 * the store can live in a database shared with other applications.
 */
export interface Migration {
  version: number;
  name: string;
  statements: string[];
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'messages, recipients, idempotency keys, first attempts, suppressions',
    statements: [
      // One row per message the post office queued (or a worker reported): what `hedwig status`,
      // GET /v1/messages/:id and `hedwig queue list` read. state: queued | deferred | done | deleted;
      // server/job_id: the beanstalkd job carrying it now; expires_at: set once it left the queue.
      `CREATE TABLE hedwig_messages (
        id TEXT PRIMARY KEY,
        fqdn TEXT NOT NULL,
        mailfrom TEXT NOT NULL,
        rcpt_count INTEGER NOT NULL,
        size BIGINT,
        received_at BIGINT NOT NULL,
        state TEXT NOT NULL,
        held INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_attempt_at BIGINT,
        next_attempt_at BIGINT,
        last_response TEXT,
        server TEXT,
        job_id TEXT,
        updated_at BIGINT NOT NULL,
        expires_at BIGINT
      )`,
      'CREATE INDEX hedwig_messages_active ON hedwig_messages (state, received_at)',
      'CREATE INDEX hedwig_messages_expiry ON hedwig_messages (expires_at)',
      // state: queued | deferred | delivered | bounced | expired | deleted
      `CREATE TABLE hedwig_recipients (
        message_id TEXT NOT NULL,
        recipient TEXT NOT NULL,
        domain TEXT NOT NULL,
        state TEXT NOT NULL,
        response_code INTEGER,
        enhanced_code TEXT,
        response TEXT,
        mx TEXT,
        at BIGINT,
        PRIMARY KEY (message_id, recipient)
      )`,
      'CREATE INDEX hedwig_recipients_domain ON hedwig_recipients (domain, message_id)',
      // state: pending (its owner is putting it) | open (the put may or may not have landed:
      // whoever comes next puts again, with the same message id) | queued.
      `CREATE TABLE hedwig_idempotency (
        fqdn TEXT NOT NULL,
        idem_key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        message_id TEXT NOT NULL,
        received_at BIGINT NOT NULL,
        state TEXT NOT NULL,
        owner TEXT NOT NULL,
        claimed_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        PRIMARY KEY (fqdn, idem_key)
      )`,
      'CREATE INDEX hedwig_idempotency_expiry ON hedwig_idempotency (expires_at)',
      // The job that made the first delivery attempt of a message (id + receivedAt): a second
      // copy of the same job (a put repeated after an ambiguous answer) is deleted, not delivered.
      `CREATE TABLE hedwig_first_attempts (
        message_id TEXT NOT NULL,
        received_at BIGINT NOT NULL,
        job TEXT NOT NULL,
        at BIGINT NOT NULL,
        PRIMARY KEY (message_id, received_at)
      )`,
      'CREATE INDEX hedwig_first_attempts_at ON hedwig_first_attempts (at)',
      // source: bounce (added from a permanent failure, see suppression-rules.ts) | manual.
      // expires_at NULL: until removed.
      `CREATE TABLE hedwig_suppressions (
        address TEXT PRIMARY KEY,
        domain TEXT NOT NULL,
        source TEXT NOT NULL,
        response_code INTEGER,
        enhanced_code TEXT,
        response TEXT,
        message_id TEXT,
        created_at BIGINT NOT NULL,
        expires_at BIGINT
      )`,
      'CREATE INDEX hedwig_suppressions_domain ON hedwig_suppressions (domain)',
    ],
  },
];

const LEDGER = 'CREATE TABLE IF NOT EXISTS hedwig_schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)';

/** Applies the migrations this database does not have yet; resolves with the versions applied now. */
export async function migrate(engine: SqlEngine, now: number = Date.now(), migrations: readonly Migration[] = MIGRATIONS): Promise<number[]> {
  return engine.exclusive(async (tx: SqlExecutor) => {
    await tx.run(LEDGER);
    const done = new Set((await tx.all<{ version: number }>('SELECT version FROM hedwig_schema_migrations')).map((r) => Number(r.version)));
    const newest = Math.max(0, ...done);
    const known = Math.max(0, ...migrations.map((m) => m.version));
    if (newest > known) {
      throw new Error(`the store's schema is version ${newest}, newer than this hedwig knows (${known}): upgrade hedwig, or point it at another database`);
    }
    const applied: number[] = [];
    for (const migration of migrations) {
      if (done.has(migration.version)) continue;
      for (const statement of migration.statements) await tx.run(statement);
      await tx.run('INSERT INTO hedwig_schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)', [migration.version, migration.name, now]);
      applied.push(migration.version);
    }
    return applied;
  });
}
