/**
 * One TCP connection to beanstalkd through its own fivebeans 1.5.0 client.
 *
 * fivebeans parses the protocol correctly but its callbacks never fire when the server goes
 * away, its errors are bare strings and an unhandled 'error' event crashes the process
 * (DESIGN.md). This wrapper tracks the pending commands itself, rejects them all on close,
 * maps reply words to codes and times out commands. A connection is never reused after it
 * closed: a second connect() on a fivebeans client keeps stale state.
 */
import type { EventEmitter } from 'node:events';
import { createRequire } from 'node:module';
import type { Socket } from 'node:net';
import { BeanstalkError, serverError } from './beanstalk-protocol.ts';
import { formatHostPort, type HostPort } from './host-port.ts';

export type BeanstalkAddress = HostPort;

type FivebeansCallback = (err: unknown, ...results: unknown[]) => void;

interface FivebeansClient extends EventEmitter {
  stream: Socket | null;
  connect(): void;
  tryHandlingResponse(): void;
}

export type FivebeansCommand =
  | 'use'
  | 'put'
  | 'watch'
  | 'ignore'
  | 'reserve_with_timeout'
  | 'reserve_job'
  | 'destroy'
  | 'release'
  | 'bury'
  | 'touch'
  | 'kick'
  | 'kick_job'
  | 'peek'
  | 'peek_ready'
  | 'peek_delayed'
  | 'peek_buried'
  | 'list_tube_used'
  | 'list_tubes'
  | 'list_tubes_watched'
  | 'stats'
  | 'stats_tube'
  | 'pause_tube'
  | 'stats_job';

// The package root also loads the worker/runner (yargs, config files): take only the client.
const FivebeansClientClass = createRequire(import.meta.url)('fivebeans/lib/client.js') as new (host: string, port: number) => FivebeansClient;

function sendFivebeans(client: FivebeansClient, command: FivebeansCommand, args: unknown[], callback: FivebeansCallback): void {
  if (command === 'reserve_job') {
    // beanstalkd 1.12's `reserve-job <id>` is newer than fivebeans 1.5, whose command table and
    // reply parser are private. It answers exactly like reserve-with-timeout (RESERVED <id>
    // <bytes>, or NOT_FOUND), so send that command through fivebeans with its written line
    // swapped: fivebeans queues the right reply handler, the server sees reserve-job.
    const stream = client.stream!;
    const write = stream.write;
    stream.write = ((_chunk: unknown, ...rest: unknown[]) => {
      stream.write = write;
      return (write as (...a: unknown[]) => boolean).call(stream, `reserve-job ${String(args[0])}\r\n`, ...rest);
    }) as typeof stream.write;
    (client as unknown as Record<string, (...a: unknown[]) => void>).reserve_with_timeout!(0, callback);
    return;
  }
  (client as unknown as Record<FivebeansCommand, (...a: unknown[]) => void>)[command](...args, callback);
}

interface PendingCommand {
  command: string;
  timeoutMs: number;
  timer?: NodeJS.Timeout;
  settle(err: BeanstalkError | null, results: unknown[]): void;
}

/**
 * One TCP connection through its own fivebeans client. Pending commands are kept here in
 * send order (the order beanstalkd answers them): only the oldest one runs its timeout,
 * so a command queued behind a long reserve is not timed out for the reserve's wait.
 */
export class Connection {
  private readonly client: FivebeansClient;
  private readonly pending: PendingCommand[] = [];
  private lastError: unknown;
  private isOpen = false;
  private isClosed = false;
  private isDropped = false;
  private readonly closed: Promise<void>;
  private markClosed!: () => void;

  constructor(
    readonly address: BeanstalkAddress,
    private readonly onClose: (connection: Connection, cause: unknown) => void,
  ) {
    this.closed = new Promise((resolve) => (this.markClosed = resolve));
    this.client = new FivebeansClientClass(address.host, address.port);
    // fivebeans re-emits socket errors; without a listener they would crash the process.
    this.client.on('error', (err: unknown) => {
      this.lastError = err;
    });
    this.client.on('close', () => this.handleClose());
    // A throw inside fivebeans' parser would escape from a socket 'data' listener as an
    // uncaught exception: turn it into a dropped connection instead.
    const parse = this.client.tryHandlingResponse;
    this.client.tryHandlingResponse = () => {
      try {
        parse.call(this.client);
      } catch (err) {
        this.drop(new BeanstalkError('PROTOCOL', 'unparseable reply from beanstalkd', { cause: err }));
      }
    };
  }

  get open(): boolean {
    return this.isOpen && !this.isClosed && !this.isDropped;
  }

  /** Resolves once TCP is connected; rejects with DISCONNECTED otherwise. */
  start(connectTimeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.drop(new BeanstalkError('TIMEOUT', `no connection within ${connectTimeoutMs} ms`)), connectTimeoutMs);
      const onConnect = (): void => {
        clearTimeout(timer);
        this.client.removeListener('close', onFailure);
        this.isOpen = true;
        resolve();
      };
      const onFailure = (): void => {
        clearTimeout(timer);
        this.client.removeListener('connect', onConnect);
        reject(new BeanstalkError('DISCONNECTED', `cannot connect to beanstalkd at ${this.server}: ${describeCause(this.lastError)}`, { cause: this.lastError }));
      };
      this.client.once('connect', onConnect);
      this.client.once('close', onFailure);
      this.client.connect();
      // Commands are small writes answered one by one: Nagle would delay each by a round trip.
      this.client.stream?.setNoDelay(true);
      // A peer that vanished without a FIN is otherwise only noticed by a command timeout.
      this.client.stream?.setKeepAlive(true, 15_000);
    });
  }

  get server(): string {
    return formatHostPort(this.address);
  }

  command(command: FivebeansCommand, args: unknown[], timeoutMs: number): Promise<unknown[]> {
    if (!this.open) return Promise.reject(new BeanstalkError('DISCONNECTED', `not connected to beanstalkd at ${this.server}`));
    return new Promise((resolve, reject) => {
      let settled = false;
      const entry: PendingCommand = {
        command,
        timeoutMs,
        settle: (err, results) => {
          if (settled) return;
          settled = true;
          if (entry.timer) clearTimeout(entry.timer);
          const index = this.pending.indexOf(entry);
          if (index >= 0) this.pending.splice(index, 1);
          this.armOldest();
          if (err) reject(err);
          else resolve(results);
        },
      };
      this.pending.push(entry);
      this.armOldest();
      sendFivebeans(this.client, command, args, (err, ...results) => {
        entry.settle(err ? serverError(err, command) : null, results);
      });
    });
  }

  /** Closes the socket; pending commands reject with DISCONNECTED (or `reason`'s code for the oldest when it timed out). */
  drop(reason?: unknown): Promise<void> {
    if (reason !== undefined && this.lastError === undefined) this.lastError = reason;
    // No new commands from here on, even before the socket reports 'close'.
    this.isDropped = true;
    this.client.stream?.destroy();
    // Never connected sockets may already be gone without a 'close' still to come.
    if (!this.client.stream) this.handleClose();
    return this.closed;
  }

  private armOldest(): void {
    const oldest = this.pending[0];
    if (!oldest || oldest.timer) return;
    oldest.timer = setTimeout(() => {
      // A process that was frozen (SIGSTOP, a long GC pause, a stalled VM) wakes up with this
      // timer expired while the reply may already wait in the socket: the event loop runs
      // expired timers before its poll phase reads sockets. Give the verdict in the check
      // phase (setImmediate), after the poll phase had its chance to deliver the reply; a put
      // that did land is then answered as landed, not as an ambiguous TIMEOUT.
      setImmediate(() => {
        if (!this.pending.includes(oldest)) return;
        // Protocol state is unknown now (the reply may still come): the connection cannot be reused.
        oldest.settle(new BeanstalkError('TIMEOUT', `beanstalkd did not answer ${oldest.command} within ${oldest.timeoutMs} ms`), []);
        void this.drop(new BeanstalkError('TIMEOUT', `command ${oldest.command} timed out`));
      });
    }, oldest.timeoutMs);
  }

  private handleClose(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    const cause = this.lastError;
    for (const entry of this.pending.splice(0)) {
      entry.settle(new BeanstalkError('DISCONNECTED', `connection to beanstalkd at ${this.server} closed during ${entry.command}`, { cause }), []);
    }
    this.markClosed();
    this.onClose(this, cause);
  }
}

export function describeCause(err: unknown): string {
  if (err instanceof Error) return (err as NodeJS.ErrnoException).code ?? err.message;
  return err === undefined ? 'connection closed' : String(err);
}
