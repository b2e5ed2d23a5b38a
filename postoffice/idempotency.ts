/**
 * Idempotency keys: the first request with a given (fqdn, key) queues the message, any
 * retry within the TTL gets the same message id and queues nothing. A retry that
 * arrives while the first is still waiting for beanstalkd waits for its outcome.
 *
 * This map is in memory and PER PROCESS: several post office processes behind a load
 * balancer, or a restart, can each queue a retried message once. Delivery is
 * at-least-once anyway; the key only removes the common duplicates (client retries
 * after a lost response). Bounded: past `maxEntries` the oldest entries are forgotten.
 *
 * Entries are kept lean because there can be 100,000 of them: while the put is under way
 * an object with a promise that retries can wait on; once it is done, one packed string
 * "expiresAt<TAB>fingerprint<TAB>id" (a settled promise with its resolvers, or even a
 * small object, costs several times more). Neither fingerprints nor ids contain tabs.
 */
interface Pending {
  fingerprint: string;
  id: Promise<string>;
  expiresAtMs: number;
}
type Completed = string;

function unpack(entry: Pending | Completed): { fingerprint: string; id: string | Promise<string>; expiresAtMs: number } {
  if (typeof entry !== 'string') return entry;
  const [expiresAtMs, fingerprint, id] = entry.split('\t') as [string, string, string];
  return { fingerprint, id, expiresAtMs: Number(expiresAtMs) };
}

function expiresAtMs(entry: Pending | Completed): number {
  return typeof entry === 'string' ? Number(entry.slice(0, entry.indexOf('\t'))) : entry.expiresAtMs;
}

export type IdempotencyClaim =
  | { status: 'new'; complete(id: string): void; abandon(reason: unknown): void }
  | { status: 'duplicate'; id: Promise<string> }
  | { status: 'mismatch' };

export class IdempotencyStore {
  readonly #entries = new Map<string, Pending | Completed>();
  readonly #ttlMs: number;
  readonly #maxEntries: number;

  constructor(options: { ttlSeconds: number; maxEntries?: number }) {
    this.#ttlMs = options.ttlSeconds * 1000;
    this.#maxEntries = options.maxEntries ?? 100_000;
  }

  claim(scope: string, key: string, fingerprint: string, nowMs: number): IdempotencyClaim {
    this.#prune(nowMs);
    const name = `${scope}\n${key}`;
    const stored = this.#entries.get(name);
    const existing = stored === undefined ? undefined : unpack(stored);
    if (existing && existing.expiresAtMs > nowMs) {
      return existing.fingerprint === fingerprint ? { status: 'duplicate', id: Promise.resolve(existing.id) } : { status: 'mismatch' };
    }
    let resolve!: (id: string) => void;
    let reject!: (reason: unknown) => void;
    const id = new Promise<string>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    id.catch(() => {}); // nobody may be waiting; the first request handles the failure itself
    const pending: Pending = { fingerprint, id, expiresAtMs: nowMs + this.#ttlMs };
    this.#entries.delete(name);
    this.#entries.set(name, pending);
    while (this.#entries.size > this.#maxEntries) this.#entries.delete(this.#entries.keys().next().value!);
    return {
      status: 'new',
      complete: (messageId) => {
        if (this.#entries.get(name) === pending) this.#entries.set(name, [pending.expiresAtMs, fingerprint, messageId].join('\t'));
        resolve(messageId);
      },
      abandon: (reason) => {
        // A failed first attempt must not block the retry that follows it.
        if (this.#entries.get(name) === pending) this.#entries.delete(name);
        reject(reason);
      },
    };
  }

  get size(): number {
    return this.#entries.size;
  }

  #prune(nowMs: number): void {
    for (const [name, entry] of this.#entries) {
      if (expiresAtMs(entry) > nowMs) return;
      this.#entries.delete(name);
    }
  }
}
