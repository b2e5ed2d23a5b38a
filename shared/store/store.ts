import { domainOf } from '../address.ts';
import { HedwigError } from '../errors.ts';
import type { StatusUpdate } from '../message-status.ts';
import type { Row, SqlEngine, SqlExecutor, SqlValue } from './engine.ts';
import { suppressionRuleFor } from './suppression-rules.ts';

/**
 * The shared state of a hedwig installation, in one SQL database that every post office,
 * worker and the CLI open (shared/store/open.ts): idempotency keys, the state and history of
 * every message, the first-attempt ledger that removes duplicate jobs, and the suppression
 * list. Each method is one short statement or transaction; callers treat any failure as
 * "the store is unavailable" and go on without it (see the README for what degrades).
 *
 * Longer than 300 lines on purpose: every statement against the shared schema is in this one
 * class, so a reader sees each query that touches a table in one place, and the transactions
 * that span tables (a status update changes messages, recipients and the suppression list)
 * stay whole. The engines' dialects and connections are sqlite.ts and postgres.ts, the schema
 * migrations.ts, the suppression rules suppression-rules.ts.
 */

export interface JobRef {
  server: string;
  jobId: string;
}

export type KeyState = 'pending' | 'open' | 'queued';

export interface KeyRecord {
  fingerprint: string;
  messageId: string;
  receivedAt: number;
  state: KeyState;
  owner: string;
  claimedAt: number;
}

export type KeyClaim = { claimed: true } | { claimed: false; existing: KeyRecord };

/** A message the post office put into beanstalkd. */
export interface QueuedRecord {
  id: string;
  fqdn: string;
  mailfrom: string;
  rcpttos: readonly string[];
  receivedAt: number;
  size: number;
  ref: JobRef;
  /** The idempotency key it was claimed under: marked queued in the same transaction. */
  key?: { fqdn: string; key: string };
  /** Recipients of the submission refused because they are suppressed (not in rcpttos). */
  suppressed?: readonly string[];
}

export type RecipientState = 'queued' | 'deferred' | 'delivered' | 'bounced' | 'expired' | 'deleted' | 'suppressed';
export type MessageState = 'queued' | 'deferred' | 'done' | 'deleted';

export interface RecipientRecord {
  recipient: string;
  state: RecipientState;
  responseCode: number | null;
  enhancedCode: string | null;
  response: string | null;
  mx: string | null;
  at: number | null;
}

export interface MessageRecord {
  id: string;
  fqdn: string;
  mailfrom: string;
  rcptCount: number;
  size: number | null;
  receivedAt: number;
  state: MessageState;
  held: boolean;
  attempts: number;
  lastAttemptAt: number | null;
  nextAttemptAt: number | null;
  lastResponse: string | null;
  job: JobRef | null;
  updatedAt: number;
  expiresAt: number | null;
  recipients: RecipientRecord[];
}

export interface ActiveFilter {
  /** Recipient domain (of a recipient still queued), any case. */
  domain?: string;
  sender?: string;
  recipient?: string;
  /** received_at at or before this (ms). */
  receivedBefore?: number;
  held?: boolean;
  /** Only these message ids. */
  ids?: readonly string[];
  limit?: number;
}

export interface SuppressionEntry {
  address: string;
  source: 'bounce' | 'manual';
  responseCode: number | null;
  enhancedCode: string | null;
  response: string | null;
  messageId: string | null;
  createdAt: number;
  expiresAt: number | null;
}

export interface SuppressionPolicy {
  enabled: boolean;
  ttlSeconds: number;
}

export interface AppliedStatus {
  /** Recipients this update put on the suppression list. */
  suppressed: SuppressionEntry[];
}

const ACTIVE_STATES = "('queued', 'deferred')";
/** Rows per multi-row INSERT: far below both engines' limits on bound parameters. */
const ROWS_PER_INSERT = 500;

function num(value: SqlValue | undefined): number | null {
  return value === null || value === undefined ? null : Number(value);
}
function str(value: SqlValue | undefined): string | null {
  return value === null || value === undefined ? null : String(value);
}

function messageFrom(row: Row): Omit<MessageRecord, 'recipients'> {
  const server = str(row.server);
  const jobId = str(row.job_id);
  return {
    id: String(row.id),
    fqdn: String(row.fqdn),
    mailfrom: String(row.mailfrom),
    rcptCount: Number(row.rcpt_count),
    size: num(row.size),
    receivedAt: Number(row.received_at),
    state: String(row.state) as MessageState,
    held: Number(row.held) === 1,
    attempts: Number(row.attempts),
    lastAttemptAt: num(row.last_attempt_at),
    nextAttemptAt: num(row.next_attempt_at),
    lastResponse: str(row.last_response),
    job: server !== null && jobId !== null ? { server, jobId } : null,
    updatedAt: Number(row.updated_at),
    expiresAt: num(row.expires_at),
  };
}

function recipientFrom(row: Row): RecipientRecord {
  return {
    recipient: String(row.recipient),
    state: String(row.state) as RecipientState,
    responseCode: num(row.response_code),
    enhancedCode: str(row.enhanced_code),
    response: str(row.response),
    mx: str(row.mx),
    at: num(row.at),
  };
}

function suppressionFrom(row: Row): SuppressionEntry {
  return {
    address: String(row.address),
    source: String(row.source) as SuppressionEntry['source'],
    responseCode: num(row.response_code),
    enhancedCode: str(row.enhanced_code),
    response: str(row.response),
    messageId: str(row.message_id),
    createdAt: Number(row.created_at),
    expiresAt: num(row.expires_at),
  };
}

/** `($1, $2, $3), ($4, $5, $6)` for `rows` rows of `width` values, numbered from `start`. */
function tuples(rows: number, width: number, start = 1): string {
  return Array.from({ length: rows }, (_, r) => `(${Array.from({ length: width }, (_, c) => `$${start + r * width + c}`).join(', ')})`).join(', ');
}

async function insertRows(tx: SqlExecutor, head: string, tail: string, rows: SqlValue[][]): Promise<void> {
  for (let i = 0; i < rows.length; i += ROWS_PER_INSERT) {
    const chunk = rows.slice(i, i + ROWS_PER_INSERT);
    await tx.run(`${head} VALUES ${tuples(chunk.length, chunk[0]!.length)} ${tail}`, chunk.flat());
  }
}

export function normalizeAddress(address: string): string {
  return address.trim().toLowerCase();
}

export class Store {
  readonly engine: SqlEngine;
  readonly historyMs: number;

  constructor(engine: SqlEngine, options: { historySeconds: number }) {
    this.engine = engine;
    this.historyMs = options.historySeconds * 1000;
  }

  get kind(): SqlEngine['kind'] {
    return this.engine.kind;
  }

  close(): Promise<void> {
    return this.engine.close();
  }

  /** A cheap round trip: is the store answering? */
  async ping(): Promise<void> {
    await this.engine.all('SELECT 1 AS ok');
  }

  // --- idempotency keys ----------------------------------------------------------------

  /**
   * Claims (fqdn, key) for a new message, unless a live claim exists: an expired one is taken
   * over in the same statement. Resolves with the existing claim otherwise.
   */
  async claimKey(claim: { fqdn: string; key: string; fingerprint: string; messageId: string; receivedAt: number; owner: string; now: number; ttlMs: number }): Promise<KeyClaim> {
    const rows = await this.engine.all(
      `INSERT INTO hedwig_idempotency (fqdn, idem_key, fingerprint, message_id, received_at, state, owner, claimed_at, expires_at)
       VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8)
       ON CONFLICT (fqdn, idem_key) DO UPDATE SET fingerprint = excluded.fingerprint, message_id = excluded.message_id,
         received_at = excluded.received_at, state = 'pending', owner = excluded.owner, claimed_at = excluded.claimed_at, expires_at = excluded.expires_at
       WHERE hedwig_idempotency.expires_at <= excluded.claimed_at
       RETURNING message_id`,
      [claim.fqdn, claim.key, claim.fingerprint, claim.messageId, claim.receivedAt, claim.owner, claim.now, claim.now + claim.ttlMs],
    );
    if (rows.length > 0) return { claimed: true };
    const existing = await this.readKey(claim.fqdn, claim.key);
    // Deleted between the two statements (pruned, at its expiry): claim again.
    if (!existing) return this.claimKey(claim);
    return { claimed: false, existing };
  }

  async readKey(fqdn: string, key: string): Promise<KeyRecord | undefined> {
    const [row] = await this.engine.all('SELECT fingerprint, message_id, received_at, state, owner, claimed_at FROM hedwig_idempotency WHERE fqdn = $1 AND idem_key = $2', [fqdn, key]);
    if (!row) return undefined;
    return {
      fingerprint: String(row.fingerprint),
      messageId: String(row.message_id),
      receivedAt: Number(row.received_at),
      state: String(row.state) as KeyState,
      owner: String(row.owner),
      claimedAt: Number(row.claimed_at),
    };
  }

  /** Takes over a claim that is open, or pending with an owner that stopped answering; false when someone else changed it first. */
  async takeOverKey(fqdn: string, key: string, from: KeyRecord, owner: string, now: number): Promise<boolean> {
    const changed = await this.engine.run(
      "UPDATE hedwig_idempotency SET state = 'pending', owner = $1, claimed_at = $2 WHERE fqdn = $3 AND idem_key = $4 AND owner = $5 AND claimed_at = $6 AND state <> 'queued'",
      [owner, now, fqdn, key, from.owner, from.claimedAt],
    );
    return changed === 1;
  }

  /** The put failed in a way that leaves it unknown whether the job landed: the next request with the key puts again (same message id). */
  async openKey(fqdn: string, key: string, owner: string): Promise<void> {
    await this.engine.run("UPDATE hedwig_idempotency SET state = 'open' WHERE fqdn = $1 AND idem_key = $2 AND owner = $3 AND state = 'pending'", [fqdn, key, owner]);
  }

  // --- messages ------------------------------------------------------------------------

  /**
   * Messages put into beanstalkd, in one transaction. A row a worker's status update created
   * first (a fast first attempt) keeps what the update said; only a still untried message
   * takes the job reference.
   */
  async recordQueued(records: readonly QueuedRecord[], now: number): Promise<void> {
    if (records.length === 0) return;
    await this.engine.transaction(async (tx) => {
      await insertRows(
        tx,
        'INSERT INTO hedwig_messages (id, fqdn, mailfrom, rcpt_count, size, received_at, state, attempts, server, job_id, updated_at)',
        `ON CONFLICT (id) DO UPDATE SET server = excluded.server, job_id = excluded.job_id, updated_at = excluded.updated_at
         WHERE hedwig_messages.attempts = 0 AND hedwig_messages.state = 'queued'`,
        records.map((r) => [r.id, r.fqdn, r.mailfrom, r.rcpttos.length, r.size, r.receivedAt, 'queued', 0, r.ref.server, r.ref.jobId, now]),
      );
      const recipients = records.flatMap((r) => [
        ...[...new Set(r.rcpttos)].map((rcpt) => [r.id, rcpt, domainOf(rcpt).toLowerCase(), 'queued']),
        ...[...new Set(r.suppressed ?? [])].map((rcpt) => [r.id, rcpt, domainOf(rcpt).toLowerCase(), 'suppressed']),
      ]);
      await insertRows(tx, 'INSERT INTO hedwig_recipients (message_id, recipient, domain, state)', 'ON CONFLICT (message_id, recipient) DO NOTHING', recipients);
      for (const r of records) {
        if (r.key) await tx.run("UPDATE hedwig_idempotency SET state = 'queued' WHERE fqdn = $1 AND idem_key = $2 AND message_id = $3", [r.key.fqdn, r.key.key, r.id]);
      }
    });
  }

  /**
   * A worker's report of one settled attempt: the message's state, each recipient's latest
   * reply, and suppressions for recipients that bounced with a "no such address" reply. Reports
   * can arrive out of order (several workers); an older one never overwrites a newer one.
   */
  async applyStatus(update: StatusUpdate, now: number, policy: SuppressionPolicy): Promise<AppliedStatus> {
    return this.engine.transaction(async (tx) => {
      const done = update.state === 'done';
      const lastResponse = update.recipients.at(-1)?.response ?? null;
      await tx.run(
        `INSERT INTO hedwig_messages (id, fqdn, mailfrom, rcpt_count, received_at, state, attempts, last_attempt_at, next_attempt_at, last_response, server, job_id, updated_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
         ON CONFLICT (id) DO UPDATE SET state = excluded.state, attempts = excluded.attempts, last_attempt_at = excluded.last_attempt_at,
           next_attempt_at = excluded.next_attempt_at, last_response = excluded.last_response, server = excluded.server, job_id = excluded.job_id,
           updated_at = excluded.updated_at, expires_at = excluded.expires_at
         WHERE hedwig_messages.state <> 'deleted' AND (hedwig_messages.last_attempt_at IS NULL OR hedwig_messages.last_attempt_at <= excluded.last_attempt_at)`,
        [
          update.messageId,
          update.fqdn,
          update.mailfrom ?? '',
          update.recipients.length,
          update.receivedAt,
          done ? 'done' : 'deferred',
          update.attempts,
          update.at,
          done ? null : (update.nextAttemptAt ?? null),
          lastResponse,
          done ? null : (update.retry?.server ?? null),
          done ? null : (update.retry?.jobId ?? null),
          now,
          done ? now + this.historyMs : null,
        ],
      );
      await insertRows(
        tx,
        'INSERT INTO hedwig_recipients (message_id, recipient, domain, state, response_code, enhanced_code, response, mx, at)',
        `ON CONFLICT (message_id, recipient) DO UPDATE SET state = excluded.state, response_code = excluded.response_code, enhanced_code = excluded.enhanced_code,
           response = excluded.response, mx = excluded.mx, at = excluded.at
         WHERE hedwig_recipients.state <> 'deleted' AND (hedwig_recipients.at IS NULL OR hedwig_recipients.at <= excluded.at)`,
        update.recipients.map((r) => [update.messageId, r.recipient, domainOf(r.recipient).toLowerCase(), r.state, r.responseCode ?? null, r.enhancedCode ?? null, r.response, r.mx ?? null, r.at]),
      );
      const suppressed: SuppressionEntry[] = [];
      if (policy.enabled) {
        for (const r of update.recipients) {
          if (r.state !== 'bounced' || !suppressionRuleFor(r)) continue;
          const entry: SuppressionEntry = {
            address: normalizeAddress(r.recipient),
            source: 'bounce',
            responseCode: r.responseCode ?? null,
            enhancedCode: r.enhancedCode ?? null,
            response: r.response,
            messageId: update.messageId,
            createdAt: now,
            expiresAt: now + policy.ttlSeconds * 1000,
          };
          // A manual entry (possibly without expiry) stays as the operator made it.
          if (await this.#putSuppression(tx, entry, "WHERE hedwig_suppressions.source = 'bounce'")) suppressed.push(entry);
        }
      }
      return { suppressed };
    });
  }

  async getMessage(id: string): Promise<MessageRecord | undefined> {
    const [row] = await this.engine.all('SELECT * FROM hedwig_messages WHERE id = $1', [id]);
    if (!row) return undefined;
    const recipients = await this.engine.all('SELECT * FROM hedwig_recipients WHERE message_id = $1 ORDER BY recipient', [id]);
    return { ...messageFrom(row), recipients: recipients.map(recipientFrom) };
  }

  /** Messages still in the queue (queued or deferred, held or not), oldest first, with the recipients still to be tried. */
  async listActive(filter: ActiveFilter = {}): Promise<MessageRecord[]> {
    const where = [`m.state IN ${ACTIVE_STATES}`];
    const params: SqlValue[] = [];
    const param = (value: SqlValue) => {
      params.push(value);
      return `$${params.length}`;
    };
    if (filter.sender !== undefined) where.push(`lower(m.mailfrom) = ${param(filter.sender.toLowerCase())}`);
    if (filter.receivedBefore !== undefined) where.push(`m.received_at <= ${param(filter.receivedBefore)}`);
    if (filter.held !== undefined) where.push(`m.held = ${param(filter.held ? 1 : 0)}`);
    if (filter.domain !== undefined) {
      where.push(`EXISTS (SELECT 1 FROM hedwig_recipients d WHERE d.message_id = m.id AND d.domain = ${param(filter.domain.toLowerCase())} AND d.state IN ${ACTIVE_STATES})`);
    }
    if (filter.recipient !== undefined) {
      where.push(`EXISTS (SELECT 1 FROM hedwig_recipients d WHERE d.message_id = m.id AND lower(d.recipient) = ${param(filter.recipient.toLowerCase())} AND d.state IN ${ACTIVE_STATES})`);
    }
    if (filter.ids !== undefined) {
      if (filter.ids.length === 0) return [];
      where.push(`m.id IN (${filter.ids.map((id) => param(id)).join(', ')})`);
    }
    const limit = filter.limit !== undefined ? ` LIMIT ${param(filter.limit)}` : '';
    const messages = await this.engine.all(`SELECT m.* FROM hedwig_messages m WHERE ${where.join(' AND ')} ORDER BY m.received_at, m.id${limit}`, params);
    if (messages.length === 0) return [];
    // The recipients of the same selection in one pass, grouped here (string_agg and
    // group_concat differ between the engines).
    const recipients = await this.engine.all(
      `SELECT r.* FROM hedwig_recipients r JOIN (SELECT m.id FROM hedwig_messages m WHERE ${where.join(' AND ')} ORDER BY m.received_at, m.id${limit}) s ON s.id = r.message_id
       WHERE r.state IN ${ACTIVE_STATES} ORDER BY r.message_id, r.recipient`,
      params,
    );
    const byMessage = new Map<string, RecipientRecord[]>();
    for (const row of recipients) {
      const list = byMessage.get(String(row.message_id));
      if (list) list.push(recipientFrom(row));
      else byMessage.set(String(row.message_id), [recipientFrom(row)]);
    }
    return messages.map((row) => ({ ...messageFrom(row), recipients: byMessage.get(String(row.id)) ?? [] }));
  }

  async setHeld(ids: readonly string[], held: boolean, now: number): Promise<number> {
    let changed = 0;
    for (let i = 0; i < ids.length; i += ROWS_PER_INSERT) {
      const chunk = ids.slice(i, i + ROWS_PER_INSERT);
      changed += await this.engine.run(`UPDATE hedwig_messages SET held = $1, updated_at = $2 WHERE id IN (${chunk.map((_, j) => `$${j + 3}`).join(', ')})`, [held ? 1 : 0, now, ...chunk]);
    }
    return changed;
  }

  /** An operator removed the message from the queue (`hedwig queue delete`); kept in the history like a delivered one. */
  async markDeleted(id: string, now: number, note: string): Promise<void> {
    await this.engine.transaction(async (tx) => {
      await tx.run(
        "UPDATE hedwig_messages SET state = 'deleted', held = 0, server = NULL, job_id = NULL, next_attempt_at = NULL, last_response = $1, updated_at = $2, expires_at = $3 WHERE id = $4",
        [note, now, now + this.historyMs, id],
      );
      await tx.run(`UPDATE hedwig_recipients SET state = 'deleted', response = $1, at = $2 WHERE message_id = $3 AND state IN ${ACTIVE_STATES}`, [note, now, id]);
    });
  }

  // --- duplicate jobs ------------------------------------------------------------------

  /**
   * Called by a worker before the first attempt of a message (attempts 0): the first job to
   * ask owns the message; any other job with the same message id and receivedAt is a copy
   * (a put repeated after an ambiguous answer) and must not be delivered. The same job asking
   * again (its worker died, the job came back) is still the owner.
   */
  async firstAttempt(messageId: string, receivedAt: number, job: JobRef, now: number): Promise<'first' | 'duplicate'> {
    const name = `${job.server}/${job.jobId}`;
    await this.engine.run('INSERT INTO hedwig_first_attempts (message_id, received_at, job, at) VALUES ($1, $2, $3, $4) ON CONFLICT (message_id, received_at) DO NOTHING', [messageId, receivedAt, name, now]);
    const [row] = await this.engine.all('SELECT job FROM hedwig_first_attempts WHERE message_id = $1 AND received_at = $2', [messageId, receivedAt]);
    return !row || String(row.job) === name ? 'first' : 'duplicate';
  }

  // --- suppression list ----------------------------------------------------------------

  /** Entries in force (not expired) for any of `addresses`. */
  async suppressed(addresses: readonly string[], now: number): Promise<SuppressionEntry[]> {
    const wanted = [...new Set(addresses.map(normalizeAddress))];
    if (wanted.length === 0) return [];
    const rows = await this.engine.all(
      `SELECT * FROM hedwig_suppressions WHERE address IN (${wanted.map((_, i) => `$${i + 2}`).join(', ')}) AND (expires_at IS NULL OR expires_at > $1)`,
      [now, ...wanted],
    );
    return rows.map(suppressionFrom);
  }

  async suppress(entry: SuppressionEntry): Promise<void> {
    await this.#putSuppression(this.engine, { ...entry, address: normalizeAddress(entry.address) }, '');
  }

  async unsuppress(address: string): Promise<boolean> {
    return (await this.engine.run('DELETE FROM hedwig_suppressions WHERE address = $1', [normalizeAddress(address)])) > 0;
  }

  async listSuppressions(filter: { domain?: string; source?: SuppressionEntry['source']; limit?: number }, now: number): Promise<SuppressionEntry[]> {
    const where = ['(expires_at IS NULL OR expires_at > $1)'];
    const params: SqlValue[] = [now];
    if (filter.domain !== undefined) {
      params.push(filter.domain.toLowerCase());
      where.push(`domain = $${params.length}`);
    }
    if (filter.source !== undefined) {
      params.push(filter.source);
      where.push(`source = $${params.length}`);
    }
    let limit = '';
    if (filter.limit !== undefined) {
      params.push(filter.limit);
      limit = ` LIMIT $${params.length}`;
    }
    return (await this.engine.all(`SELECT * FROM hedwig_suppressions WHERE ${where.join(' AND ')} ORDER BY created_at, address${limit}`, params)).map(suppressionFrom);
  }

  async #putSuppression(tx: SqlExecutor, entry: SuppressionEntry, condition: string): Promise<boolean> {
    const rows = await tx.all(
      `INSERT INTO hedwig_suppressions (address, domain, source, response_code, enhanced_code, response, message_id, created_at, expires_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
       ON CONFLICT (address) DO UPDATE SET source = excluded.source, response_code = excluded.response_code, enhanced_code = excluded.enhanced_code,
         response = excluded.response, message_id = excluded.message_id, created_at = excluded.created_at, expires_at = excluded.expires_at
       ${condition}
       RETURNING address`,
      [entry.address, domainOf(entry.address).toLowerCase(), entry.source, entry.responseCode, entry.enhancedCode, entry.response, entry.messageId, entry.createdAt, entry.expiresAt],
    );
    return rows.length > 0;
  }

  // --- retention -----------------------------------------------------------------------

  /** Deletes what outlived its retention, a batch at a time; resolves with the rows removed per table. */
  async prune(now: number, options: { firstAttemptMs: number; batch?: number } = { firstAttemptMs: 0 }): Promise<Record<string, number>> {
    const batch = options.batch ?? 1000;
    const removed = { messages: 0, idempotency: 0, suppressions: 0, firstAttempts: 0 };
    for (;;) {
      const ids = (await this.engine.all('SELECT id FROM hedwig_messages WHERE expires_at IS NOT NULL AND expires_at <= $1 LIMIT $2', [now, batch])).map((r) => String(r.id));
      if (ids.length === 0) break;
      const list = ids.map((_, i) => `$${i + 1}`).join(', ');
      await this.engine.transaction(async (tx) => {
        await tx.run(`DELETE FROM hedwig_recipients WHERE message_id IN (${list})`, ids);
        removed.messages += await tx.run(`DELETE FROM hedwig_messages WHERE id IN (${list})`, ids);
      });
      if (ids.length < batch) break;
    }
    removed.idempotency = await this.engine.run('DELETE FROM hedwig_idempotency WHERE expires_at <= $1', [now]);
    removed.suppressions = await this.engine.run('DELETE FROM hedwig_suppressions WHERE expires_at IS NOT NULL AND expires_at <= $1', [now]);
    if (options.firstAttemptMs > 0) removed.firstAttempts = await this.engine.run('DELETE FROM hedwig_first_attempts WHERE at <= $1', [now - options.firstAttemptMs]);
    return removed;
  }
}

export function storeUnavailable(err: unknown, what: string): HedwigError {
  return new HedwigError('STORE_UNAVAILABLE', `${what}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
}
