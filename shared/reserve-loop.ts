import type { BeanstalkClient, ReservedJob } from './beanstalk.ts';
import { sleep } from './sleep.ts';

/**
 * The one way hedwig consumes a tube (worker deliveries, webhook events, status updates):
 * connect, reserve from `tube` alone, hand each job to `handle`, one at a time on this
 * client's connection (job commands must use the reserving connection, and a pending
 * reserve blocks it), until `stopping` is aborted. The 1-second reserve timeout is what
 * lets the loop notice.
 *
 * When beanstalkd cannot be reached (or `handle` throws) the loop waits 250 ms doubling to
 * 5 s and tries again; `onUnavailable` is told when an outage starts and then at most once a
 * minute while it lasts (one log line per outage, not one per retry), `onRecovered` when a
 * reserve works again.
 */
export interface ReserveLoopOptions {
  tube: string;
  handle(job: ReservedJob): Promise<void>;
  stopping: AbortSignal;
  onUnavailable?(err: unknown): void;
  onRecovered?(): void;
}

const RESERVE_TIMEOUT_SECONDS = 1;
const PAUSE_MIN_MS = 250;
const PAUSE_MAX_MS = 5_000;
const TELL_EVERY_MS = 60_000;

export async function runReserveLoop(client: BeanstalkClient, options: ReserveLoopOptions): Promise<void> {
  const { stopping } = options;
  let watching = false;
  let pauseMs = PAUSE_MIN_MS;
  let toldAt = 0;
  while (!stopping.aborted) {
    try {
      if (!watching) {
        await client.connect();
        await client.watchOnly(options.tube);
        watching = true; // the client re-applies its watch list after reconnects
      }
      const reserved = await client.reserve(RESERVE_TIMEOUT_SECONDS);
      if (toldAt !== 0) options.onRecovered?.();
      toldAt = 0;
      pauseMs = PAUSE_MIN_MS;
      if (reserved) await options.handle(reserved);
    } catch (err) {
      if (stopping.aborted) break;
      if (Date.now() - toldAt >= TELL_EVERY_MS) {
        options.onUnavailable?.(err);
        toldAt = Date.now();
      }
      await sleep(pauseMs, stopping);
      pauseMs = Math.min(pauseMs * 2, PAUSE_MAX_MS);
    }
  }
}
