import { z } from 'zod';
import type { SmtpSession } from './smtp-session.ts';

/**
 * Idle SMTP connections kept for the next message to the same server from the same
 * source (Postfix's connection cache). A connection serves one transaction at a time;
 * it is closed after `maxMessagesPerConnection` messages or `idleTimeoutMs` unused.
 *
 * nodemailer's SMTPPool is not used: it serves one configured host, picks its own
 * connection per message, and would hide where a failure happened (see smtp-session.ts).
 */

/** `connections`: reuse of SMTP connections. */
export const connectionsSchema = z
  .object({
    maxMessagesPerConnection: z.number().int().min(1).default(100),
    /** How long a connection waits unused for the next message; 0 disables reuse. Postfix's smtp_connection_cache_time_limit is 2 s. */
    idleTimeoutMs: z.number().int().nonnegative().default(2000),
  })
  .strict()
  .prefault({});

export type PoolSettings = z.infer<typeof connectionsSchema>;

export interface PooledConnection {
  readonly session: SmtpSession;
  /** Server, port, source address, EHLO name and TLS options: what must match for reuse. */
  readonly key: string;
  /** The key of the limit bucket this connection counts against (limits.ts). */
  readonly bucket: string | undefined;
  /** Transactions started on it. */
  messages: number;
  readonly closed: boolean;
}

interface Entry extends PooledConnection {
  closed: boolean;
  idleTimer?: NodeJS.Timeout;
  onClosed: Array<() => void>;
}

export interface ConnectionPool {
  /** An idle connection for `key`, taken out of the pool; undefined when there is none. */
  take(key: string): PooledConnection | undefined;
  /**
   * Registers a freshly opened connection; `onClosed` runs once when it closes for any
   * reason (the server hung up, idle timeout, quit, close) — the place to release a lease.
   */
  track(session: SmtpSession, key: string, bucket: string | undefined, onClosed?: () => void): PooledConnection;
  /** After a transaction: keep it for the next message, or QUIT when it has served enough. */
  give(pooled: PooledConnection): void;
  /** Drops the connection (QUIT when polite, else a hard close). */
  discard(pooled: PooledConnection, how: 'quit' | 'close'): void;
  /** Closes idle connections (of one limit bucket, or all): frees their connection slots. */
  closeIdle(bucket?: string): number;
  readonly idleCount: number;
}

export function createConnectionPool(settings: PoolSettings): ConnectionPool {
  const idle = new Map<string, Entry[]>();

  function unlistIdle(entry: Entry): void {
    if (entry.idleTimer) clearTimeout(entry.idleTimer);
    entry.idleTimer = undefined;
    const list = idle.get(entry.key);
    if (!list) return;
    const index = list.indexOf(entry);
    if (index >= 0) list.splice(index, 1);
    if (list.length === 0) idle.delete(entry.key);
  }

  function markClosed(entry: Entry): void {
    if (entry.closed) return;
    entry.closed = true;
    unlistIdle(entry);
    for (const callback of entry.onClosed.splice(0)) callback();
  }

  function discard(pooled: PooledConnection, how: 'quit' | 'close'): void {
    const entry = pooled as Entry;
    if (entry.closed) return;
    if (how === 'quit') entry.session.quit();
    else entry.session.close();
    // The slot is free from our side now, whether or not the server acknowledges QUIT.
    markClosed(entry);
  }

  return {
    take(key) {
      const list = idle.get(key);
      while (list && list.length > 0) {
        const entry = list.shift()!;
        if (list.length === 0) idle.delete(key);
        if (entry.idleTimer) clearTimeout(entry.idleTimer);
        entry.idleTimer = undefined;
        if (!entry.closed) return entry;
      }
      return undefined;
    },

    track(session, key, bucket, onClosed) {
      const entry: Entry = { session, key, bucket, messages: 0, closed: false, onClosed: onClosed ? [onClosed] : [] };
      session.onClosed(() => markClosed(entry));
      return entry;
    },

    give(pooled) {
      const entry = pooled as Entry;
      if (entry.closed) return;
      if (settings.idleTimeoutMs <= 0 || entry.messages >= settings.maxMessagesPerConnection) {
        discard(entry, 'quit');
        return;
      }
      entry.idleTimer = setTimeout(() => discard(entry, 'quit'), settings.idleTimeoutMs);
      // An idle connection alone must not keep a stopping process alive.
      entry.idleTimer.unref();
      const list = idle.get(entry.key) ?? [];
      list.push(entry);
      idle.set(entry.key, list);
    },

    discard,

    closeIdle(bucket) {
      let closed = 0;
      for (const list of [...idle.values()]) {
        for (const entry of [...list]) {
          if (bucket === undefined || entry.bucket === bucket) {
            discard(entry, 'quit');
            closed++;
          }
        }
      }
      return closed;
    },

    get idleCount() {
      let count = 0;
      for (const list of idle.values()) count += list.length;
      return count;
    },
  };
}
