import { domainToASCII } from 'node:url';
import { BeanstalkClient, BeanstalkError, type ReservedJob, type Stats } from '../shared/beanstalk.ts';
import { errorCode, errorMessage } from '../shared/errors.ts';
import type { Logger } from '../shared/logger.ts';
import type { Verdict } from './classify.ts';
import { sleep } from '../shared/sleep.ts';

/**
 * Per-destination limits that hold across every worker process: concurrent connections
 * and messages per minute per destination domain, or per group of domains that share an
 * MX provider. The shared state lives in beanstalkd (the one server every worker already
 * reaches), in two tubes per destination:
 *
 *  - `hedwig-limit-<dest>-conn`: a connection slot is a *reserved* token job. A worker
 *    takes a ready token (or puts one and reserves it), then counts the tube's reserved
 *    jobs; with at most `maxConnections` reserved it holds the slot until the SMTP
 *    connection closes, then deletes the token; otherwise it deletes it and waits. The
 *    last of any N+1 concurrent takers always counts N+1, so the limit cannot be
 *    exceeded; a collision only costs a retry. No seeding is needed, a changed limit
 *    applies at once, and a worker that dies loses its reservations with its beanstalkd
 *    connection: the slots free themselves (tokens are touched while held, so TTR never
 *    frees a live one).
 *  - `hedwig-limit-<dest>-rate`: each message puts a record delayed by the window (60 s);
 *    the tube's delayed count is the number of messages in the last window. Over the
 *    limit, the record is deleted again and the sender waits. Expired (ready) records
 *    are swept by the next senders.
 *
 * A 421 or "too many connections" reply makes the destination back off: locally, and for
 * limited destinations also in beanstalkd (pause-tube on its tubes), so every worker
 * waits. A worker waits at most `maxWaitMs` for a slot, then defers the recipients.
 */

export interface DestinationLimit {
  maxConnections?: number;
  messagesPerMinute?: number;
}

export interface DestinationGroup extends DestinationLimit {
  /** Recipient domains in the group. */
  domains: string[];
  /** MX host name suffixes that put a domain in the group (e.g. `.google.com`). */
  mxSuffixes: string[];
}

export interface LimitSettings {
  /** beanstalkd holding the shared counters; every worker must use the same one. */
  server?: { host: string; port: number };
  default: DestinationLimit;
  domains: Readonly<Record<string, DestinationLimit>>;
  groups: Readonly<Record<string, DestinationGroup>>;
  /** The messagesPerMinute window (a sliding window of this length allows messagesPerMinute × windowSeconds / 60). */
  windowSeconds: number;
  maxWaitMs: number;
  backoffSeconds: number;
}

export interface Destination {
  /** `example.com`, or `group.<name>` for a group. */
  key: string;
  limit: DestinationLimit;
}

export type Admission = { ok: true; release: () => void } | { ok: false; verdict: Verdict };

export interface Limiter {
  destinationFor(domain: string, mxNames: string[]): Destination;
  /** Before opening a connection; `release` when it closes. `onContention` is told when the limit is full (to close own idle connections). */
  connectionSlot(destination: Destination, signal?: AbortSignal, onContention?: () => void): Promise<Admission>;
  /** Before each transaction. */
  messageSlot(destination: Destination, signal?: AbortSignal): Promise<Admission>;
  /** After a reply that asks us to slow down; while backing off, refusals repeat that reply (it stays the recipients' reason). */
  backOff(destination: Destination, reply: Verdict): void;
  close(): Promise<void>;
}

const TOKEN = Buffer.from('slot');
const RECORD = Buffer.from('sent');
const TOKEN_TTR_SECONDS = 60;
const RETRY_MIN_MS = 20;
const RETRY_MAX_MS = 500;

/** The limits that apply to mail for `domain`: its own entry, else a group (by domain or MX name), else the default. */
export function destinationFor(settings: Pick<LimitSettings, 'default' | 'domains' | 'groups'>, rawDomain: string, mxNames: string[]): Destination {
  const domain = rawDomain.toLowerCase();
  const own = settings.domains[domain];
  if (own) return { key: domain, limit: own };
  for (const [name, group] of Object.entries(settings.groups)) {
    const byDomain = group.domains.includes(domain);
    const byMx = mxNames.some((mx) => group.mxSuffixes.some((suffix) => mx.toLowerCase().endsWith(suffix.toLowerCase())));
    if (byDomain || byMx) return { key: `group.${name}`, limit: { maxConnections: group.maxConnections, messagesPerMinute: group.messagesPerMinute } };
  }
  return { key: domain, limit: settings.default };
}

/** RFC 5321 421 (service closing), or any reply complaining about too many connections. */
export function asksToBackOff(response: string): boolean {
  return /^421[ -]/.test(response) || /too many (?:concurrent |simultaneous )?(?:connections|sessions)/i.test(response);
}

function limited(destination: Destination): boolean {
  return destination.limit.maxConnections !== undefined || destination.limit.messagesPerMinute !== undefined;
}

/** beanstalkd tube names allow letters, digits and `-+/;.$_()`: an IDN becomes its A-label. */
function tubeName(destination: Destination, kind: 'conn' | 'rate'): string {
  const key = (domainToASCII(destination.key) || destination.key).replace(/[^A-Za-z0-9\-+/;.$_()]/g, '_');
  return `hedwig-limit-${key}-${kind}`.slice(0, 200);
}

function refusal(response: string): Admission {
  return { ok: false, verdict: { outcome: 'deferred', greylisted: false, responseCode: 451, enhancedCode: '4.4.5', response: `451 4.4.5 ${response}` } };
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

export function createLimiter(settings: LimitSettings, options: { logger: Logger; now?: () => number; random?: () => number }): Limiter {
  const now = options.now ?? Date.now;
  const random = options.random ?? Math.random;
  const log = options.logger.child({ component: 'limits' });
  /** destination key -> local back-off end (ms) and the reply that caused it. */
  const backoffUntil = new Map<string, { until: number; reply: Verdict }>();
  const client = settings.server ? new BeanstalkClient(settings.server, { connectTimeoutMs: 2000, commandTimeoutMs: 5000 }) : undefined;
  const exclusive = createMutex();
  let connecting: Promise<void> | undefined;
  let lastWarnedAt = 0;

  async function ready(): Promise<BeanstalkClient> {
    if (!client) throw new BeanstalkError('DISCONNECTED', 'no limits server configured');
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

  function warnUnavailable(err: unknown): void {
    if (now() - lastWarnedAt < 60_000) return;
    lastWarnedAt = now();
    log.warn({ event: 'limits_unavailable', code: errorCode(err), message: errorMessage(err) }, 'cannot reach the limits server; deliveries to limited destinations wait');
  }

  function retryDelay(base: number): number {
    return Math.round(Math.min(RETRY_MAX_MS, Math.max(RETRY_MIN_MS, base)) * (0.5 + random()));
  }

  /** The local back-off left for a destination, ms (0 when none). */
  function localBackoff(destination: Destination): { leftMs: number; reply?: Verdict } {
    const entry = backoffUntil.get(destination.key);
    if (entry === undefined) return { leftMs: 0 };
    const left = entry.until - now();
    if (left <= 0) backoffUntil.delete(destination.key);
    return left > 0 ? { leftMs: left, reply: entry.reply } : { leftMs: 0 };
  }

  /**
   * Runs `attempt` until it admits, the deadline passes or shutdown. `attempt` returns
   * 'admitted' or a wait in ms (with why), and may throw when beanstalkd is unreachable.
   */
  async function admit(destination: Destination, what: string, signal: AbortSignal | undefined, attempt: () => Promise<Admission | { waitMs: number; why: string }>): Promise<Admission> {
    const deadline = now() + settings.maxWaitMs;
    let why = 'busy';
    for (;;) {
      if (signal?.aborted) return refusal(`delivery interrupted by shutdown while waiting for a ${what} slot for ${destination.key}`);
      const backoff = localBackoff(destination);
      let waitMs: number;
      if (backoff.reply) {
        // The destination's own words stay the recipients' reason (and the bounce's diagnostic).
        if (backoff.leftMs > deadline - now()) return { ok: false, verdict: { ...backoff.reply, outcome: 'deferred' } };
        why = 'backing off after a 421 / too many connections reply';
        waitMs = backoff.leftMs;
      } else {
        try {
          const outcome = await attempt();
          if ('ok' in outcome) return outcome;
          ({ waitMs, why } = outcome);
        } catch (err) {
          warnUnavailable(err);
          why = `limits server unavailable (${errorCode(err) ?? errorMessage(err)})`;
          waitMs = 250;
        }
      }
      const left = deadline - now();
      if (waitMs > left) return refusal(`hedwig: ${what} limit for ${destination.key}: ${why}; not within ${settings.maxWaitMs} ms`);
      await sleep(waitMs, signal);
    }
  }

  /** Takes a token job from `tube`: a ready one (left over) or one of our own. Null when another worker took ours first. */
  function takeToken(tube: string): Promise<ReservedJob | null> {
    return exclusive(async () => {
      const beanstalk = await ready();
      if (beanstalk.tubesWatched.length !== 1 || beanstalk.tubesWatched[0] !== tube) await beanstalk.watchOnly(tube);
      const leftover = await beanstalk.reserve(0);
      if (leftover) return leftover;
      if (beanstalk.tubeUsed !== tube) await beanstalk.use(tube);
      await beanstalk.put(TOKEN, { ttrSeconds: TOKEN_TTR_SECONDS });
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

  async function connectionAttempt(destination: Destination, max: number, onContention?: () => void): Promise<Admission | { waitMs: number; why: string }> {
    const tube = tubeName(destination, 'conn');
    const before = await tubeStats(tube);
    const paused = stat(before, 'pause-time-left');
    if (paused > 0) return { waitMs: paused * 1000, why: 'backing off (shared) after a 421 / too many connections reply' };
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
  }

  async function messageAttempt(destination: Destination, perWindow: number): Promise<Admission | { waitMs: number; why: string }> {
    const tube = tubeName(destination, 'rate');
    const pollMs = retryDelay((settings.windowSeconds * 1000) / perWindow / 2);
    const before = await tubeStats(tube);
    const paused = stat(before, 'pause-time-left');
    if (paused > 0) return { waitMs: paused * 1000, why: 'backing off (shared) after a 421 / too many connections reply' };
    if (stat(before, 'current-jobs-delayed') >= perWindow) return { waitMs: pollMs, why: `${perWindow} messages in the last ${settings.windowSeconds} s` };
    const id = await exclusive(async () => {
      const beanstalk = await ready();
      if (beanstalk.tubeUsed !== tube) await beanstalk.use(tube);
      const recordId = await beanstalk.put(RECORD, { delaySeconds: settings.windowSeconds, ttrSeconds: 1 });
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
    await client!.deleteJob(id).catch(() => undefined);
    return { waitMs: pollMs, why: `${perWindow} messages in the last ${settings.windowSeconds} s` };
  }

  return {
    destinationFor: (domain, mxNames) => destinationFor(settings, domain, mxNames),

    async connectionSlot(destination, signal, onContention) {
      const max = destination.limit.maxConnections;
      if (max === undefined || !client) {
        return admit(destination, 'connection', signal, async () => ({ ok: true, release: () => {} }));
      }
      return admit(destination, 'connection', signal, () => connectionAttempt(destination, max, onContention));
    },

    async messageSlot(destination, signal) {
      const perMinute = destination.limit.messagesPerMinute;
      if (perMinute === undefined || !client) return admit(destination, 'message', signal, async () => ({ ok: true, release: () => {} }));
      const perWindow = Math.max(1, Math.floor((perMinute * settings.windowSeconds) / 60));
      return admit(destination, 'message', signal, () => messageAttempt(destination, perWindow));
    },

    backOff(destination, reply) {
      const seconds = settings.backoffSeconds;
      if (seconds <= 0) return;
      backoffUntil.set(destination.key, { until: now() + seconds * 1000, reply });
      log.warn({ event: 'destination_backoff', destination: destination.key, seconds, response: reply.response }, 'destination asked us to slow down');
      if (!client || !limited(destination)) return;
      for (const kind of ['conn', 'rate'] as const) {
        ready()
          .then((beanstalk) => beanstalk.pauseTube(tubeName(destination, kind), seconds))
          .catch(() => undefined); // NOT_FOUND: that limit is not in use; unreachable: the local back-off still holds
      }
    },

    async close() {
      await client?.close();
    },
  };
}
