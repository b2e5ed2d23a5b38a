import { Counter, Gauge, type Registry } from 'prom-client';
import { errorMessage } from '../errors.ts';
import type { Logger } from '../logger.ts';

/**
 * Whether the store answers, as seen by one process: one `store_unavailable` warning when
 * operations start failing (then at most one a minute), one `store_recovered` when one works
 * again, and a counter of failures per operation. The callers go on without the store.
 */
export class StoreHealth {
  readonly #logger: Logger;
  readonly #errors: Counter<'operation'>;
  readonly #up: Gauge;
  #failingSince = 0;
  #toldAt = 0;

  constructor(logger: Logger, registry: Registry, private readonly url: string) {
    this.#logger = logger;
    this.#errors =
      (registry.getSingleMetric('hedwig_store_errors_total') as Counter<'operation'> | undefined) ??
      new Counter({ name: 'hedwig_store_errors_total', help: 'Store operations that failed or timed out (the tier went on without the store), by operation.', labelNames: ['operation'], registers: [registry] });
    this.#up = (registry.getSingleMetric('hedwig_store_up') as Gauge | undefined) ?? new Gauge({ name: 'hedwig_store_up', help: '1 while the last store operation worked, 0 after a failure.', registers: [registry] });
    this.#up.set(1);
  }

  get available(): boolean {
    return this.#failingSince === 0;
  }

  failed(operation: string, err: unknown): void {
    this.#errors.inc({ operation });
    this.#up.set(0);
    const now = Date.now();
    if (this.#failingSince === 0) this.#failingSince = now;
    if (now - this.#toldAt >= 60_000) {
      this.#toldAt = now;
      this.#logger.warn({ event: 'store_unavailable', operation, url: this.url, error: errorMessage(err) }, 'the store is unavailable; going on without it');
    }
  }

  worked(): void {
    if (this.#failingSince === 0) return;
    this.#logger.info({ event: 'store_recovered', url: this.url, downMs: Date.now() - this.#failingSince }, 'the store answers again');
    this.#failingSince = 0;
    this.#toldAt = 0;
    this.#up.set(1);
  }
}
