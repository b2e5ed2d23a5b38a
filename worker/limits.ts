import { z } from 'zod';
import { errorCode, errorMessage } from '../shared/errors.ts';
import { hostPortSchema } from '../shared/config.ts';
import type { HostPort } from '../shared/host-port.ts';
import { domainName } from '../shared/job.ts';
import type { Logger } from '../shared/logger.ts';
import { sleep } from '../shared/sleep.ts';
import { ownVerdict, type Verdict } from './classify.ts';
import { createLimitStore, type LimitStore, type StoreAttempt } from './limit-store.ts';

/**
 * Per-destination limits that hold across every worker process: concurrent connections
 * and messages per minute per destination domain, or per group of domains that share an
 * MX provider. Mail is counted in a *limit bucket*: the domain's own, or its group's. The
 * shared counters live in beanstalkd (limit-store.ts).
 *
 * A 421 or "too many connections" reply makes the bucket back off: locally, and for
 * limited buckets also in beanstalkd (pause-tube on its tubes), so every worker waits. A
 * worker waits at most `maxWaitMs` for a slot, then defers the recipients.
 */

const limitSchema = z
  .object({
    maxConnections: z.number().int().min(1).optional(),
    messagesPerMinute: z.number().int().min(1).optional(),
  })
  .strict();

/** `limits`: per-destination limits shared by all workers through beanstalkd. */
export const limitsSchema = z
  .object({
    /** beanstalkd that holds the shared counters, `host[:port]`; default: the first of beanstalk.servers. Every worker must use the same one. */
    server: hostPortSchema(11300).optional(),
    /** Applies to every destination domain without its own entry or group. */
    default: limitSchema.prefault({}),
    domains: z.record(domainName, limitSchema).default({}),
    groups: z
      .record(
        z.string().regex(/^[A-Za-z0-9_.-]{1,100}$/, { message: 'a group name: letters, digits, _ . -' }),
        limitSchema.extend({ domains: z.array(domainName).default([]), mxSuffixes: z.array(z.string().min(1)).default([]) }),
      )
      .default({}),
    windowSeconds: z.number().int().min(1).max(3600).default(60),
    /**
     * The share of this worker's concurrency one destination may hold at a time (issue 12:
     * slow destinations must not take every reserve loop); at least one delivery.
     */
    workerShare: z.number().gt(0).max(1).default(0.5),
    maxWaitMs: z.number().int().nonnegative().default(10_000),
    backoffSeconds: z.number().int().nonnegative().default(60),
  })
  .strict()
  .prefault({});
export type LimitsConfig = z.infer<typeof limitsSchema>;

export type Limit = z.infer<typeof limitSchema>;

export interface LimitGroup extends Limit {
  /** Recipient domains in the group. */
  domains: string[];
  /** MX host name suffixes that put a domain in the group (e.g. `.google.com`). */
  mxSuffixes: string[];
}

export interface LimitSettings {
  /** beanstalkd holding the shared counters; every worker must use the same one. */
  server?: HostPort;
  default: Limit;
  domains: Readonly<Record<string, Limit>>;
  groups: Readonly<Record<string, LimitGroup>>;
  /** The messagesPerMinute window (a sliding window of this length allows messagesPerMinute × windowSeconds / 60). */
  windowSeconds: number;
  maxWaitMs: number;
  backoffSeconds: number;
  /** Deliveries to one bucket in flight in this worker at most; unset: no cap. */
  maxInFlight?: number;
}

/** The limits section with its default server (the first beanstalkd the worker uses) and its in-flight cap. */
export function limitSettingsFrom(config: LimitsConfig, beanstalkServers: readonly HostPort[], concurrency?: number): LimitSettings {
  const { server, workerShare, ...rest } = config;
  return {
    ...rest,
    server: server ?? beanstalkServers[0],
    ...(concurrency !== undefined ? { maxInFlight: Math.max(1, Math.ceil(concurrency * workerShare)) } : {}),
  };
}

/** Where a delivery counts against limits: a recipient domain, or a group of domains. */
export interface LimitBucket {
  /** `example.com`, or `group.<name>` for a group. */
  key: string;
  limit: Limit;
}

export type Admission = { ok: true; release: () => void } | { ok: false; verdict: Verdict };

export interface Limiter {
  bucketFor(domain: string, mxNames: string[]): LimitBucket;
  /**
   * Before a delivery to the bucket starts, in this worker only: at most `maxInFlight` at a
   * time, so one slow destination (a tarpit) holds only a share of the reserve loops; the
   * others keep delivering to everyone else. `release` when the delivery ends.
   */
  deliverySlot(bucket: LimitBucket, signal?: AbortSignal): Promise<Admission>;
  /** Before opening a connection; `release` when it closes. `onContention` is told when the limit is full (to close own idle connections). */
  connectionSlot(bucket: LimitBucket, signal?: AbortSignal, onContention?: () => void): Promise<Admission>;
  /** Before each transaction. */
  messageSlot(bucket: LimitBucket, signal?: AbortSignal): Promise<Admission>;
  /** After a reply that asks us to slow down; while backing off, refusals repeat that reply (it stays the recipients' reason). */
  backOff(bucket: LimitBucket, reply: Verdict): void;
  close(): Promise<void>;
}

/** The limits that apply to mail for `domain`: its own entry, else a group (by domain or MX name), else the default. */
export function bucketFor(settings: Pick<LimitSettings, 'default' | 'domains' | 'groups'>, rawDomain: string, mxNames: string[]): LimitBucket {
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

function limited(bucket: LimitBucket): boolean {
  return bucket.limit.maxConnections !== undefined || bucket.limit.messagesPerMinute !== undefined;
}

function refusal(text: string): Admission {
  return { ok: false, verdict: ownVerdict('deferred', text, { code: 451, enhanced: '4.4.5' }) };
}

const ADMITTED: StoreAttempt = { ok: true, release: () => {} };

export function createLimiter(settings: LimitSettings, options: { logger: Logger; now?: () => number; random?: () => number; store?: LimitStore }): Limiter {
  const now = options.now ?? Date.now;
  const log = options.logger.child({ component: 'limits' });
  /** bucket key -> local back-off end (ms) and the reply that caused it. */
  const backoffUntil = new Map<string, { until: number; reply: Verdict }>();
  const store = options.store ?? (settings.server ? createLimitStore(settings.server, options.random ? { random: options.random } : {}) : undefined);
  let lastWarnedAt = 0;
  /** bucket key -> deliveries in flight in this worker, and who waits for one to end. */
  const inFlight = new Map<string, { count: number; waiting: Array<() => void> }>();

  function warnUnavailable(err: unknown): void {
    if (now() - lastWarnedAt < 60_000) return;
    lastWarnedAt = now();
    log.warn({ event: 'limits_unavailable', code: errorCode(err), message: errorMessage(err) }, 'cannot reach the limits server; deliveries to limited destinations wait');
  }

  /** The local back-off left for a bucket, ms (0 when none). */
  function localBackoff(bucket: LimitBucket): { leftMs: number; reply?: Verdict } {
    const entry = backoffUntil.get(bucket.key);
    if (entry === undefined) return { leftMs: 0 };
    const left = entry.until - now();
    if (left <= 0) backoffUntil.delete(bucket.key);
    return left > 0 ? { leftMs: left, reply: entry.reply } : { leftMs: 0 };
  }

  /** Runs `attempt` until it admits, the deadline passes or shutdown; `attempt` may throw when beanstalkd is unreachable. */
  async function admit(bucket: LimitBucket, what: string, signal: AbortSignal | undefined, attempt: () => Promise<StoreAttempt>): Promise<Admission> {
    const deadline = now() + settings.maxWaitMs;
    let why = 'busy';
    for (;;) {
      if (signal?.aborted) return refusal(`delivery interrupted by shutdown while waiting for a ${what} slot for ${bucket.key}`);
      const backoff = localBackoff(bucket);
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
      if (waitMs > left) return refusal(`hedwig: ${what} limit for ${bucket.key}: ${why}; not within ${settings.maxWaitMs} ms`);
      await sleep(waitMs, signal);
    }
  }

  function releaseDelivery(key: string): void {
    const entry = inFlight.get(key);
    if (!entry) return;
    const next = entry.waiting.shift();
    if (next) return next(); // the slot passes straight on
    entry.count--;
    if (entry.count === 0) inFlight.delete(key);
  }

  /** A local semaphore per bucket: waiters queue in order (no polling), bounded by maxWaitMs and shutdown. */
  async function deliverySlot(bucket: LimitBucket, signal: AbortSignal | undefined): Promise<Admission> {
    const max = settings.maxInFlight;
    if (max === undefined) return { ok: true, release: () => {} };
    const entry = inFlight.get(bucket.key) ?? { count: 0, waiting: [] };
    inFlight.set(bucket.key, entry);
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      releaseDelivery(bucket.key);
    };
    if (entry.count < max) {
      entry.count++;
      return { ok: true, release };
    }
    const admitted = await new Promise<boolean>((resolve) => {
      const done = (ok: boolean) => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        resolve(ok);
      };
      const turn = () => done(true);
      const giveUp = () => {
        const index = entry.waiting.indexOf(turn);
        if (index >= 0) entry.waiting.splice(index, 1);
        done(false);
      };
      const onAbort = () => giveUp();
      const timer = setTimeout(giveUp, settings.maxWaitMs);
      signal?.addEventListener('abort', onAbort, { once: true });
      entry.waiting.push(turn);
    });
    if (admitted) return { ok: true, release };
    if (signal?.aborted) return refusal(`delivery interrupted while waiting for a delivery slot for ${bucket.key}`);
    return refusal(`hedwig: ${max} deliveries to ${bucket.key} already in flight in this worker (its share of the worker's concurrency); not within ${settings.maxWaitMs} ms`);
  }

  return {
    bucketFor: (domain, mxNames) => bucketFor(settings, domain, mxNames),

    deliverySlot,

    async connectionSlot(bucket, signal, onContention) {
      const max = bucket.limit.maxConnections;
      if (max === undefined || !store) return admit(bucket, 'connection', signal, async () => ADMITTED);
      return admit(bucket, 'connection', signal, () => store.connectionSlot(bucket.key, max, onContention));
    },

    async messageSlot(bucket, signal) {
      const perMinute = bucket.limit.messagesPerMinute;
      if (perMinute === undefined || !store) return admit(bucket, 'message', signal, async () => ADMITTED);
      const perWindow = Math.max(1, Math.floor((perMinute * settings.windowSeconds) / 60));
      return admit(bucket, 'message', signal, () => store.messageSlot(bucket.key, perWindow, settings.windowSeconds));
    },

    backOff(bucket, reply) {
      const seconds = settings.backoffSeconds;
      if (seconds <= 0) return;
      backoffUntil.set(bucket.key, { until: now() + seconds * 1000, reply });
      log.warn({ event: 'destination_backoff', destination: bucket.key, seconds, response: reply.response }, 'destination asked us to slow down');
      if (store && limited(bucket)) store.pause(bucket.key, seconds);
    },

    async close() {
      await store?.close();
    },
  };
}
