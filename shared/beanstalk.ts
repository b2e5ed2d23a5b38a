/**
 * INTERFACE SPEC — to be implemented (helper "beanstalk" owns this file).
 *
 * A typed promise wrapper around fivebeans 1.5.0 (`fivebeans/lib/client.js`).
 * One BeanstalkClient = one TCP connection at a time to one beanstalkd server.
 */
import { EventEmitter } from 'node:events';
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
  | 'PROTOCOL'; // any other server error string (BAD_FORMAT, UNKNOWN_COMMAND, OUT_OF_MEMORY, ...)

export class BeanstalkError extends HedwigError {
  constructor(code: BeanstalkErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'BeanstalkError';
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
  release(options?: { priority?: number; delaySeconds?: number }): Promise<void>;
  bury(priority?: number): Promise<void>;
  touch(): Promise<void>;
}

export type Stats = Record<string, string | number>;

/**
 * Events: 'connect', 'disconnect' (err?), 'error' (never emitted unhandled: internal
 * errors become rejections and 'disconnect').
 * Tube state (use/watch) is remembered and re-applied after a reconnect.
 */
export declare class BeanstalkClient extends EventEmitter {
  constructor(address: BeanstalkAddress, options?: BeanstalkClientOptions);
  readonly address: BeanstalkAddress;
  readonly connected: boolean;
  connect(): Promise<void>;
  close(): Promise<void>;
  use(tube: string): Promise<void>;
  watch(tube: string): Promise<void>;
  ignore(tube: string): Promise<void>;
  put(payload: Buffer, options?: PutOptions): Promise<string>;
  /** Resolves null on TIMED_OUT. */
  reserve(timeoutSeconds: number): Promise<ReservedJob | null>;
  peek(id: string): Promise<{ id: string; payload: Buffer } | null>;
  peekReady(): Promise<{ id: string; payload: Buffer } | null>;
  peekDelayed(): Promise<{ id: string; payload: Buffer } | null>;
  peekBuried(): Promise<{ id: string; payload: Buffer } | null>;
  kick(bound: number): Promise<number>;
  kickJob(id: string): Promise<void>;
  /** Delete by id (only valid for jobs not reserved by another connection). */
  deleteJob(id: string): Promise<void>;
  stats(): Promise<Stats>;
  statsTube(tube: string): Promise<Stats>;
  statsJob(id: string): Promise<Stats>;
  listTubes(): Promise<string[]>;
}
