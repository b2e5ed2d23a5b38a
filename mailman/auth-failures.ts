/**
 * SMTP AUTH failures per client address in fixed windows: over `max` in the current window,
 * the address is locked out until the window ends. A success does not clear the count (one
 * valid account must not reset an attacker's guesses at another). IPv4-mapped IPv6 addresses
 * count as their IPv4 form. Memory is bounded: past MAX_ENTRIES addresses the oldest are forgotten.
 */
const MAX_ENTRIES = 10_000;

interface Window {
  start: number;
  failures: number;
}

export class AuthFailures {
  readonly #max: number;
  readonly #windowMs: number;
  readonly #now: () => number;
  readonly #windows = new Map<string, Window>();

  constructor(options: { max: number; windowSeconds: number; now?: () => number }) {
    this.#max = options.max;
    this.#windowMs = options.windowSeconds * 1000;
    this.#now = options.now ?? Date.now;
  }

  /** Seconds until `address` may try again; undefined while it may try now. */
  lockedFor(address: string): number | undefined {
    const now = this.#now();
    const window = this.#current(key(address), now);
    if (!window || window.failures < this.#max) return undefined;
    return Math.max(1, Math.ceil((window.start + this.#windowMs - now) / 1000));
  }

  /** Counts one failure; returns the failures of `address` in the current window. */
  failed(address: string): number {
    const now = this.#now();
    const k = key(address);
    const window = this.#current(k, now) ?? { start: now, failures: 0 };
    window.failures++;
    this.#windows.delete(k);
    this.#windows.set(k, window);
    while (this.#windows.size > MAX_ENTRIES) this.#windows.delete(this.#windows.keys().next().value!);
    return window.failures;
  }

  #current(k: string, now: number): Window | undefined {
    const window = this.#windows.get(k);
    if (window && now - window.start >= this.#windowMs) {
      this.#windows.delete(k);
      return undefined;
    }
    return window;
  }
}

function key(address: string): string {
  return address.replace(/^::ffff:(?=\d+\.)/i, '').toLowerCase();
}
