import { X509Certificate } from 'node:crypto';
import type { ConnectionOptions } from 'node:tls';
import SMTPConnection from 'nodemailer/lib/smtp-connection';
import { COMMAND_DEADLINES, commandOf, deadlineOf, type CommandDeadlines, type SessionTimeouts } from './smtp-timeouts.ts';

/**
 * One SMTP session with one receiving server: the only module that touches nodemailer's
 * SMTPConnection (the layer under `createTransport`), its private fields included. It is
 * used directly because the worker must know *where* a failure happened: before the
 * transaction (the next MX address is tried) or in it (the replies decide).
 *
 * Failures keep the shape nodemailer's error formatter gives every error: `code`
 * (ECONNECTION, ETIMEDOUT, EENVELOPE, EMESSAGE, ...), and when the server answered,
 * `response`, `responseCode` and `command` (the command it answered). classify.ts reads
 * exactly these.
 *
 * Longer than 300 lines on purpose: being the one place that reaches into nodemailer's
 * internals (extensions, socket, certificates, the command and reply funnels the deadlines
 * hook) is the point of this file; the deadline values themselves are in smtp-timeouts.ts.
 */

export interface SmtpFailure {
  message: string;
  code?: string;
  response?: string;
  responseCode?: number;
  command?: string;
  /** Set on a recipient's RCPT TO failure. */
  recipient?: string;
  /** Set when the failure happened during the STARTTLS handshake (tls-policy.ts reads it). */
  tlsHandshake?: boolean;
}

export interface SessionOptions {
  /** IP address of the server (route.ts resolved it; nodemailer never looks names up). */
  address: string;
  port: number;
  ehloName: string;
  /** The source address; unset: the operating system picks. */
  localAddress?: string;
  /** STARTTLS behaviour and TLS options, from the TLS-policy decision (tls-policy.ts). */
  tls: { ignoreTLS: boolean; requireTLS: boolean; opportunisticTLS: boolean; tls: ConnectionOptions };
  timeouts: SessionTimeouts;
}

export interface Envelope {
  /** '' for the null reverse-path. */
  from: string;
  to: string[];
  /** Message size for the SIZE parameter. */
  size: number;
}

/** The server took the message for at least one recipient. */
export interface Sent {
  accepted: string[];
  /** One per refused recipient, with its RCPT TO reply. */
  rejectedErrors: SmtpFailure[];
  /** The reply to the end of the data. */
  response: string;
}

/**
 * nodemailer keeps facts we need on the connection without exporting them: the EHLO
 * extensions (SMTPUTF8), the per-recipient RCPT replies when the transaction fails at
 * DATA, the socket (source address, TLS details) and whether it is gone. Read defensively;
 * without them the worker falls back to coarser but safe behaviour.
 */
interface ConnectionInternals {
  _supportedExtensions?: unknown;
  _envelope?: { rejectedErrors?: unknown };
  _socket?:
    | {
        localAddress?: unknown;
        getProtocol?: () => string | null;
        getCipher?: () => { name?: string } | undefined;
        getPeerCertificate?: (detailed: true) => unknown;
        authorized?: unknown;
        authorizationError?: unknown;
      }
    | false;
  _destroyed?: unknown;
  _maxAllowedSize?: unknown;
  // Hooked to see each command go out and each complete reply come in (see #watchCommands).
  _sendCommand: (str: string, logStr?: string) => void;
  _processResponse: () => unknown;
  _responseQueue: string[];
  _onError: (err: Error, type: string, data: unknown, command: string) => void;
}

/** A reply nodemailer is about to consume: non-blank and not a continuation line (its isPartialResponse). */
function isCompleteReply(raw: string | undefined): raw is string {
  if (raw === undefined || raw.trim() === '') return false;
  return !/^\d+-/.test(raw.slice(raw.lastIndexOf('\n') + 1));
}

function failureOf(err: unknown): SmtpFailure {
  if (err && typeof err === 'object') return err as SmtpFailure;
  return { message: String(err) };
}

export class SmtpSession {
  readonly #connection: SMTPConnection;
  readonly #deadlines: CommandDeadlines;
  /** Commands sent whose reply has not come yet, in order (replies come in order). */
  readonly #awaiting: Array<{ command: string; ms: number }> = [];
  #deadline: NodeJS.Timeout | undefined;
  #replies = 0;

  constructor(options: SessionOptions) {
    this.#connection = new SMTPConnection({
      host: options.address,
      port: options.port,
      // Always set: nodemailer otherwise falls back to the IP literal (DESIGN.md).
      name: options.ehloName,
      ...(options.localAddress ? { localAddress: options.localAddress } : {}),
      ...options.tls,
      connectionTimeout: options.timeouts.connectMs,
      greetingTimeout: options.timeouts.greetingMs,
      socketTimeout: options.timeouts.socketMs,
      logger: false,
    });
    // Errors also reach the pending connect/send callbacks; this keeps an emitted 'error' from crashing the process.
    this.#connection.on('error', () => {});
    this.#deadlines = { ...COMMAND_DEADLINES, ...Object.fromEntries(Object.entries(options.timeouts).filter(([key]) => key in COMMAND_DEADLINES)) };
    this.#watchCommands();
  }

  /**
   * nodemailer has an idle timer (socketMs) and phase timers up to the greeting and the TLS
   * upgrade, but nothing that bounds one command: a server that trickles a reply byte by
   * byte keeps the session for ever. Its two private funnels, one for every command line
   * written and one for every complete reply read, are hooked here to give each command its
   * deadline (and to count replies, see repliesReceived). An expired deadline fails the
   * session through nodemailer's own error path, like its timers do.
   */
  #watchCommands(): void {
    const connection = this.#internals;
    const sendCommand = connection._sendCommand;
    const processResponse = connection._processResponse;
    if (typeof sendCommand !== 'function' || typeof processResponse !== 'function') return;
    connection._sendCommand = (str: string, logStr?: string) => {
      this.#awaiting.push({ command: commandOf(str), ms: deadlineOf(commandOf(str), this.#deadlines) });
      if (this.#awaiting.length === 1) this.#arm();
      return sendCommand.call(connection, str, logStr);
    };
    connection._processResponse = () => {
      const head = connection._responseQueue?.[0];
      if (isCompleteReply(head)) {
        this.#replies++;
        const answered = this.#awaiting.shift();
        // After its 354 the data goes out; the reply to the final dot has a deadline of its own.
        if (answered?.command === 'DATA' && head.startsWith('3')) this.#awaiting.unshift({ command: 'end of data', ms: this.#deadlines.dataDoneMs });
        this.#arm();
      }
      return processResponse.call(connection);
    };
    this.#connection.once('end', () => {
      clearTimeout(this.#deadline);
      this.#awaiting.length = 0;
    });
  }

  #arm(): void {
    clearTimeout(this.#deadline);
    this.#deadline = undefined;
    const head = this.#awaiting[0];
    if (!head) return;
    this.#deadline = setTimeout(() => {
      const err = Object.assign(new Error(`no complete reply to ${head.command} within ${head.ms} ms`), { timeoutType: 'COMMAND_DEADLINE' });
      this.#internals._onError(err, 'ETIMEDOUT', false, head.command === 'end of data' ? 'DATA' : head.command);
    }, head.ms);
    // The socket keeps the process alive while the session is open; this timer need not.
    this.#deadline.unref();
  }

  /** Complete replies read so far on this session: a transaction that saw none of its own was not answered at all. */
  get repliesReceived(): number {
    return this.#replies;
  }

  /** The SIZE the server announced in EHLO (RFC 1870), or undefined when it announced none. */
  get maxMessageSize(): number | undefined {
    const size = this.#internals._maxAllowedSize;
    return typeof size === 'number' && size > 0 ? size : undefined;
  }

  get #internals(): ConnectionInternals {
    return this.#connection as unknown as ConnectionInternals;
  }

  /** Whether the session runs over TLS now. */
  get secure(): boolean {
    return this.#connection.secure;
  }

  /** Closed by either side. */
  get closed(): boolean {
    return this.#internals._destroyed === true;
  }

  /** Whether the server offered SMTPUTF8 in EHLO; undefined when that cannot be read. */
  get supportsSmtpUtf8(): boolean | undefined {
    const extensions = this.#internals._supportedExtensions;
    return Array.isArray(extensions) ? extensions.includes('SMTPUTF8') : undefined;
  }

  /** Whether the server offered 8BITMIME in EHLO; undefined when that cannot be read. */
  get supports8BitMime(): boolean | undefined {
    const extensions = this.#internals._supportedExtensions;
    return Array.isArray(extensions) ? extensions.includes('8BITMIME') : undefined;
  }

  /** The local address of the socket: the source IP the receiver sees. */
  get localAddress(): string | undefined {
    const socket = this.#internals._socket;
    return socket && typeof socket.localAddress === 'string' ? socket.localAddress : undefined;
  }

  /** Protocol and cipher of a secured session, for the delivery log. */
  tlsDetails(): { tlsVersion?: string; tlsCipher?: string } {
    const socket = this.#internals._socket;
    if (!this.secure || !socket || typeof socket.getProtocol !== 'function') return {};
    const version = socket.getProtocol() ?? undefined;
    const cipher = typeof socket.getCipher === 'function' ? socket.getCipher()?.name : undefined;
    return { ...(version ? { tlsVersion: version } : {}), ...(cipher ? { tlsCipher: cipher } : {}) };
  }

  /**
   * The certificate chain the server sent over STARTTLS, its own first (Node links the
   * certificates by issuer; a self-signed root ends it). Empty without TLS. DANE matches it.
   */
  peerCertificates(): X509Certificate[] {
    const socket = this.#internals._socket;
    if (!this.secure || !socket || typeof socket.getPeerCertificate !== 'function') return [];
    const chain: X509Certificate[] = [];
    const seen = new Set<unknown>();
    let current = socket.getPeerCertificate(true) as { raw?: Buffer; issuerCertificate?: unknown } | undefined;
    while (current?.raw && !seen.has(current) && chain.length < 10) {
      seen.add(current);
      chain.push(new X509Certificate(current.raw));
      current = current.issuerCertificate as typeof current;
    }
    return chain;
  }

  /**
   * Whether the certificate verified against the trust anchors and named the server (Node
   * checks both even when it does not insist on them, `rejectUnauthorized: false`), and why
   * not: what MTA-STS `testing` reports without refusing the session.
   */
  peerAuthorization(): { authorized: boolean; error?: string } {
    const socket = this.#internals._socket;
    if (!this.secure || !socket) return { authorized: false, error: 'no TLS' };
    const error = socket.authorizationError;
    return { authorized: socket.authorized === true, ...(error !== undefined && error !== null ? { error: String((error as { code?: unknown }).code ?? error) } : {}) };
  }

  /** Runs once when the session closes, for any reason. */
  onClosed(listener: () => void): void {
    this.#connection.once('end', listener);
  }

  /**
   * Connects, reads the greeting, sends EHLO (and STARTTLS when the options say so). A
   * failure while the TLS handshake runs surfaces from nodemailer as a plain socket error
   * (ESOCKET): it is marked `tlsHandshake`, so the TLS policy sees it for what it is.
   */
  handshake(): Promise<void> {
    const connection = this.#connection;
    return new Promise<void>((resolve, reject) => {
      const fail = (err: unknown) => reject(connection.upgrading && err && typeof err === 'object' ? Object.assign(err, { tlsHandshake: true }) : failureOf(err));
      const onEnd = () => fail(Object.assign(new Error('Connection closed during the handshake'), { code: 'ECONNECTION' }));
      connection.once('error', fail);
      connection.once('end', onEnd);
      connection.connect((err) => {
        connection.off('error', fail);
        connection.off('end', onEnd);
        if (err) fail(err);
        else resolve();
      });
    });
  }

  /** One transaction: MAIL FROM, RCPT TO for each recipient, DATA. Rejects with an SmtpFailure. */
  send(envelope: Envelope, raw: Buffer): Promise<Sent> {
    const connection = this.#connection;
    return new Promise<Sent>((resolve, reject) => {
      // nodemailer emits the error (a deadline, a socket error) and then closes: the error says more than the close.
      let failure: unknown;
      const onError = (err: unknown) => (failure ??= err);
      const onEnd = () => reject(failure ? failureOf(failure) : Object.assign(new Error('Connection closed during the transaction'), { code: 'ECONNECTION', command: 'CONN' }));
      connection.on('error', onError);
      connection.once('end', onEnd);
      connection.send({ from: envelope.from, to: envelope.to, size: envelope.size, use8BitMime: true }, raw, (err, info) => {
        connection.off('error', onError);
        connection.off('end', onEnd);
        if (err) reject(failureOf(err));
        else resolve({ accepted: info.accepted.map(String), rejectedErrors: (info.rejectedErrors ?? []).map(failureOf), response: info.response });
      });
    });
  }

  /** The RCPT TO replies of the last transaction, by recipient (a transaction that failed at DATA still has them). */
  recipientFailures(): Map<string, SmtpFailure> {
    const errors = this.#internals._envelope?.rejectedErrors;
    const byRecipient = new Map<string, SmtpFailure>();
    if (Array.isArray(errors)) {
      for (const err of errors as SmtpFailure[]) if (typeof err?.recipient === 'string') byRecipient.set(err.recipient, err);
    }
    return byRecipient;
  }

  /** RSET before reuse; false (close it) when the server does not answer within `timeoutMs` or the session ends first. */
  reset(timeoutMs: number): Promise<boolean> {
    const connection = this.#connection;
    return new Promise((resolve) => {
      const done = (ok: boolean) => {
        clearTimeout(timer);
        connection.off('end', onEnd);
        resolve(ok);
      };
      const onEnd = () => done(false);
      const timer = setTimeout(() => done(false), timeoutMs);
      connection.once('end', onEnd);
      try {
        connection.reset((err) => done(!err));
      } catch {
        done(false);
      }
    });
  }

  /** Closes the session when `signal` aborts (shutdown), until the returned function is called. */
  closeOnAbort(signal: AbortSignal | undefined): () => void {
    if (!signal) return () => {};
    const close = () => this.close();
    signal.addEventListener('abort', close, { once: true });
    return () => signal.removeEventListener('abort', close);
  }

  /** QUIT, then close. */
  quit(): void {
    this.#connection.quit();
  }

  /** Closes at once (no QUIT). */
  close(): void {
    this.#connection.close();
  }
}
