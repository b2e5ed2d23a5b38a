import { isIP } from 'node:net';
import { z } from 'zod';
import type { Logger } from '../shared/logger.ts';

/**
 * Throttles authentication failures (issue 12.11: the form route answered thousands of
 * wrong keys a second, one log line each) and logs them aggregated.
 *
 * Two fixed-window counters: per client address, and per (client address, fqdn). Over
 * either limit, requests from that address (for that fqdn) are answered 429 with
 * Retry-After until the window ends, before any work on them. A success clears the
 * (address, fqdn) counter.
 *
 * Deliberately no counter per fqdn alone: anyone could then lock an enrolled host out by
 * failing on its name from elsewhere, and guessing a 256-bit key needs no throttle to be
 * hopeless. The per-address limit stops one source trying many names; the per-pair limit
 * stops one source hammering one name well below that. A host shares a lock-out only with
 * whoever fails from its own address (the same host, or the same NAT). IPv6 clients count
 * per /64, the block one subscriber usually gets.
 *
 * Memory is bounded: past `maxEntries` counters the oldest are forgotten.
 */

export const authFailuresConfigSchema = z
  .object({
    windowSeconds: z.number().int().positive().default(60),
    /** Failures from one address (any fqdn) per window before it gets 429. */
    maxPerAddress: z.number().int().positive().default(30),
    /** Failures from one address for one fqdn per window before that pair gets 429. */
    maxPerAddressAndFqdn: z.number().int().positive().default(10),
  })
  .strict()
  .prefault({});
export type AuthFailuresConfig = z.infer<typeof authFailuresConfigSchema>;

const MAX_ENTRIES = 100_000;
const MAX_FQDN = 255;

/** The address a client is counted under: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by its /64. */
export function sourceOf(ip: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
  if (mapped) return mapped[1]!;
  if (isIP(ip) !== 6) return ip;
  const [head = '', tail = ''] = ip.toLowerCase().split('::');
  const left = head ? head.split(':') : [];
  const right = tail ? tail.split(':') : [];
  const groups = ip.includes('::') ? [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right] : left;
  return `${groups.slice(0, 4).map((g) => Number.parseInt(g, 16).toString(16)).join(':')}::/64`;
}

interface Counter {
  windowStart: number;
  failures: number;
}

/** What one interval's log line says about one (address, fqdn). */
interface Tally {
  source: string;
  fqdn: string | undefined;
  failures: number;
  throttled: number;
  reasons: Record<string, number>;
}

export class AuthThrottle {
  readonly #windowMs: number;
  readonly #config: AuthFailuresConfig;
  readonly #logger: Logger;
  readonly #now: () => number;
  readonly #counters = new Map<string, Counter>();
  #tallies = new Map<string, Tally>();
  readonly #timer: NodeJS.Timeout;
  readonly #onFailure: ((reason: string) => void) | undefined;

  constructor(config: AuthFailuresConfig, options: { logger: Logger; now?: () => number; onFailure?: (reason: string) => void }) {
    this.#config = config;
    this.#onFailure = options.onFailure;
    this.#windowMs = config.windowSeconds * 1000;
    this.#logger = options.logger;
    this.#now = options.now ?? Date.now;
    this.#timer = setInterval(() => this.flush(), this.#windowMs);
    this.#timer.unref();
  }

  /** Seconds until `ip` (for `fqdn`, when given) may try again; undefined when it may now. */
  retryAfter(ip: string, fqdn?: string): number | undefined {
    const source = sourceOf(ip);
    const now = this.#now();
    const checks: Array<[string, number]> = [[source, this.#config.maxPerAddress]];
    if (fqdn !== undefined) checks.push([pairKey(source, fqdn), this.#config.maxPerAddressAndFqdn]);
    let wait: number | undefined;
    for (const [key, max] of checks) {
      const counter = this.#current(key, now);
      if (counter && counter.failures >= max) wait = Math.max(wait ?? 0, Math.ceil((counter.windowStart + this.#windowMs - now) / 1000));
    }
    if (wait !== undefined) this.#tally(source, fqdn).throttled++;
    return wait;
  }

  /** An authentication failure; `reason` is what the log says (`unknown_fqdn`, `bad_signature`, ...). */
  failed(ip: string, fqdn: string | undefined, reason: string): void {
    const source = sourceOf(ip);
    const now = this.#now();
    this.#count(source, now);
    if (fqdn !== undefined) this.#count(pairKey(source, fqdn), now);
    this.#onFailure?.(reason);
    const tally = this.#tally(source, fqdn);
    tally.failures++;
    tally.reasons[reason] = (tally.reasons[reason] ?? 0) + 1;
  }

  /** A client that authenticated: its own failures from this address are forgiven. */
  succeeded(ip: string, fqdn: string): void {
    this.#counters.delete(pairKey(sourceOf(ip), fqdn));
  }

  /** One `auth_failures` line per (address, fqdn) seen since the last flush. */
  flush(): void {
    const tallies = this.#tallies;
    this.#tallies = new Map();
    for (const t of tallies.values()) {
      this.#logger.warn(
        { event: 'auth_failures', ip: t.source, fqdn: t.fqdn, failures: t.failures, throttled: t.throttled, reasons: t.reasons, intervalSeconds: this.#config.windowSeconds },
        'authentication failures from one client address',
      );
    }
  }

  /** Stops the interval timer and logs what was counted so far. */
  close(): void {
    clearInterval(this.#timer);
    this.flush();
  }

  #current(key: string, now: number): Counter | undefined {
    const counter = this.#counters.get(key);
    if (counter && now - counter.windowStart >= this.#windowMs) {
      this.#counters.delete(key);
      return undefined;
    }
    return counter;
  }

  #count(key: string, now: number): void {
    const counter = this.#current(key, now) ?? { windowStart: now, failures: 0 };
    counter.failures++;
    this.#counters.delete(key);
    this.#counters.set(key, counter);
    while (this.#counters.size > MAX_ENTRIES) this.#counters.delete(this.#counters.keys().next().value!);
  }

  #tally(source: string, fqdn: string | undefined): Tally {
    const name = fqdn?.slice(0, MAX_FQDN);
    const key = pairKey(source, name ?? '');
    let tally = this.#tallies.get(key);
    if (!tally) {
      // Bounded like the counters: a flood of distinct names cannot grow this past MAX_ENTRIES per interval.
      if (this.#tallies.size >= MAX_ENTRIES) return { source, fqdn: name, failures: 0, throttled: 0, reasons: {} };
      tally = { source, fqdn: name, failures: 0, throttled: 0, reasons: {} };
      this.#tallies.set(key, tally);
    }
    return tally;
  }
}

function pairKey(source: string, fqdn: string): string {
  return `${source}\n${fqdn.toLowerCase().slice(0, MAX_FQDN)}`;
}
