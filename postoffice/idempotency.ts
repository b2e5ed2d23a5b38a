import type { KeyRecord, Store } from '../shared/store/store.ts';

/**
 * Idempotency keys: the first request with a given (fqdn, key) queues the message; any
 * retry within the TTL gets the same answer and queues nothing, whichever post office it
 * reaches and after any restart, because the keys live in the shared store
 * (shared/store/store.ts, table hedwig_idempotency).
 *
 * The message id is decided when the key is claimed and kept with the claim, together with
 * receivedAt. When a put fails in a way that leaves it unknown whether the job landed
 * (a timeout, a connection lost after sending), or the post office holding the claim dies
 * between its put and its answer, the next request with the key puts the SAME job again
 * (same id, same receivedAt) instead of a new message: if both copies exist, the worker
 * delivers only one of them (Store.firstAttempt). A claim is given up on ("stale") when its
 * owner has not finished it within `staleMs`, longer than any put with failover can take.
 *
 * Claims being put right now are also kept in this process's memory, so a retry that
 * arrives during the put waits for its outcome. When the store cannot be reached the keys
 * fall back to this memory alone, per process and bounded by `maxEntries`: a retry that
 * reaches another post office, or this one after a restart, may then queue the message again.
 */

/** What a request with this key was answered (and every retry is answered again). */
export interface Accepted {
  id: string;
  suppressed: string[];
}

interface Pending {
  fingerprint: string;
  answer: Promise<Accepted>;
  expiresAtMs: number;
}
/** A completed key while the store is unavailable: "expiresAt<TAB>fingerprint<TAB>id<TAB>suppressed,...". */
type Completed = string;

function unpack(entry: Pending | Completed): { fingerprint: string; answer: Accepted | Promise<Accepted>; expiresAtMs: number } {
  if (typeof entry !== 'string') return entry;
  const [expiresAtMs, fingerprint, id, suppressed] = entry.split('\t') as [string, string, string, string];
  return { fingerprint, answer: { id, suppressed: suppressed ? suppressed.split(',') : [] }, expiresAtMs: Number(expiresAtMs) };
}

function expiresAtMs(entry: Pending | Completed): number {
  return typeof entry === 'string' ? Number(entry.slice(0, entry.indexOf('\t'))) : entry.expiresAtMs;
}

export type IdempotencyClaim =
  | {
      status: 'new';
      /** The id and receivedAt of the job to put: fresh, or those of a claim taken over. */
      messageId: string;
      receivedAt: number;
      /** True when an earlier put of the same job may have landed (the worker then delivers one copy). */
      takenOver: boolean;
      complete(answer: Accepted): void;
      /** The put failed: unknown whether it landed. The next request puts the same job again. */
      fail(reason: unknown): void;
    }
  | { status: 'duplicate'; answer: Promise<Accepted> }
  | { status: 'mismatch' }
  /** Another post office is putting this message right now (or stopped answering less than staleMs ago). */
  | { status: 'busy' };

export interface IdempotencyOptions {
  ttlSeconds: number;
  maxEntries?: number;
  store?: Store;
  /** This process, as recorded with its claims. */
  owner: string;
  /** A claim pending longer than this belongs to a post office that died or froze. */
  staleMs: number;
  /** How long a request waits for another post office's claim to finish before answering busy. */
  waitMs?: number;
  /** The store failed; the key falls back to this process's memory. */
  onStoreError?: (err: unknown) => void;
  /** Message ids are made here when the caller passes none (tests). */
  newMessageId: () => string;
  /** The suppressed recipients recorded for a queued message (a retry's answer). */
  suppressedOf?: (messageId: string) => Promise<string[]>;
}

const POLL_MS = 100;
const DEFAULT_WAIT_MS = 3000;

export class IdempotencyStore {
  readonly #entries = new Map<string, Pending | Completed>();
  readonly #ttlMs: number;
  readonly #maxEntries: number;
  readonly #options: IdempotencyOptions;

  constructor(options: IdempotencyOptions) {
    this.#options = options;
    this.#ttlMs = options.ttlSeconds * 1000;
    this.#maxEntries = options.maxEntries ?? 100_000;
  }

  /** Keys held in this process's memory (claims in flight, and completed keys while the store is down). */
  get size(): number {
    return this.#entries.size;
  }

  async claim(fqdn: string, key: string, fingerprint: string, nowMs: number): Promise<IdempotencyClaim> {
    this.#prune(nowMs);
    const name = `${fqdn}\n${key}`;
    const local = this.#local(name, fingerprint, nowMs);
    if (local) return local;
    const store = this.#options.store;
    if (store) {
      try {
        return await this.#claimInStore(store, fqdn, key, fingerprint, nowMs);
      } catch (err) {
        this.#options.onStoreError?.(err);
      }
    }
    return this.#newClaim(name, fingerprint, nowMs, { messageId: this.#options.newMessageId(), receivedAt: nowMs, takenOver: false });
  }

  #local(name: string, fingerprint: string, nowMs: number): IdempotencyClaim | undefined {
    const stored = this.#entries.get(name);
    const existing = stored === undefined ? undefined : unpack(stored);
    if (!existing || existing.expiresAtMs <= nowMs) return undefined;
    return existing.fingerprint === fingerprint ? { status: 'duplicate', answer: Promise.resolve(existing.answer) } : { status: 'mismatch' };
  }

  async #claimInStore(store: Store, fqdn: string, key: string, fingerprint: string, nowMs: number): Promise<IdempotencyClaim> {
    const name = `${fqdn}\n${key}`;
    const fresh = { messageId: this.#options.newMessageId(), receivedAt: nowMs };
    const waitMs = this.#options.waitMs ?? DEFAULT_WAIT_MS;
    const started = Date.now();
    let now = nowMs;
    for (;;) {
      const result = await store.claimKey({ fqdn, key, fingerprint, ...fresh, owner: this.#options.owner, now, ttlMs: this.#ttlMs });
      if (result.claimed) return this.#newClaim(name, fingerprint, nowMs, { ...fresh, takenOver: false });
      const existing: KeyRecord = result.existing;
      if (existing.fingerprint !== fingerprint) return { status: 'mismatch' };
      if (existing.state === 'queued') {
        const suppressed = (await this.#options.suppressedOf?.(existing.messageId).catch(() => [])) ?? [];
        return { status: 'duplicate', answer: Promise.resolve({ id: existing.messageId, suppressed }) };
      }
      // A claim of this process that left its memory already: its answer is on its way to the store.
      const local = this.#local(name, fingerprint, now);
      if (local) return local;
      const stale = existing.state === 'pending' && now - existing.claimedAt >= this.#options.staleMs;
      if (existing.state === 'open' || stale) {
        if (await store.takeOverKey(fqdn, key, existing, this.#options.owner, now)) {
          return this.#newClaim(name, fingerprint, nowMs, { messageId: existing.messageId, receivedAt: existing.receivedAt, takenOver: true });
        }
        continue; // someone else took it first: look again
      }
      if (Date.now() - started >= waitMs) return { status: 'busy' };
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      now = nowMs + (Date.now() - started);
    }
  }

  #newClaim(name: string, fingerprint: string, nowMs: number, job: { messageId: string; receivedAt: number; takenOver: boolean }): IdempotencyClaim {
    let resolve!: (answer: Accepted) => void;
    let reject!: (reason: unknown) => void;
    const answer = new Promise<Accepted>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    answer.catch(() => {}); // nobody may be waiting; the first request handles the failure itself
    const pending: Pending = { fingerprint, answer, expiresAtMs: nowMs + this.#ttlMs };
    this.#entries.delete(name);
    this.#entries.set(name, pending);
    while (this.#entries.size > this.#maxEntries) this.#entries.delete(this.#entries.keys().next().value!);
    return {
      status: 'new',
      ...job,
      complete: (accepted) => {
        // With a store the answer lives there once the queued record is written (the server
        // then calls forget()); memory bridges the moment until then, or the outage.
        if (this.#entries.get(name) === pending) this.#entries.set(name, [pending.expiresAtMs, fingerprint, accepted.id, accepted.suppressed.join(',')].join('\t'));
        resolve(accepted);
      },
      fail: (reason) => {
        // A failed first attempt must not block the retry that follows it.
        if (this.#entries.get(name) === pending) this.#entries.delete(name);
        reject(reason);
      },
    };
  }

  /** Keys whose answer reached the store leave memory: the store answers for them from now on. */
  forget(fqdn: string, key: string): void {
    this.#entries.delete(`${fqdn}\n${key}`);
  }

  #prune(nowMs: number): void {
    for (const [name, entry] of this.#entries) {
      if (expiresAtMs(entry) > nowMs) return;
      this.#entries.delete(name);
    }
  }
}
