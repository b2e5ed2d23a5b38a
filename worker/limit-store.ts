import { domainToASCII } from 'node:url';
import { BeanstalkClient, BeanstalkError, type ReservedJob, type Stats } from '../shared/beanstalk.ts';
import type { HostPort } from '../shared/host-port.ts';

/**
 * The shared state behind per-destination limits (limits.ts), kept in beanstalkd, the one
 * server every worker already reaches, in two tubes per limit bucket:
 *
 *  - `hedwig-limit-<bucket>-conn`: a connection slot is a *reserved* token job. A worker
 *    takes a ready token (or puts one and reserves it), then counts the tube's reserved
 *    jobs; with at most `maxConnections` reserved it holds the slot until the SMTP
 *    connection closes, then deletes the token; otherwise it deletes it and waits. The
 *    last of any N+1 concurrent takers always counts N+1, so the limit cannot be
 *    exceeded; a collision only costs a retry. No seeding is needed, a changed limit
 *    applies at once, and a worker that dies loses its reservations with its beanstalkd
 *    connection: the slots free themselves (tokens are touched while held, so TTR never
 *    frees a live one).
 *  - `hedwig-limit-<bucket>-rate`: each message puts a record delayed by the window;
 *    the tube's delayed count is the number of messages in the last window. Over the
 *    limit, the record is deleted again and the sender waits. Expired (ready) records
 *    are swept by the next senders.
 *
 * Each attempt either admits (with a `release` for when the slot is done) or says how long
 * to wait and why; it throws when beanstalkd cannot be reached.
 */

export type StoreAttempt = { ok: true; release: () => void } | { waitMs: number; why: string };

export interface LimitStore {
  connectionSlot(bucketKey: string, max: number, onContention?: () => void): Promise<StoreAttempt>;
  messageSlot(bucketKey: string, perWindow: number, windowSeconds: number): Promise<StoreAttempt>;
  /** Holds every worker's reserves from the bucket's tubes back (pause-tube): a shared back-off. */
  pause(bucketKey: string, seconds: number): void;
  close(): Promise<void>;
}

const TOKEN = Buffer.from('slot');
const RECORD = Buffer.from('sent');
const TOKEN_TTR_SECONDS = 60;
const RETRY_MIN_MS = 20;
const RETRY_MAX_MS = 500;
const SHARED_BACKOFF = 'backing off (shared) after a 421 / too many connections reply';

/** beanstalkd tube names allow letters, digits and `-+/;.$_()`: an IDN becomes its A-label. */
function tubeName(bucketKey: string, kind: 'conn' | 'rate'): string {
  const key = (domainToASCII(bucketKey) || bucketKey).replace(/[^A-Za-z0-9\-+/;.$_()]/g, '_');
  return `hedwig-limit-${key}-${kind}`.slice(0, 200);
}

function stat(stats: Stats, name: string): number {
  return Number(stats[name] ?? 0) || 0;
}

/** Serializes async sections: the shared client's used and watched tubes are per connection state. */
function createMutex() {
  let tail: Promise<unknown> = Promise.resolve();
  return <T>(section: () => Promise<T>): Promise<T> => {
    const run = tail.then(section, section);
    tail = run.catch(() => undefined);
    return run;
  };
}

export function createLimitStore(server: HostPort, options: { random?: () => number } = {}): LimitStore {
  const random = options.random ?? Math.random;
  const client = new BeanstalkClient(server, { connectTimeoutMs: 2000, commandTimeoutMs: 5000 });
  const exclusive = createMutex();
  let connecting: Promise<void> | undefined;

  async function ready(): Promise<BeanstalkClient> {
    if (!client.connected) {
      connecting ??= client.connect().finally(() => {
        connecting = undefined;
      });
      await connecting;
    }
    return client;
  }

  async function tubeStats(tube: string): Promise<Stats> {
    try {
      return await (await ready()).statsTube(tube);
    } catch (err) {
      if (err instanceof BeanstalkError && err.code === 'NOT_FOUND') return {};
      throw err;
    }
  }

  function retryDelay(base: number): number {
    return Math.round(Math.min(RETRY_MAX_MS, Math.max(RETRY_MIN_MS, base)) * (0.5 + random()));
  }

  /** Takes a token job from `tube`: a ready one (left over) or one of our own. Null when another worker took ours first. */
  function takeToken(tube: string): Promise<ReservedJob | null> {
    return exclusive(async () => {
      const beanstalk = await ready();
      if (beanstalk.tubesWatched.length !== 1 || beanstalk.tubesWatched[0] !== tube) await beanstalk.watchOnly(tube);
      const leftover = await beanstalk.reserve(0);
      if (leftover) return leftover;
      await beanstalk.putTo(tube, TOKEN, { ttrSeconds: TOKEN_TTR_SECONDS });
      return beanstalk.reserve(0);
    });
  }

  function holdToken(token: ReservedJob): () => void {
    // Touch well before the TTR: an expired reservation would free the slot of a live connection.
    const timer = setInterval(() => {
      token.touch().catch(() => undefined);
    }, (TOKEN_TTR_SECONDS * 1000) / 3);
    timer.unref();
    let released = false;
    return () => {
      if (released) return;
      released = true;
      clearInterval(timer);
      // If the connection to beanstalkd is gone, so is the reservation: nothing to give back.
      token.delete().catch(() => undefined);
    };
  }

  return {
    async connectionSlot(bucketKey, max, onContention) {
      const tube = tubeName(bucketKey, 'conn');
      const before = await tubeStats(tube);
      const paused = stat(before, 'pause-time-left');
      if (paused > 0) return { waitMs: paused * 1000, why: SHARED_BACKOFF };
      if (stat(before, 'current-jobs-reserved') >= max) {
        onContention?.();
        return { waitMs: retryDelay(100), why: `all ${max} connection slots in use` };
      }
      const token = await takeToken(tube);
      if (!token) return { waitMs: retryDelay(RETRY_MIN_MS), why: 'slot taken concurrently' };
      let holders: number;
      try {
        holders = stat(await tubeStats(tube), 'current-jobs-reserved');
      } catch (err) {
        await token.delete().catch(() => undefined);
        throw err;
      }
      if (holders <= max) return { ok: true, release: holdToken(token) };
      await token.delete().catch(() => undefined);
      onContention?.();
      return { waitMs: retryDelay(50), why: `all ${max} connection slots in use` };
    },

    async messageSlot(bucketKey, perWindow, windowSeconds) {
      const tube = tubeName(bucketKey, 'rate');
      const pollMs = retryDelay((windowSeconds * 1000) / perWindow / 2);
      const full = `${perWindow} messages in the last ${windowSeconds} s`;
      const before = await tubeStats(tube);
      const paused = stat(before, 'pause-time-left');
      if (paused > 0) return { waitMs: paused * 1000, why: SHARED_BACKOFF };
      if (stat(before, 'current-jobs-delayed') >= perWindow) return { waitMs: pollMs, why: full };
      const id = await exclusive(async () => {
        const beanstalk = await ready();
        const recordId = await beanstalk.putTo(tube, RECORD, { delaySeconds: windowSeconds, ttrSeconds: 1 });
        // Sweep records that left the window (they became ready); two per message keeps the tube small.
        for (let i = 0; i < 2; i++) {
          const expired = await beanstalk.peekReady();
          if (!expired) break;
          await beanstalk.deleteJob(expired.id).catch(() => undefined);
        }
        return recordId;
      });
      const inWindow = stat(await tubeStats(tube), 'current-jobs-delayed');
      if (inWindow <= perWindow) return { ok: true, release: () => {} };
      await client.deleteJob(id).catch(() => undefined);
      return { waitMs: pollMs, why: full };
    },

    pause(bucketKey, seconds) {
      for (const kind of ['conn', 'rate'] as const) {
        ready()
          .then((beanstalk) => beanstalk.pauseTube(tubeName(bucketKey, kind), seconds))
          .catch(() => undefined); // NOT_FOUND: that limit is not in use; unreachable: the local back-off still holds
      }
    },

    async close() {
      await client.close();
    },
  };
}
