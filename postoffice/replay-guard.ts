/**
 * Remembers signatures of signed requests until their timestamp leaves the signature
 * window (after that the timestamp check rejects a replay on its own).
 *
 * In memory and per process, bounded: past `maxEntries` the oldest entries are
 * forgotten, which under extreme load only weakens replay protection for the oldest
 * requests still inside the window.
 */
export class ReplayGuard {
  readonly #seen = new Map<string, number>();
  readonly #maxEntries: number;

  constructor(options: { maxEntries?: number } = {}) {
    this.#maxEntries = options.maxEntries ?? 200_000;
  }

  /** Records `signature` until `expiresAtMs`; false when it is already recorded (a replay). */
  claim(signature: string, expiresAtMs: number, nowMs: number): boolean {
    this.#prune(nowMs);
    const known = this.#seen.get(signature);
    if (known !== undefined && known > nowMs) return false;
    this.#seen.delete(signature);
    this.#seen.set(signature, expiresAtMs);
    while (this.#seen.size > this.#maxEntries) this.#seen.delete(this.#seen.keys().next().value!);
    return true;
  }

  /** Forgets a signature whose request was not accepted, so the client may resend the same bytes. */
  release(signature: string): void {
    this.#seen.delete(signature);
  }

  get size(): number {
    return this.#seen.size;
  }

  // Entries arrive roughly in expiry order; stopping at the first live one keeps this cheap.
  #prune(nowMs: number): void {
    for (const [signature, expiresAt] of this.#seen) {
      if (expiresAt > nowMs) return;
      this.#seen.delete(signature);
    }
  }
}
