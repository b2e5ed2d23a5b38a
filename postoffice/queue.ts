import type { BeanstalkAddress, PutOptions } from '../shared/beanstalk.ts';
import { errorCode } from '../shared/errors.ts';
import { formatHostPort } from '../shared/host-port.ts';

export interface QueuedJob {
  jobId: string;
  /** "host:port" of the beanstalkd that holds the job. */
  server: string;
}

/** What the HTTP app needs from the queue: a confirmed put, and whether a put can work now. */
export interface JobQueue {
  put(payload: Buffer): Promise<QueuedJob>;
  isReady(): boolean;
}

/** The part of BeanstalkClient used for putting (a fake implements it in tests). */
export interface PutClient {
  readonly address: BeanstalkAddress;
  readonly connected: boolean;
  /** The tube `put` goes to on this client (kept across reconnects). */
  readonly tubeUsed: string;
  use(tube: string): Promise<void>;
  put(payload: Buffer, options?: PutOptions): Promise<string>;
}

export interface QueueTarget extends PutOptions {
  tube: string;
}

// Errors that say "this server cannot take the job now": try the next one. TIMEOUT is
// ambiguous (the put may have landed and only the answer got lost), so failing over can
// queue a message twice; delivery is at-least-once, losing it is the worse outcome.
const FAILOVER_CODES = new Set(['DISCONNECTED', 'TIMEOUT', 'DRAINING']);

/**
 * Puts jobs to one or more beanstalkd servers, round-robin, failing over to the next
 * server when one is down. Connected servers are tried before disconnected ones.
 */
export class RoundRobinQueue implements JobQueue {
  readonly #clients: readonly PutClient[];
  readonly #tube: string;
  readonly #putOptions: PutOptions;
  #next = 0;

  constructor(clients: readonly PutClient[], target: QueueTarget) {
    if (clients.length === 0) throw new Error('RoundRobinQueue needs at least one client');
    const { tube, ...putOptions } = target;
    this.#clients = clients;
    this.#tube = tube;
    this.#putOptions = putOptions;
  }

  isReady(): boolean {
    return this.#clients.some((client) => client.connected);
  }

  async put(payload: Buffer): Promise<QueuedJob> {
    const start = this.#next;
    this.#next = (this.#next + 1) % this.#clients.length;
    const rotated = this.#clients.map((_, i) => this.#clients[(start + i) % this.#clients.length]!);
    const ordered = [...rotated.filter((c) => c.connected), ...rotated.filter((c) => !c.connected)];
    let lastError: unknown;
    for (const client of ordered) {
      try {
        // A client that was down at start-up never got to `use` the tube (the client only
        // remembers a tube once beanstalkd confirmed it): never put into the default tube.
        if (client.tubeUsed !== this.#tube) await client.use(this.#tube);
        const jobId = await client.put(payload, this.#putOptions);
        return { jobId, server: formatHostPort(client.address) };
      } catch (err) {
        lastError = err;
        if (!FAILOVER_CODES.has(errorCode(err) ?? '')) throw err;
      }
    }
    throw lastError;
  }
}
