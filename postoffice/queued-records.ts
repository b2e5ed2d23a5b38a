import type { Logger } from '../shared/logger.ts';
import type { StoreHealth } from '../shared/store/health.ts';
import type { QueuedRecord, Store } from '../shared/store/store.ts';

/**
 * The store's record of each message the post office queued, written behind the request:
 * the 202 never waits for it. Records are batched (one transaction for everything accepted
 * within a few milliseconds, at most BATCH) and, while the store is unavailable, held in
 * memory and written once it answers again, up to `maxBuffered`; beyond that the oldest are
 * dropped (counted and logged): those messages are still queued and delivered, and the store
 * learns about them from their first delivery attempt (the worker's status report).
 */
const BATCH = 500;
const FLUSH_DELAY_MS = 5;
const RETRY_MIN_MS = 500;
const RETRY_MAX_MS = 10_000;

export interface QueuedRecordsOptions {
  store: Store;
  health: StoreHealth;
  logger: Logger;
  maxBuffered: number;
  /** After a batch reached the store: the idempotency keys in it can leave memory. */
  onWritten?: (records: readonly QueuedRecord[]) => void;
  onDropped?: (count: number) => void;
  now?: () => number;
}

export class QueuedRecords {
  readonly #options: QueuedRecordsOptions;
  #buffer: QueuedRecord[] = [];
  #timer: NodeJS.Timeout | undefined;
  #flushing: Promise<void> | undefined;
  #retryMs = RETRY_MIN_MS;

  constructor(options: QueuedRecordsOptions) {
    this.#options = options;
  }

  get buffered(): number {
    return this.#buffer.length;
  }

  add(record: QueuedRecord): void {
    this.#buffer.push(record);
    const over = this.#buffer.length - this.#options.maxBuffered;
    if (over > 0) {
      this.#buffer.splice(0, over);
      this.#options.onDropped?.(over);
      this.#options.logger.warn({ event: 'store_records_dropped', count: over, maxBuffered: this.#options.maxBuffered }, 'store unavailable too long: oldest queued records dropped (their messages are still queued)');
    }
    this.#schedule(FLUSH_DELAY_MS);
  }

  /** Writes what is buffered, trying until `deadline` (ms since epoch). */
  async drain(deadline: number): Promise<void> {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    while (this.#buffer.length > 0 && Date.now() < deadline) {
      await (this.#flushing ?? this.#flush());
      if (this.#buffer.length > 0 && !this.#options.health.available) await new Promise((r) => setTimeout(r, Math.min(RETRY_MIN_MS, Math.max(0, deadline - Date.now()))));
    }
  }

  #schedule(delayMs: number): void {
    if (this.#timer || this.#flushing) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      void this.#flush();
    }, delayMs);
    this.#timer.unref();
  }

  #flush(): Promise<void> {
    const batch = this.#buffer.splice(0, BATCH);
    if (batch.length === 0) return Promise.resolve();
    const { store, health } = this.#options;
    this.#flushing = store
      .recordQueued(batch, (this.#options.now ?? Date.now)())
      .then(
        () => {
          health.worked();
          this.#retryMs = RETRY_MIN_MS;
          this.#options.onWritten?.(batch);
        },
        (err: unknown) => {
          health.failed('record_queued', err);
          this.#buffer.unshift(...batch);
          this.#retryMs = Math.min(this.#retryMs * 2, RETRY_MAX_MS);
        },
      )
      .finally(() => {
        this.#flushing = undefined;
        if (this.#buffer.length > 0) this.#schedule(health.available ? 0 : this.#retryMs);
      });
    return this.#flushing;
  }
}
