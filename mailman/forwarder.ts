import { errorCode, errorMessage } from '../shared/errors.ts';
import type { Logger } from '../shared/logger.ts';
import type { MailmanMetrics } from './metrics.ts';
import type { PostofficeClient } from './postoffice-client.ts';
import type { Spool, SpooledMessage } from './spool.ts';

export interface ForwarderOptions {
  spool: Spool;
  client: PostofficeClient;
  logger: Logger;
  metrics: MailmanMetrics;
  minBackoffMs: number;
  maxBackoffMs: number;
  concurrency: number;
}

type DrainOutcome = 'drained' | 'unavailable';
type ForwardOutcome = 'done' | 'unavailable';

/**
 * Drains the spool into the post office. Runs once at start (crash recovery) and again
 * whenever a message is spooled. While the post office is unavailable it waits with
 * exponential backoff instead of trying each message in turn: one temporary failure
 * pauses the whole drain, since the next message would meet the same outage.
 *
 * A spooled file is removed only after the post office accepted it; the idempotency key
 * (the spool id) makes a resend after a crash between accept and remove harmless.
 */
export class Forwarder {
  private readonly options: ForwarderOptions;
  private stopped = false;
  private running: Promise<void> | undefined;
  private rerun = false;
  private backoffMs = 0;
  private retryTimer: NodeJS.Timeout | undefined;

  constructor(options: ForwarderOptions) {
    this.options = options;
  }

  /** Deletes tmp/ leftovers (never acknowledged) and starts forwarding whatever is in new/. */
  async start(): Promise<void> {
    const stale = await this.options.spool.removeStaleTmp();
    if (stale.length > 0) this.options.logger.warn({ event: 'stale_tmp_removed', count: stale.length, ids: stale });
    const waiting = await this.options.spool.depth();
    if (waiting > 0) this.options.logger.info({ event: 'spool_recovered', count: waiting });
    this.kick();
  }

  /** True while waiting out a post office outage. */
  get backingOff(): boolean {
    return this.retryTimer !== undefined;
  }

  /** A message was just spooled. During a backoff it waits for the retry like the others. */
  notify(): void {
    if (this.retryTimer) return;
    this.kick();
  }

  /** Waits for forwards in flight (each bounded by the client timeout); spooled files stay for the next start. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    await this.running;
  }

  /** Resolves when no drain is running: for tests and shutdown. */
  async idle(): Promise<void> {
    while (this.running) await this.running;
  }

  private kick(): void {
    if (this.stopped) return;
    if (this.running) {
      this.rerun = true;
      return;
    }
    this.running = this.drain().finally(() => {
      this.running = undefined;
    });
  }

  private async drain(): Promise<void> {
    let outcome: DrainOutcome = 'drained';
    do {
      this.rerun = false;
      outcome = await this.drainOnce();
    } while (outcome === 'drained' && this.rerun && !this.stopped);
    if (outcome === 'drained') {
      this.backoffMs = 0;
      return;
    }
    this.scheduleRetry();
  }

  private scheduleRetry(): void {
    if (this.stopped) return;
    const { minBackoffMs, maxBackoffMs, logger, spool } = this.options;
    this.backoffMs = this.backoffMs === 0 ? minBackoffMs : Math.min(maxBackoffMs, this.backoffMs * 2);
    void spool.depth().then(
      (depth) => logger.warn({ event: 'forward_backoff', retryInMs: this.backoffMs, spoolDepth: depth }),
      () => logger.warn({ event: 'forward_backoff', retryInMs: this.backoffMs }),
    );
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.kick();
    }, this.backoffMs);
  }

  private async drainOnce(): Promise<DrainOutcome> {
    let ids: string[];
    try {
      ids = await this.options.spool.list();
    } catch (err) {
      this.options.logger.error({ event: 'spool_unreadable', code: errorCode(err), error: errorMessage(err) });
      return 'unavailable';
    }
    let next = 0;
    let unavailable = false;
    const worker = async (): Promise<void> => {
      while (!unavailable && !this.stopped && next < ids.length) {
        const id = ids[next++]!;
        if ((await this.forwardOne(id)) === 'unavailable') unavailable = true;
      }
    };
    const workers = Array.from({ length: Math.min(this.options.concurrency, ids.length) }, worker);
    await Promise.all(workers);
    return unavailable ? 'unavailable' : 'drained';
  }

  private async forwardOne(id: string): Promise<ForwardOutcome> {
    const { spool, client, logger, metrics } = this.options;
    let message: SpooledMessage;
    try {
      message = await spool.read(id);
    } catch (err) {
      if (errorCode(err) === 'ENOENT') return 'done';
      if (errorCode(err) === 'SPOOL_CORRUPT') return this.fail(id, { status: 0, error: 'corrupt_spool_file', message: errorMessage(err) });
      logger.error({ event: 'spool_read_failed', spoolId: id, code: errorCode(err), error: errorMessage(err) });
      return 'unavailable';
    }

    const result = await client.forward({ idempotencyKey: id, mailfrom: message.mailfrom, rcpttos: message.rcpttos, data: message.data });
    metrics.forwardAttempts.inc({ result: result.kind });
    try {
      switch (result.kind) {
        case 'accepted':
          await spool.remove(id);
          logger.info({ event: 'forwarded', spoolId: id, postofficeId: result.id, path: 'spool', size: message.data.length });
          return 'done';
        case 'rejected':
          return this.fail(id, { status: result.status, error: result.error, message: result.message });
        case 'temporary':
          logger.warn({ event: 'forward_deferred', spoolId: id, reason: result.reason });
          return 'unavailable';
      }
    } catch (err) {
      logger.error({ event: 'spool_update_failed', spoolId: id, code: errorCode(err), error: errorMessage(err) });
      return 'unavailable';
    }
  }

  private async fail(id: string, reason: { status: number; error: string; message: string }): Promise<ForwardOutcome> {
    const { spool, metrics, logger } = this.options;
    try {
      await spool.moveToFailed(id, reason);
    } catch (err) {
      logger.error({ event: 'spool_update_failed', spoolId: id, code: errorCode(err), error: errorMessage(err) });
      return 'unavailable';
    }
    metrics.rejected.inc({ reason: reason.error });
    logger.error({ event: 'failed', spoolId: id, status: reason.status, error: reason.error, message: reason.message });
    return 'done';
  }
}
