/**
 * The beanstalkd client the tiers use: one BeanstalkClient = one TCP connection at a time
 * to one beanstalkd server (a `Connection` over a fresh fivebeans client, see
 * beanstalk-connection.ts). Connections are replaced, never repaired: after a drop the
 * client reconnects with backoff and re-applies use/watch before it reports 'connect'.
 *
 * beanstalkd answers the commands of one connection strictly in order, and a reserve blocks
 * the connection until it returns: a command sent behind a pending reserve waits for it.
 * Use one client per concurrent reserver (and another for puts).
 *
 * Longer than 300 lines on purpose: it is one state machine (connect, reconnect and the
 * tube state it re-applies, commands on the current connection, job operations on the
 * reserving one); the protocol values and the socket live in their own files already.
 */
import { EventEmitter } from 'node:events';
import { Connection, describeCause, type BeanstalkAddress, type FivebeansCommand } from './beanstalk-connection.ts';
import { formatHostPort } from './host-port.ts';
import { BeanstalkError, checkJobId, checkTube, checkUint, toStats, toStringList, type Stats } from './beanstalk-protocol.ts';

export { BeanstalkError, type BeanstalkErrorCode, type Stats } from './beanstalk-protocol.ts';
export type { BeanstalkAddress } from './beanstalk-connection.ts';

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

/** The priority of every job hedwig puts, and of releases and burials that do not say. */
export const DEFAULT_PRIORITY = 1024;

interface TubeState {
  used: string;
  watched: Set<string>;
}

function refusedByServer(err: unknown): boolean {
  return err instanceof BeanstalkError && err.reply !== undefined;
}
const DEFAULT_TTR_SECONDS = 300;
const RECONNECT_MIN_MS = 100;
const RECONNECT_MAX_MS = 5000;

/**
 * Events: 'connect', 'disconnect' (err?, { requested }): `requested` is true when close()
 * dropped the connection, false when it was lost. No 'error' event is ever emitted: failures
 * become rejections and 'disconnect'.
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
  /** putTo's use+put pairs, one after the other, so two callers never put into each other's tube. */
  private putQueue: Promise<unknown> = Promise.resolve();
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

  /** "host:port", IPv6 in brackets (shared/host-port.ts). */
  get server(): string {
    return formatHostPort(this.address);
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
      this.emit('disconnect', undefined, { requested: true });
    }
  }

  /**
   * Tube state (use/watch/ignore) is recorded before it is sent, so every later connection
   * gets it even when this call rejects with DISCONNECTED or TIMEOUT. Only a refusal by the
   * server (a reply word) undoes it.
   */
  async use(tube: string): Promise<void> {
    checkTube(tube);
    const previous = this.usedTube;
    this.usedTube = tube;
    try {
      await this.run('use', [tube]);
    } catch (err) {
      if (refusedByServer(err) && this.usedTube === tube) this.usedTube = previous;
      throw err;
    }
  }

  /** See use() for how tube state survives a rejection. */
  async watch(tube: string): Promise<void> {
    checkTube(tube);
    const wasWatched = this.watchedTubes.has(tube);
    this.watchedTubes.add(tube);
    try {
      await this.run('watch', [tube]);
    } catch (err) {
      if (refusedByServer(err) && !wasWatched) this.watchedTubes.delete(tube);
      throw err;
    }
  }

  /** Rejects with PROTOCOL (reply NOT_IGNORED) when it is the last watched tube. See use() for how tube state survives a rejection. */
  async ignore(tube: string): Promise<void> {
    checkTube(tube);
    if (this.watchedTubes.size === 1 && this.watchedTubes.has(tube)) {
      throw new BeanstalkError('PROTOCOL', `cannot ignore ${tube}, the only watched tube`, { reply: 'NOT_IGNORED' });
    }
    const wasWatched = this.watchedTubes.delete(tube);
    try {
      await this.run('ignore', [tube]);
    } catch (err) {
      if (refusedByServer(err) && wasWatched) this.watchedTubes.add(tube);
      throw err;
    }
  }

  /** Reserves from `tube` alone: watches it and ignores every other tube (first of all `default`, which every connection starts with). */
  async watchOnly(tube: string): Promise<void> {
    await this.watch(tube);
    for (const other of this.tubesWatched) if (other !== tube) await this.ignore(other);
  }

  /** Resolves with the new job's id. Rejects JOB_TOO_BIG, DRAINING, BURIED (it was stored, but buried). */
  async put(payload: Buffer, options: PutOptions = {}): Promise<string> {
    const priority = checkUint(options.priority ?? DEFAULT_PRIORITY, 'priority');
    const delay = checkUint(options.delaySeconds ?? 0, 'delay');
    const ttr = checkUint(options.ttrSeconds ?? DEFAULT_TTR_SECONDS, 'ttr');
    const [id] = await this.run('put', [priority, delay, ttr, payload]);
    return String(id);
  }

  /**
   * Puts into `tube`, switching the used tube first when it is another: the one way hedwig
   * puts a job (retries, failed records, notices, events, status updates, CLI moves). Calls
   * on one client run one after the other; plain use()/put() calls can still interleave.
   */
  putTo(tube: string, payload: Buffer, options: PutOptions = {}): Promise<string> {
    const run = this.putQueue.then(async () => {
      if (this.usedTube !== tube) await this.use(tube);
      return this.put(payload, options);
    });
    this.putQueue = run.catch(() => undefined);
    return run;
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

  /**
   * Reserves one job by id (beanstalkd 1.12 `reserve-job`), whether it is ready, delayed or
   * buried; resolves null when it does not exist or another connection has it reserved.
   * The reservation belongs to this connection like any other (release/bury/delete on it).
   */
  async reserveJob(id: string): Promise<ReservedJob | null> {
    const connection = this.requireConnection();
    try {
      const [jobId, payload] = await connection.command('reserve_job', [checkJobId(id)], this.commandTimeoutMs);
      return this.reservedJob(connection, String(jobId), payload as Buffer);
    } catch (err) {
      if (err instanceof BeanstalkError && err.code === 'NOT_FOUND') return null;
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

  /** Holds back reserves from `tube` for `seconds`, for every client (a shared back-off). Rejects NOT_FOUND when the tube does not exist. */
  async pauseTube(tube: string, seconds: number): Promise<void> {
    await this.run('pause_tube', [checkTube(tube), checkUint(seconds, 'pause delay')]);
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
        // use/watch/ignore may change the wanted state while we apply it: repeat until this
        // connection matches, then take it over without an await in between.
        let applied: TubeState = { used: 'default', watched: new Set(['default']) };
        for (;;) {
          const wanted: TubeState = { used: this.usedTube, watched: new Set(this.watchedTubes) };
          const commands = this.tubeCommands(connection, applied, wanted);
          if (commands.length === 0) break;
          await Promise.all(commands);
          applied = wanted;
        }
      } catch (err) {
        await connection.drop();
        throw err instanceof BeanstalkError && err.code === 'DISCONNECTED'
          ? err
          : new BeanstalkError('DISCONNECTED', `cannot set up connection to beanstalkd at ${this.server}: ${describeCause(err)}`, { cause: err });
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

  /** The commands that take a connection from `applied` to `wanted` tube state, pipelined. */
  private tubeCommands(connection: Connection, applied: TubeState, wanted: TubeState): Array<Promise<unknown>> {
    const send = (command: 'use' | 'watch' | 'ignore', tube: string): Promise<unknown> => connection.command(command, [tube], this.commandTimeoutMs);
    const commands: Array<Promise<unknown>> = [];
    if (wanted.used !== applied.used) commands.push(send('use', wanted.used));
    for (const tube of wanted.watched) if (!applied.watched.has(tube)) commands.push(send('watch', tube));
    // Ignores go last: beanstalkd refuses to ignore the only watched tube.
    for (const tube of applied.watched) if (!wanted.watched.has(tube)) commands.push(send('ignore', tube));
    return commands;
  }

  private handleClose(connection: Connection, cause: unknown): void {
    if (connection !== this.current) return; // a failed attempt, or close() already took it
    this.current = null;
    this.emit('disconnect', cause, { requested: false });
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
