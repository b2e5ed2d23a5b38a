import { errorCode, errorMessage } from '../shared/errors.ts';
import type { Logger } from '../shared/logger.ts';
import type { MailmanMetrics } from './metrics.ts';
import type { ForwardResult, PostofficeClient } from './postoffice-client.ts';
import type { FailureReason, Spool, SpooledMessage } from './spool.ts';

export interface ForwarderOptions {
  spool: Spool;
  client: PostofficeClient;
  logger: Logger;
  metrics: MailmanMetrics;
  minBackoffMs: number;
  maxBackoffMs: number;
  /**
   * While the post office is unavailable the drain probes it at least this often, whatever
   * maxBackoffMs allows a single entry: a probe is one request, and a longer wait is a backlog
   * left standing after the post office is back. With beanstalkd down 1 s in every 5 and 500
   * messages/s offered, a 5 s cap let the spool grow by ~75 a second; 1 s keeps it at about one
   * second's mail.
   */
  maxProbeIntervalMs: number;
  /** The most forwards from the spool at once; the forwarder starts at one and grows to this while forwards succeed. */
  concurrency: number;
  /** Failed attempts that count against one entry (see TemporaryCause) before it goes to failed/. */
  maxAttempts: number;
  /** An entry older than this (since it was spooled) goes to failed/ after its next failed attempt. */
  maxAgeMs: number;
  now?: () => number;
}

/** Handed out by inlineAttempt() and given back with the result. */
export interface InlineAttempt {
  epoch: number;
}

/** What one forward from the spool came to, for the drain's pacing. */
type Outcome = 'done' | 'skipped' | 'outage';

interface EntryState {
  /** Failed attempts that counted against this entry (in memory: a restart starts them again; the age bound does not reset). */
  attempts: number;
  /** Not tried again before this time. */
  notBefore: number;
}

/**
 * Drains the spool into the post office, and keeps the one view mailman has of whether the
 * post office is taking mail: the SMTP side asks `inlineAttempt()` before it forwards during a
 * transaction and reports what it saw (`reportInline`), so an outage noticed on any path spools
 * every following message at once, and the first success on any path ends it.
 *
 * Pacing (after Postfix's qmgr and TCP's congestion control):
 * - An outage (no connection, 503, a timeout) pauses the drain for a backoff that doubles with
 *   each failing attempt up to maxProbeIntervalMs (and maxBackoffMs), and drops the concurrency to one: the next try is
 *   a single probe. The first success, inline or from the spool, resets the backoff and ends a
 *   pause at once, and each success lets one more forward run in parallel, up to `concurrency`.
 * - A failure that is about one message (a 500, or a timeout while the post office otherwise
 *   works) pauses only that entry (backoff of its own) and the drain goes on with the next. After
 *   maxAttempts such failures, or once older than maxAgeMs, the entry moves to failed/ with the
 *   reason: a 5xx is not a licence to retry for ever, nor to hold the others up.
 *
 * A spooled file is removed only after the post office accepted it; the idempotency key
 * (the spool id) makes a resend after a crash between accept and remove harmless.
 *
 * Longer than 300 lines on purpose: one state machine. The outage view the SMTP side asks,
 * the drain's pause, backoff and window, and each entry's own backoff change together on
 * every result; split into files they would share all their state through setters.
 */
export class Forwarder {
  private readonly options: ForwarderOptions;
  private readonly now: () => number;
  private readonly entries = new Map<string, EntryState>();
  private stopped = false;
  private running: Promise<void> | undefined;
  /** Set by notify(): the spool has entries the current listing does not. */
  private dirty = true;
  private wake: (() => void) | undefined;
  private backoffMs = 0;
  private resumeAt = 0;
  private window = 1;
  /** The last outcome that said anything about the post office was a success. */
  private healthy = true;
  private inFlight = 0;
  /**
   * Outages registered so far. Each attempt remembers the count it began under: one that was
   * already under way when an outage was registered neither doubles the backoff again nor, by
   * succeeding, ends an outage it began before.
   */
  private outages = 0;

  constructor(options: ForwarderOptions) {
    this.options = options;
    this.now = options.now ?? Date.now;
    options.metrics.forwarderConcurrency.set(this.window);
    options.metrics.postofficeUp.set(1);
  }

  /** Deletes tmp/ leftovers (never acknowledged) and starts forwarding whatever is in new/. */
  async start(): Promise<void> {
    const stale = await this.options.spool.removeStaleTmp();
    if (stale.length > 0) this.options.logger.warn({ event: 'stale_tmp_removed', count: stale.length, ids: stale });
    const waiting = await this.options.spool.depth();
    if (waiting > 0) this.options.logger.info({ event: 'spool_recovered', count: waiting });
    this.running = this.run();
  }

  /** True while the post office is known not to take mail (it may still be probed). */
  get backingOff(): boolean {
    return !this.healthy;
  }

  /**
   * May an SMTP transaction forward inline? Not after an outage until a forward succeeded again;
   * only when the backoff is over and the spool has nothing in flight to probe with does a
   * transaction get to be the probe (else an empty spool would never find the way back).
   */
  inlineAttempt(): InlineAttempt | undefined {
    return this.healthy || (this.inFlight === 0 && this.now() >= this.resumeAt) ? { epoch: this.outages } : undefined;
  }

  /** What an inline forward saw: an outage spools what follows at once, a success ends one. */
  reportInline(result: ForwardResult, attempt: InlineAttempt): void {
    if (result.kind === 'accepted') this.succeeded(attempt.epoch);
    else if (result.kind === 'temporary' && result.cause !== 'error') this.outage(result.reason, attempt.epoch);
  }

  /** A message was just spooled. */
  notify(): void {
    this.dirty = true;
    this.wake?.();
  }

  /** Waits for forwards in flight (each bounded by the client timeout); spooled files stay for the next start. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.wake?.();
    await this.running;
  }

  /** Resolves once the spool holds nothing that is due now: for tests. */
  async idle(): Promise<void> {
    while (!this.stopped) {
      const ids = await this.options.spool.list().catch(() => []);
      const due = ids.filter((id) => (this.entries.get(id)?.notBefore ?? 0) <= this.now());
      if (due.length === 0 && this.inFlight === 0) return;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }

  /** A forward begun under `epoch` was accepted; one begun before the current outage says nothing about it. */
  private succeeded(epoch: number): void {
    const { metrics, concurrency } = this.options;
    if (!this.healthy && epoch !== this.outages) return;
    this.healthy = true;
    this.backoffMs = 0;
    metrics.postofficeUp.set(1);
    if (this.window < concurrency) {
      this.window++;
      metrics.forwarderConcurrency.set(this.window);
    }
    if (this.resumeAt > this.now()) {
      this.resumeAt = 0;
      this.wake?.();
    }
  }

  /**
   * An attempt begun under `epoch` met an outage. Attempts that were already under way when an
   * earlier one reported the same outage do not double the backoff again: it grows per probe.
   */
  private outage(reason: string, epoch: number): void {
    const { minBackoffMs, maxBackoffMs, maxProbeIntervalMs, logger, metrics } = this.options;
    this.healthy = false;
    if (epoch !== this.outages) return;
    this.outages++;
    const ceiling = Math.min(maxBackoffMs, maxProbeIntervalMs);
    this.backoffMs = this.backoffMs === 0 ? Math.min(minBackoffMs, ceiling) : Math.min(ceiling, this.backoffMs * 2);
    this.resumeAt = this.now() + this.backoffMs;
    this.window = 1;
    metrics.postofficeUp.set(0);
    metrics.forwarderConcurrency.set(1);
    logger.warn({ event: 'forward_backoff', retryInMs: this.backoffMs, reason });
  }

  /** Sleeps until `until`, or until notify(), a success or stop() wakes it. */
  private async pause(until: number): Promise<void> {
    if (this.stopped) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(done, Math.max(0, until - this.now()));
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.wake = done;
    });
    this.wake = undefined;
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      if (this.now() < this.resumeAt) {
        await this.pause(this.resumeAt);
        continue;
      }
      let ids: string[];
      try {
        this.dirty = false;
        ids = await this.options.spool.list();
      } catch (err) {
        this.options.logger.error({ event: 'spool_unreadable', code: errorCode(err), error: errorMessage(err) });
        this.outage('spool unreadable', this.outages);
        continue;
      }
      const now = this.now();
      const present = new Set(ids);
      for (const id of this.entries.keys()) if (!present.has(id)) this.entries.delete(id);
      const due = ids.filter((id) => (this.entries.get(id)?.notBefore ?? 0) <= now);
      if (due.length > 0) {
        await this.drain(due);
        continue;
      }
      if (this.dirty) continue;
      // Also look again now and then without a notify(): an operator may move a file from
      // failed/ back into new/ by hand.
      const waits = [...this.entries.values()].map((e) => e.notBefore);
      await this.pause(Math.min(now + this.options.maxBackoffMs, ...waits));
    }
  }

  /**
   * Forwards `ids` in order with up to `window` in parallel. An outage pauses it where it is: the
   * probe after the pause is the next entry, not the one that just failed, so an entry that keeps
   * failing is retried once per pass over the spool and never stands in front of the others.
   */
  private async drain(ids: string[]): Promise<void> {
    const running = new Set<Promise<void>>();
    let next = 0;
    while (next < ids.length && !this.stopped) {
      if (this.now() < this.resumeAt) {
        await Promise.all(running);
        await this.pause(this.resumeAt);
        continue;
      }
      while (running.size < this.window && next < ids.length && this.now() >= this.resumeAt) {
        const id = ids[next++]!;
        const epoch = this.outages;
        this.inFlight++;
        const task: Promise<void> = this.forwardOne(id, epoch)
          .then((outcome) => {
            if (outcome === 'outage' && this.healthy) this.outage('spool problem', epoch);
          })
          .finally(() => {
            this.inFlight--;
            running.delete(task);
          });
        running.add(task);
      }
      if (running.size > 0) await Promise.race(running);
    }
    await Promise.all(running);
  }

  private async forwardOne(id: string, epoch: number): Promise<Outcome> {
    const { spool, client, logger, metrics } = this.options;
    let message: SpooledMessage;
    try {
      message = await spool.read(id);
    } catch (err) {
      if (errorCode(err) === 'ENOENT') return 'skipped';
      if (errorCode(err) === 'SPOOL_CORRUPT') return this.fail(id, { status: 0, error: 'corrupt_spool_file', message: errorMessage(err) });
      logger.error({ event: 'spool_read_failed', spoolId: id, code: errorCode(err), error: errorMessage(err) });
      return 'outage';
    }

    const wasHealthy = this.healthy;
    const result = await client.forward({ idempotencyKey: id, mailfrom: message.mailfrom, rcpttos: message.rcpttos, data: message.data });
    metrics.forwardAttempts.inc({ result: result.kind });
    try {
      switch (result.kind) {
        case 'accepted':
          this.entries.delete(id);
          await spool.remove(id);
          this.succeeded(epoch);
          // Its client had its 250 when it was spooled: only the log can say who was left out.
          logger.info({ event: 'forwarded', spoolId: id, postofficeId: result.id, path: 'spool', size: message.data.length, ...(result.suppressed ? { suppressed: result.suppressed } : {}) });
          return 'done';
        case 'rejected':
          this.entries.delete(id);
          return await this.fail(id, { status: result.status, error: result.error, message: result.message });
        case 'temporary':
          return await this.deferred(id, message, result, { wasHealthy, epoch });
      }
    } catch (err) {
      logger.error({ event: 'spool_update_failed', spoolId: id, code: errorCode(err), error: errorMessage(err) });
      return 'outage';
    }
  }

  private async deferred(
    id: string,
    message: SpooledMessage,
    result: Extract<ForwardResult, { kind: 'temporary' }>,
    { wasHealthy, epoch }: { wasHealthy: boolean; epoch: number },
  ): Promise<Outcome> {
    const { logger, maxAttempts, maxAgeMs, minBackoffMs, maxBackoffMs } = this.options;
    if (result.cause !== 'error') this.outage(result.reason, epoch);
    // A timeout counts against the message only if the post office was working when it was
    // sent: a frozen post office must not use up every entry's attempts.
    const counts = result.cause === 'error' || (result.cause === 'timeout' && wasHealthy);
    const entry = this.entries.get(id) ?? { attempts: 0, notBefore: 0 };
    if (counts) {
      entry.attempts++;
      entry.notBefore = this.now() + Math.min(maxBackoffMs, minBackoffMs * 2 ** (entry.attempts - 1));
      this.entries.set(id, entry);
    }
    logger.warn({ event: 'forward_deferred', spoolId: id, reason: result.reason, cause: result.cause, attempts: entry.attempts });
    const age = this.now() - message.receivedAt;
    if (entry.attempts >= maxAttempts) {
      this.entries.delete(id);
      return this.fail(id, { status: 0, error: 'too_many_attempts', message: `${entry.attempts} failed attempts, the last: ${result.reason}`, attempts: entry.attempts });
    }
    if (age > maxAgeMs) {
      this.entries.delete(id);
      return this.fail(id, { status: 0, error: 'expired', message: `in the spool for ${Math.round(age / 1000)} s, the last attempt: ${result.reason}`, attempts: entry.attempts });
    }
    return result.cause === 'error' ? 'skipped' : 'outage';
  }

  private async fail(id: string, reason: FailureReason): Promise<Outcome> {
    const { spool, metrics, logger } = this.options;
    try {
      await spool.moveToFailed(id, reason);
    } catch (err) {
      logger.error({ event: 'spool_update_failed', spoolId: id, code: errorCode(err), error: errorMessage(err) });
      return 'outage';
    }
    metrics.rejected.inc({ reason: reason.error });
    logger.error({ event: 'failed', spoolId: id, status: reason.status, error: reason.error, message: reason.message, ...(reason.attempts !== undefined ? { attempts: reason.attempts } : {}) });
    return 'done';
  }
}
