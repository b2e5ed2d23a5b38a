/**
 * Waits `ms`, or less if `signal` aborts first; never rejects. Retry loops wait with it and
 * still stop at once on shutdown. (timers/promises' setTimeout rejects on abort, which would
 * make every caller tell a shutdown from an error.)
 */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}
