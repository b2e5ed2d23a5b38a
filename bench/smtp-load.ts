import { connect, type Socket } from 'node:net';
import type { LoadPlan } from './message.ts';
import { nowMs } from './sink.ts';

/**
 * An SMTP load generator on raw sockets: many concurrent connections, each reused for
 * message after message, MAIL/RCPT/DATA pipelined (RFC 2920) and the message plus its
 * final dot written in one piece with Nagle off. Written by hand because nodemailer's
 * pool sends one command per round trip and builds each message through its MIME
 * composer, which would make the client, not hedwig, the bottleneck being measured.
 */
export interface SmtpLoadOptions extends LoadPlan {
  host: string;
  port: number;
  /** Tries per message; a temporary failure (4xx, lost connection) is retried. Default 1. */
  maxAttempts?: number;
  retryDelayMs?: number;
  /** Stop starting new transactions after this long (ms). */
  deadlineMs?: number;
  ehloName?: string;
  /** A new connection (greeting, EHLO, QUIT) for every message, as msmtp and smtp-source without -d. Default false. */
  connectionPerMessage?: boolean;
  /** Send MAIL, RCPT and DATA together (RFC 2920). Default true; smtp-source waits for each reply. */
  pipelining?: boolean;
  /** Start no new transaction once this is aborted (the matrix's probes stop with the client they ride along). */
  signal?: AbortSignal;
}

export interface SmtpLoadResult {
  startedAt: number;
  finishedAt: number;
  /** When the transaction began, per id: the connect for a connection per message, else MAIL FROM (NaN: never). */
  beganAt: Float64Array;
  /** When the final dot was written, per id (NaN: never). */
  submittedAt: Float64Array;
  /** When the 250 after DATA arrived, per id (NaN: not accepted). */
  acceptedAt: Float64Array;
  accepted: number;
  /** Ids that were never accepted (permanent rejection, attempts used up, or the deadline). */
  notAccepted: number;
  /** Failed attempts by reply code or socket error code. */
  failures: Record<string, number>;
}

interface Reply {
  code: number;
  text: string;
}

/** Reads complete (possibly multi-line) SMTP replies from a socket. */
class SmtpSession {
  readonly #socket: Socket;
  #buffer = '';
  #closed: Error | undefined;
  #waiter: (() => void) | undefined;

  private constructor(socket: Socket) {
    this.#socket = socket;
    socket.setNoDelay(true);
    socket.setEncoding('latin1');
    socket.setTimeout(60_000, () => socket.destroy(Object.assign(new Error('no reply within 60 s'), { code: 'ETIMEDOUT' })));
    socket.on('data', (chunk: string) => {
      this.#buffer += chunk;
      this.#wake();
    });
    socket.on('error', (err) => {
      this.#closed ??= err;
    });
    socket.on('close', () => {
      this.#closed ??= Object.assign(new Error('connection closed'), { code: 'ECLOSED' });
      this.#wake();
    });
  }

  static open(host: string, port: number): Promise<SmtpSession> {
    return new Promise((resolve, reject) => {
      const socket = connect({ host, port });
      socket.once('connect', () => {
        socket.off('error', reject);
        resolve(new SmtpSession(socket));
      });
      socket.once('error', reject);
    });
  }

  #wake(): void {
    const waiter = this.#waiter;
    this.#waiter = undefined;
    waiter?.();
  }

  async reply(): Promise<Reply> {
    for (;;) {
      let start = 0;
      for (;;) {
        const end = this.#buffer.indexOf('\r\n', start);
        if (end < 0) break;
        if (this.#buffer[start + 3] !== '-') {
          const text = this.#buffer.slice(0, end);
          this.#buffer = this.#buffer.slice(end + 2);
          return { code: Number(text.slice(start, start + 3)), text };
        }
        start = end + 2;
      }
      if (this.#closed) throw this.#closed;
      await new Promise<void>((resolve) => (this.#waiter = resolve));
    }
  }

  write(data: string | Buffer): void {
    this.#socket.write(data);
  }

  close(): void {
    this.#socket.destroy();
  }
}

const CRLF_DOT = Buffer.from('\n.');

/** Dot-stuffing (RFC 5321 §4.5.2) plus the end-of-data marker, in one buffer. */
function dataPayload(message: Buffer): Buffer {
  let body = message;
  if (body[0] === 0x2e || body.includes(CRLF_DOT)) body = Buffer.from(body.toString('latin1').replace(/(^|\n)\./g, '$1..'), 'latin1');
  // An empty message is the end marker alone; any other must end its last line before the dot.
  const ending = body.length === 0 || body.subarray(-2).toString('latin1') === '\r\n' ? '.\r\n' : '\r\n.\r\n';
  return Buffer.concat([body, Buffer.from(ending)]);
}

class TransactionError extends Error {
  constructor(
    readonly key: string,
    readonly permanent: boolean,
  ) {
    super(key);
  }
}

function check(reply: Reply, expected: number): void {
  if (reply.code !== expected) throw new TransactionError(String(reply.code), reply.code >= 500);
}

export async function runSmtpLoad(options: SmtpLoadOptions): Promise<SmtpLoadResult> {
  const maxAttempts = options.maxAttempts ?? 1;
  const retryDelayMs = options.retryDelayMs ?? 200;
  const beganAt = new Float64Array(options.messages).fill(NaN);
  const submittedAt = new Float64Array(options.messages).fill(NaN);
  const acceptedAt = new Float64Array(options.messages).fill(NaN);
  const attempts = new Uint16Array(options.messages);
  const failures: Record<string, number> = {};
  const queue: number[] = [];
  let nextFresh = 0;
  let inFlight = 0;
  let started = 0;
  let accepted = 0;
  const waiting: Array<() => void> = [];
  const startedAt = nowMs();
  const deadline = options.deadlineMs === undefined ? Infinity : startedAt + options.deadlineMs;

  function notify(): void {
    for (const wake of waiting.splice(0)) wake();
  }

  /** The next id to send, after its pacing slot; undefined when nothing is left. */
  async function nextId(): Promise<number | undefined> {
    for (;;) {
      if (nowMs() > deadline || options.signal?.aborted) return undefined;
      const id = queue.length > 0 ? queue.shift() : nextFresh < options.messages ? nextFresh++ : undefined;
      if (id !== undefined) {
        inFlight++;
        if (options.ratePerSecond) {
          const slot = startedAt + (started * 1000) / options.ratePerSecond;
          started++;
          const wait = slot - nowMs();
          if (wait > 0) await new Promise((r) => setTimeout(r, wait));
          if (options.signal?.aborted) {
            inFlight--;
            return undefined;
          }
        }
        return id;
      }
      if (inFlight === 0) return undefined;
      // Another connection may still fail and hand its message back.
      await new Promise<void>((resolve) => waiting.push(resolve));
    }
  }

  function settle(id: number, error: TransactionError | undefined): void {
    if (error) {
      failures[error.key] = (failures[error.key] ?? 0) + 1;
      if (!error.permanent && attempts[id]! < maxAttempts && nowMs() < deadline) {
        // Still owed, so counted in flight until it is back in the queue: no connection may finish early.
        setTimeout(() => {
          inFlight--;
          queue.push(id);
          notify();
        }, retryDelayMs);
        return;
      }
    } else {
      accepted++;
    }
    inFlight--;
    notify();
  }

  async function openSession(): Promise<SmtpSession> {
    const session = await SmtpSession.open(options.host, options.port);
    try {
      check(await session.reply(), 220);
      session.write(`EHLO ${options.ehloName ?? 'bench.client'}\r\n`);
      check(await session.reply(), 250);
      return session;
    } catch (err) {
      session.close();
      throw err;
    }
  }

  async function command(session: SmtpSession, line: string): Promise<Reply> {
    session.write(line);
    return session.reply();
  }

  async function transaction(session: SmtpSession, id: number): Promise<void> {
    attempts[id]!++;
    const envelope = [`MAIL FROM:<${options.from}>\r\n`, `RCPT TO:<${options.recipient(id)}>\r\n`, 'DATA\r\n'];
    let mail: Reply, rcpt: Reply, data: Reply;
    if (options.pipelining === false) {
      mail = await command(session, envelope[0]!);
      rcpt = mail.code === 250 ? await command(session, envelope[1]!) : mail;
      data = rcpt.code === 250 ? await command(session, envelope[2]!) : rcpt;
    } else {
      session.write(envelope.join(''));
      mail = await session.reply();
      rcpt = await session.reply();
      data = await session.reply();
    }
    if (data.code !== 354) {
      session.write('RSET\r\n');
      await session.reply();
      check(mail, 250);
      check(rcpt, 250);
      check(data, 354);
    }
    session.write(dataPayload(options.message(id)));
    submittedAt[id] = nowMs();
    const final = await session.reply();
    check(final, 250);
    acceptedAt[id] = nowMs();
  }

  async function quit(session: SmtpSession): Promise<void> {
    session.write('QUIT\r\n');
    await session.reply().catch(() => undefined);
    session.close();
  }

  async function connectionLoop(): Promise<void> {
    let session: SmtpSession | undefined;
    for (let id = await nextId(); id !== undefined; id = await nextId()) {
      try {
        if (options.connectionPerMessage) beganAt[id] = nowMs();
        session ??= await openSession();
        if (!options.connectionPerMessage) beganAt[id] = nowMs();
        await transaction(session, id);
        if (options.connectionPerMessage) {
          const done = session;
          session = undefined;
          await quit(done);
        }
        settle(id, undefined);
      } catch (err) {
        const failure = err instanceof TransactionError ? err : new TransactionError((err as { code?: string }).code ?? 'ERROR', false);
        // After a lost connection or a 421 the session is unusable; after other replies it is fine.
        if (!(err instanceof TransactionError) || failure.key === '421') {
          session?.close();
          session = undefined;
        }
        settle(id, failure);
      }
    }
    if (session) await quit(session);
  }

  await Promise.all(Array.from({ length: options.concurrency }, () => connectionLoop()));
  return { startedAt, finishedAt: nowMs(), beganAt, submittedAt, acceptedAt, accepted, notAccepted: options.messages - accepted, failures };
}
