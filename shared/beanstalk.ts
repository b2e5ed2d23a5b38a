/**
 * A typed promise wrapper around fivebeans 1.5.0 (`fivebeans/lib/client.js`).
 * One BeanstalkClient = one TCP connection at a time to one beanstalkd server.
 *
 * fivebeans parses the protocol correctly but is unsafe on its own (DESIGN.md): its callbacks
 * never fire when the server goes away, its errors are bare strings, an unhandled 'error'
 * event crashes the process and a second connect() on the same client keeps stale state.
 * So every TCP connection gets a fresh fivebeans client wrapped in a `Connection` that tracks
 * its own pending commands, and `BeanstalkClient` replaces connections, never repairs them.
 *
 * beanstalkd answers the commands of one connection strictly in order, and a reserve blocks
 * the connection until it returns: a command sent behind a pending reserve waits for it.
 * Use one client per concurrent reserver (and another for puts).
 */
import { EventEmitter } from 'node:events';
import { createRequire } from 'node:module';
import type { Socket } from 'node:net';
import { HedwigError } from './errors.ts';

export type BeanstalkErrorCode =
  | 'DISCONNECTED' // connection closed or never opened; pending ops are rejected with this
  | 'TIMEOUT' // a command got no answer within commandTimeoutMs (the connection is then dropped)
  | 'STALE_RESERVATION' // job op on a job reserved on an earlier connection (it went back to ready)
  | 'NOT_FOUND'
  | 'JOB_TOO_BIG'
  | 'DRAINING'
  | 'BURIED' // put succeeded but server was out of memory and buried the job
  | 'DEADLINE_SOON'
  | 'PROTOCOL'; // any other server error string (BAD_FORMAT, UNKNOWN_COMMAND, OUT_OF_MEMORY, ...) or an argument we refuse to send

export class BeanstalkError extends HedwigError {
  declare readonly code: BeanstalkErrorCode;
  /** The server's reply word (`NOT_FOUND`, `OUT_OF_MEMORY`, ...) when the server refused the command. */
  readonly reply?: string;
  constructor(code: BeanstalkErrorCode, message: string, options?: { cause?: unknown; reply?: string }) {
    super(code, message, options);
    this.name = 'BeanstalkError';
    if (options?.reply !== undefined) this.reply = options.reply;
  }
}

export interface BeanstalkAddress {
  host: string;
  port: number;
}

export interface BeanstalkClientOptions {
  connectTimeoutMs?: number; // default 5000
  commandTimeoutMs?: number; // default 10000, not applied to reserve (which uses its own timeout + margin)
  /** Reconnect automatically after a drop, with backoff (100 ms doubling to 5 s). Default true. */
  autoReconnect?: boolean;
}

export interface PutOptions {
  priority?: number; // default 1024
  delaySeconds?: number; // default 0
  ttrSeconds?: number; // default 300
}

/** A job reserved on a specific connection; its methods act on that same connection. */
export interface ReservedJob {
  id: string;
  payload: Buffer;
  /** "host:port" of the server it came from. */
  server: string;
  delete(): Promise<void>;
  /** Priority defaults to 1024 (beanstalkd needs one and does not tell us the job's own without stats-job). */
  release(options?: { priority?: number; delaySeconds?: number }): Promise<void>;
  bury(priority?: number): Promise<void>;
  touch(): Promise<void>;
}

/** Numbers stay numbers; every other value (names, booleans like `draining`) is a string. */
export type Stats = Record<string, string | number>;

export const DEFAULT_PRIORITY = 1024;
const DEFAULT_TTR_SECONDS = 300;
const MAX_UINT32 = 2 ** 32 - 1;
const RECONNECT_MIN_MS = 100;
const RECONNECT_MAX_MS = 5000;

// ---------------------------------------------------------------------------------------
// fivebeans, typed as far as we use it

type FivebeansCallback = (err: unknown, ...results: unknown[]) => void;

interface FivebeansClient extends EventEmitter {
  stream: Socket | null;
  connect(): void;
  tryHandlingResponse(): void;
}

type FivebeansCommand =
  | 'use'
  | 'put'
  | 'watch'
  | 'ignore'
  | 'reserve_with_timeout'
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
  | 'stats_job';

// The package root also loads the worker/runner (yargs, config files): take only the client.
const FivebeansClientClass = createRequire(import.meta.url)('fivebeans/lib/client.js') as new (host: string, port: number) => FivebeansClient;

function sendFivebeans(client: FivebeansClient, command: FivebeansCommand, args: unknown[], callback: FivebeansCallback): void {
  (client as unknown as Record<FivebeansCommand, (...a: unknown[]) => void>)[command](...args, callback);
}

// ---------------------------------------------------------------------------------------
// Server replies and arguments

const SERVER_ERROR_CODES: Record<string, BeanstalkErrorCode> = {
  NOT_FOUND: 'NOT_FOUND',
  JOB_TOO_BIG: 'JOB_TOO_BIG',
  DRAINING: 'DRAINING',
  BURIED: 'BURIED',
  DEADLINE_SOON: 'DEADLINE_SOON',
};

/** fivebeans hands server errors over as the bare first word of the reply (`'NOT_FOUND'`). */
export function serverError(reply: unknown, command: string): BeanstalkError {
  const word = typeof reply === 'string' ? reply : String(reply);
  const code = SERVER_ERROR_CODES[word] ?? 'PROTOCOL';
  return new BeanstalkError(code, `beanstalkd answered ${word} to ${command}`, { reply: word });
}

/** beanstalkd's tube name grammar; anything else (spaces, CR/LF) would also corrupt the command line. */
const TUBE_NAME = /^[A-Za-z0-9+/;.$_()][A-Za-z0-9\-+/;.$_()]{0,199}$/;
const JOB_ID = /^[0-9]{1,20}$/;

export function checkTube(tube: string): string {
  if (!TUBE_NAME.test(tube)) throw new BeanstalkError('PROTOCOL', `invalid tube name ${JSON.stringify(tube)}`);
  return tube;
}

export function checkJobId(id: string): string {
  if (typeof id !== 'string' || !JOB_ID.test(id)) throw new BeanstalkError('PROTOCOL', `invalid job id ${JSON.stringify(id)}`);
  return id;
}

export function checkUint(value: number, what: string, max = MAX_UINT32): number {
  if (!Number.isInteger(value) || value < 0 || value > max) throw new BeanstalkError('PROTOCOL', `invalid ${what} ${String(value)}`);
  return value;
}

function toStats(parsed: unknown): Stats {
  const stats: Stats = {};
  if (parsed && typeof parsed === 'object') {
    for (const [key, value] of Object.entries(parsed)) stats[key] = typeof value === 'number' ? value : String(value);
  }
  return stats;
}

function toStringList(parsed: unknown): string[] {
  return Array.isArray(parsed) ? parsed.map((item) => String(item)) : [];
}

// ---------------------------------------------------------------------------------------
// One TCP connection

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
class Connection {
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
        reject(new BeanstalkError('DISCONNECTED', `cannot connect to beanstalkd at ${this.server}: ${describe(this.lastError)}`, { cause: this.lastError }));
      };
      this.client.once('connect', onConnect);
      this.client.once('close', onFailure);
      this.client.connect();
      // Commands are small writes answered one by one: Nagle would delay each by a round trip.
      this.client.stream?.setNoDelay(true);
    });
  }

  get server(): string {
    return `${this.address.host}:${this.address.port}`;
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
      // Protocol state is unknown now (the reply may still come): the connection cannot be reused.
      oldest.settle(new BeanstalkError('TIMEOUT', `beanstalkd did not answer ${oldest.command} within ${oldest.timeoutMs} ms`), []);
      void this.drop(new BeanstalkError('TIMEOUT', `command ${oldest.command} timed out`));
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

function describe(err: unknown): string {
  if (err instanceof Error) return (err as NodeJS.ErrnoException).code ?? err.message;
  return err === undefined ? 'connection closed' : String(err);
}

// ---------------------------------------------------------------------------------------
// The client

/**
 * Events: 'connect', 'disconnect' (err?). No 'error' event is ever emitted: failures become
 * rejections and 'disconnect'.
 * Tube state (use/watch) is remembered and re-applied after a reconnect, before the client
 * reports itself connected again; while disconnected every operation rejects at once with
 * DISCONNECTED.
 */
export class BeanstalkClient extends EventEmitter {
  readonly address: BeanstalkAddress;
  private readonly connectTimeoutMs: number;
  private readonly commandTimeoutMs: number;
  private readonly autoReconnect: boolean;

  private current: Connection | null = null;
  private connecting: Promise<void> | null = null;
  /** The connection an attempt is still setting up, so close() need not wait for its connect timeout. */
  private settingUp: Connection | null = null;
  private reconnectTimer: NodeJS.Timeout | null = null;
  private reconnectDelayMs = RECONNECT_MIN_MS;
  /** True between connect() and close(): the client should be, or become, connected. */
  private active = false;

  private usedTube = 'default';
  private readonly watchedTubes = new Set<string>(['default']);

  constructor(address: BeanstalkAddress, options: BeanstalkClientOptions = {}) {
    super();
    this.address = { host: address.host, port: address.port };
    this.connectTimeoutMs = options.connectTimeoutMs ?? 5000;
    this.commandTimeoutMs = options.commandTimeoutMs ?? 10_000;
    this.autoReconnect = options.autoReconnect ?? true;
  }

  get connected(): boolean {
    return this.current?.open ?? false;
  }

  /** "host:port" */
  get server(): string {
    return `${this.address.host}:${this.address.port}`;
  }

  /** The tube `put` goes to (as re-applied after reconnects). */
  get tubeUsed(): string {
    return this.usedTube;
  }

  /** The tubes `reserve` takes jobs from (as re-applied after reconnects). */
  get tubesWatched(): string[] {
    return [...this.watchedTubes];
  }

  /**
   * Resolves once connected. When this attempt fails it rejects with DISCONNECTED, and with
   * autoReconnect the client keeps trying in the background until close().
   */
  connect(): Promise<void> {
    this.active = true;
    if (this.connected) return Promise.resolve();
    if (this.connecting) return this.connecting;
    this.cancelReconnect();
    return this.attempt();
  }

  /** Drops the connection for good (pending operations reject with DISCONNECTED) and stops reconnecting. */
  async close(): Promise<void> {
    this.active = false;
    this.cancelReconnect();
    const connection = this.current;
    this.current = null;
    void this.settingUp?.drop();
    await this.connecting?.catch(() => undefined);
    if (connection) {
      await connection.drop();
      this.emit('disconnect');
    }
  }

  async use(tube: string): Promise<void> {
    checkTube(tube);
    await this.run('use', [tube]);
    this.usedTube = tube;
  }

  async watch(tube: string): Promise<void> {
    checkTube(tube);
    await this.run('watch', [tube]);
    this.watchedTubes.add(tube);
  }

  /** Rejects with PROTOCOL (NOT_IGNORED) when it is the last watched tube. */
  async ignore(tube: string): Promise<void> {
    checkTube(tube);
    await this.run('ignore', [tube]);
    this.watchedTubes.delete(tube);
  }

  /** Resolves with the new job's id. Rejects JOB_TOO_BIG, DRAINING, BURIED (it was stored, but buried). */
  async put(payload: Buffer, options: PutOptions = {}): Promise<string> {
    const priority = checkUint(options.priority ?? DEFAULT_PRIORITY, 'priority');
    const delay = checkUint(options.delaySeconds ?? 0, 'delay');
    const ttr = checkUint(options.ttrSeconds ?? DEFAULT_TTR_SECONDS, 'ttr');
    const [id] = await this.run('put', [priority, delay, ttr, payload]);
    return String(id);
  }

  /** Resolves null on TIMED_OUT. Rejects DEADLINE_SOON when a job this connection holds is about to hit its TTR. */
  async reserve(timeoutSeconds: number): Promise<ReservedJob | null> {
    checkUint(timeoutSeconds, 'reserve timeout');
    const connection = this.requireConnection();
    // The server may legitimately stay silent for the whole timeout: allow that plus the usual margin.
    const waitMs = timeoutSeconds * 1000 + this.commandTimeoutMs;
    try {
      const [id, payload] = await connection.command('reserve_with_timeout', [timeoutSeconds], waitMs);
      return this.reservedJob(connection, String(id), payload as Buffer);
    } catch (err) {
      if (err instanceof BeanstalkError && err.reply === 'TIMED_OUT') return null;
      throw err;
    }
  }

  async peek(id: string): Promise<{ id: string; payload: Buffer } | null> {
    return this.peekWith('peek', [checkJobId(id)]);
  }

  async peekReady(): Promise<{ id: string; payload: Buffer } | null> {
    return this.peekWith('peek_ready', []);
  }

  async peekDelayed(): Promise<{ id: string; payload: Buffer } | null> {
    return this.peekWith('peek_delayed', []);
  }

  async peekBuried(): Promise<{ id: string; payload: Buffer } | null> {
    return this.peekWith('peek_buried', []);
  }

  /** Kicks up to `bound` buried (or, when none are buried, delayed) jobs in the used tube; resolves with the count. */
  async kick(bound: number): Promise<number> {
    const [count] = await this.run('kick', [checkUint(bound, 'kick bound')]);
    return Number(count);
  }

  async kickJob(id: string): Promise<void> {
    await this.run('kick_job', [checkJobId(id)]);
  }

  /** Delete by id (only valid for jobs not reserved by another connection). */
  async deleteJob(id: string): Promise<void> {
    await this.run('destroy', [checkJobId(id)]);
  }

  async stats(): Promise<Stats> {
    const [parsed] = await this.run('stats', []);
    return toStats(parsed);
  }

  async statsTube(tube: string): Promise<Stats> {
    const [parsed] = await this.run('stats_tube', [checkTube(tube)]);
    return toStats(parsed);
  }

  async statsJob(id: string): Promise<Stats> {
    const [parsed] = await this.run('stats_job', [checkJobId(id)]);
    return toStats(parsed);
  }

  async listTubes(): Promise<string[]> {
    const [parsed] = await this.run('list_tubes', []);
    return toStringList(parsed);
  }

  /** As the server sees it on the current connection. */
  async listTubesWatched(): Promise<string[]> {
    const [parsed] = await this.run('list_tubes_watched', []);
    return toStringList(parsed);
  }

  /** As the server sees it on the current connection. */
  async listTubeUsed(): Promise<string> {
    const [tube] = await this.run('list_tube_used', []);
    return String(tube);
  }

  // -------------------------------------------------------------------------------------

  private requireConnection(): Connection {
    const connection = this.current;
    if (!connection?.open) throw new BeanstalkError('DISCONNECTED', `not connected to beanstalkd at ${this.server}`);
    return connection;
  }

  private async run(command: FivebeansCommand, args: unknown[]): Promise<unknown[]> {
    return this.requireConnection().command(command, args, this.commandTimeoutMs);
  }

  private async peekWith(command: FivebeansCommand, args: unknown[]): Promise<{ id: string; payload: Buffer } | null> {
    try {
      const [id, payload] = await this.run(command, args);
      return { id: String(id), payload: payload as Buffer };
    } catch (err) {
      if (err instanceof BeanstalkError && err.code === 'NOT_FOUND') return null;
      throw err;
    }
  }

  private reservedJob(connection: Connection, id: string, payload: Buffer): ReservedJob {
    // beanstalkd ties a reservation to its connection: once that one is gone the job is
    // back in ready (maybe reserved by someone else), so never send these on a newer one.
    const onReservingConnection = async (command: FivebeansCommand, args: unknown[]): Promise<void> => {
      if (connection !== this.current || !connection.open) {
        throw new BeanstalkError('STALE_RESERVATION', `job ${id} was reserved on a connection that has since closed`);
      }
      await connection.command(command, [id, ...args], this.commandTimeoutMs);
    };
    return {
      id,
      payload,
      server: this.server,
      delete: () => onReservingConnection('destroy', []),
      release: async (options = {}) => {
        const priority = checkUint(options.priority ?? DEFAULT_PRIORITY, 'priority');
        const delay = checkUint(options.delaySeconds ?? 0, 'delay');
        await onReservingConnection('release', [priority, delay]);
      },
      bury: async (priority = DEFAULT_PRIORITY) => onReservingConnection('bury', [checkUint(priority, 'priority')]),
      touch: () => onReservingConnection('touch', []),
    };
  }

  private attempt(): Promise<void> {
    const attempt = (async () => {
      const connection = new Connection(this.address, (closed, cause) => this.handleClose(closed, cause));
      this.settingUp = connection;
      try {
        await connection.start(this.connectTimeoutMs);
        await this.applyTubeState(connection);
      } catch (err) {
        await connection.drop();
        throw err instanceof BeanstalkError && err.code === 'DISCONNECTED'
          ? err
          : new BeanstalkError('DISCONNECTED', `cannot set up connection to beanstalkd at ${this.server}: ${describe(err)}`, { cause: err });
      }
      if (!this.active) {
        await connection.drop();
        throw new BeanstalkError('DISCONNECTED', 'client closed while connecting');
      }
      this.current = connection;
      this.reconnectDelayMs = RECONNECT_MIN_MS;
      this.emit('connect');
    })();
    this.connecting = attempt;
    attempt.then(
      () => {
        this.connecting = null;
        this.settingUp = null;
      },
      () => {
        this.connecting = null;
        this.settingUp = null;
        this.scheduleReconnect();
      },
    );
    return attempt;
  }

  private async applyTubeState(connection: Connection): Promise<void> {
    const commands: Array<Promise<unknown>> = [];
    if (this.usedTube !== 'default') commands.push(connection.command('use', [this.usedTube], this.commandTimeoutMs));
    for (const tube of this.watchedTubes) {
      if (tube !== 'default') commands.push(connection.command('watch', [tube], this.commandTimeoutMs));
    }
    // Ignore last: beanstalkd refuses to ignore the only watched tube.
    if (!this.watchedTubes.has('default')) commands.push(connection.command('ignore', ['default'], this.commandTimeoutMs));
    await Promise.all(commands);
  }

  private handleClose(connection: Connection, cause: unknown): void {
    if (connection !== this.current) return; // a failed attempt, or close() already took it
    this.current = null;
    this.emit('disconnect', cause);
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    if (!this.active || !this.autoReconnect || this.reconnectTimer || this.connecting) return;
    const delay = this.reconnectDelayMs;
    this.reconnectDelayMs = Math.min(delay * 2, RECONNECT_MAX_MS);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      if (this.active && !this.connected && !this.connecting) this.attempt().catch(() => undefined);
    }, delay);
    // Reconnecting alone should not keep a process alive that has nothing else to do.
    this.reconnectTimer.unref();
  }

  private cancelReconnect(): void {
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
  }
}
