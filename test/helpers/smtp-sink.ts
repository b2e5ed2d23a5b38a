import { SMTPServer, type SMTPServerSession } from 'smtp-server';
import { freePort, waitFor } from './ports.ts';

/**
 * A real SMTP server (smtp-server) on a loopback address that records every message
 * it accepts and can be told how to misbehave: refuse the greeting, reject a sender or
 * single recipients, reject the message after DATA, or drop the connection mid-DATA.
 *
 * Replies are sent exactly as scripted (smtp-server's automatic enhanced status codes
 * are off), so `{ code: 550, message: '5.1.1 no such user' }` is the line
 * `550 5.1.1 no such user`. The script is read on every command, so a test may change
 * it between attempts.
 */

/** How many times a scripted misbehaviour happens before the sink accepts; unlimited when omitted. */
export interface Scripted {
  times?: number;
}

export interface SmtpReply extends Scripted {
  code: number;
  message: string;
}

export interface SmtpSinkScript {
  /** Refuse connections with this greeting (e.g. 421) instead of 220. */
  greeting?: SmtpReply;
  mailFrom?: SmtpReply;
  /** Drop the connection at MAIL FROM without replying (a server that had closed an idle session). */
  dropAtMailFrom?: boolean | Scripted;
  /** Per recipient (lower-cased address) reply to RCPT TO. */
  recipients?: Record<string, SmtpReply>;
  /** Reply to the end of DATA (e.g. 552, 554, 451). */
  data?: SmtpReply;
  /** Close the socket as soon as message data arrives, without replying. */
  dropDuringData?: boolean | Scripted;
  /** Take the whole message (it is recorded) and drop the connection instead of replying. */
  dropAfterData?: boolean | Scripted;
  /** Take the whole message but never reply to it (a hung server); see `stalled`. */
  stallAfterData?: boolean | Scripted;
  /** Wait this long before answering the end of DATA (keeps sessions open, to see them overlap). */
  dataDelayMs?: number;
}

export interface SinkMessage {
  /** Reverse-path; '' for the null sender `<>`. */
  mailFrom: string;
  /** Recipients the sink accepted in this transaction. */
  rcptTo: string[];
  /** The message exactly as received (dot-unstuffed, CRLF line ends as sent). */
  raw: Buffer;
  remoteAddress: string;
  localAddress: string;
  /** The name the client gave in EHLO/HELO. */
  clientHostname: string;
  secure: boolean;
  receivedAt: Date;
}

export interface SmtpSinkOptions {
  /** Loopback address to listen on; default 127.0.0.1 (any 127.0.0.0/8 address works on Linux). */
  host?: string;
  /** Default: a free port. */
  port?: number;
  script?: SmtpSinkScript;
  /** Offer STARTTLS with smtp-server's built-in test certificate. Default false. */
  starttls?: boolean;
  /** The certificate STARTTLS presents instead of smtp-server's built-in self-signed one (PEM). */
  tls?: { key: string | Buffer; cert: string | Buffer };
  /** TLS versions the sink accepts, e.g. 'TLSv1' to make a modern client's handshake fail. */
  tlsMaxVersion?: 'TLSv1' | 'TLSv1.1' | 'TLSv1.2' | 'TLSv1.3';
  /** Advertised SIZE limit in bytes; larger messages get 552. */
  size?: number;
  /** Leave 8BITMIME out of the EHLO reply (the data is still taken as sent, so a test sees what arrived). */
  hide8BITMIME?: boolean;
}

export interface SmtpSink {
  host: string;
  port: number;
  /** Accepted messages in arrival order. */
  messages: SinkMessage[];
  /** Connections opened so far, refused greetings included. */
  readonly connections: number;
  /** The most connections that were open at the same time. */
  readonly maxConcurrentConnections: number;
  /** Connections open right now. */
  readonly openConnections: number;
  /** Messages received and left without a reply by `stallAfterData`. */
  readonly stalled: number;
  /** Mutable: change it to change how the sink answers from the next command on. */
  script: SmtpSinkScript;
  waitForMessages(count: number, timeoutMs?: number): Promise<SinkMessage[]>;
  stop(): Promise<void>;
}

function isLoopback(host: string): boolean {
  return host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

function replyError(reply: SmtpReply): Error {
  return Object.assign(new Error(reply.message), { responseCode: reply.code });
}

export async function startSmtpSink(options: SmtpSinkOptions = {}): Promise<SmtpSink> {
  const host = options.host ?? '127.0.0.1';
  if (!isLoopback(host)) throw new Error(`smtp sink listens on loopback only, not ${host}`);
  const port = options.port ?? (await freePort(host));
  const messages: SinkMessage[] = [];
  let connections = 0;
  let open = 0;
  let maxConcurrent = 0;
  let stalled = 0;
  const used = new WeakMap<object, number>();
  const sink = { script: options.script ?? {} };

  /** True while a scripted behaviour still has uses left; counts this use. */
  function applies(scripted: Scripted | boolean | undefined): boolean {
    if (!scripted) return false;
    if (scripted === true) return true;
    const count = used.get(scripted) ?? 0;
    if (scripted.times !== undefined && count >= scripted.times) return false;
    used.set(scripted, count + 1);
    return true;
  }

  function active(reply: SmtpReply | undefined): SmtpReply | undefined {
    return reply && applies(reply) ? reply : undefined;
  }

  const server: SMTPServer = new SMTPServer({
    logger: false,
    disableReverseLookup: true,
    hideENHANCEDSTATUSCODES: true,
    hideSTARTTLS: !options.starttls,
    ...(options.tls ? { key: options.tls.key, cert: options.tls.cert } : {}),
    ...(options.tlsMaxVersion ? { maxVersion: options.tlsMaxVersion, minVersion: 'TLSv1' as const } : {}),
    authOptional: true,
    // Without starttls the command is refused, not just left out of EHLO (a client that insists gets an error).
    disabledCommands: options.starttls ? ['AUTH'] : ['AUTH', 'STARTTLS'],
    closeTimeout: 500,
    ...(options.size ? { size: options.size } : {}),
    ...(options.hide8BITMIME ? { hide8BITMIME: true } : {}),
    onConnect(_session, callback) {
      connections++;
      open++;
      maxConcurrent = Math.max(maxConcurrent, open);
      const greeting = active(sink.script.greeting);
      callback(greeting ? replyError(greeting) : null);
    },
    onMailFrom(_address, session, callback) {
      if (applies(sink.script.dropAtMailFrom)) return dropConnection(session);
      const reply = active(sink.script.mailFrom);
      callback(reply ? replyError(reply) : null);
    },
    onRcptTo(address, _session, callback) {
      const reply = active(sink.script.recipients?.[address.address.toLowerCase()]);
      callback(reply ? replyError(reply) : null);
    },
    onData(stream, session, callback) {
      const chunks: Buffer[] = [];
      const drop = applies(sink.script.dropDuringData);
      const stall = !drop && applies(sink.script.stallAfterData);
      const dropAfter = !drop && !stall && applies(sink.script.dropAfterData);
      stream.on('data', (chunk: Buffer) => {
        if (drop) {
          dropConnection(session);
          return;
        }
        chunks.push(chunk);
      });
      stream.on('end', () => {
        if (drop) return callback(new Error('connection dropped by the test'));
        if (stall) {
          stalled++;
          return; // no reply: the client waits until its socket timeout or gives up
        }
        const reply = active(sink.script.data);
        if (reply) return callback(replyError(reply));
        if (stream.sizeExceeded) return callback(Object.assign(new Error('message too big'), { responseCode: 552 }));
        const mailFrom = session.envelope.mailFrom;
        const record = () => messages.push({
          mailFrom: mailFrom ? mailFrom.address : '',
          rcptTo: session.envelope.rcptTo.map((r) => r.address),
          raw: Buffer.concat(chunks),
          remoteAddress: session.remoteAddress,
          localAddress: session.localAddress,
          clientHostname: session.hostNameAppearsAs,
          secure: session.secure,
          receivedAt: new Date(),
        });
        record();
        if (dropAfter) return dropConnection(session); // the message is here; the client never learns it
        const delayMs = sink.script.dataDelayMs ?? 0;
        if (delayMs > 0) setTimeout(() => callback(null, 'OK queued'), delayMs);
        else callback(null, 'OK queued');
      });
    },
    onClose() {
      open--;
    },
  });

  function dropConnection(session: SMTPServerSession): void {
    for (const connection of server.connections) {
      if (connection.id === session.id) connection._socket.destroy();
    }
  }

  server.on('error', () => {
    // Client resets and the like are part of the tests; smtp-server reports them here.
  });

  await new Promise<void>((resolve, reject) => {
    server.server.once('error', reject);
    server.listen(port, host, () => {
      server.server.off('error', reject);
      resolve();
    });
  });

  let stopped: Promise<void> | undefined;
  return {
    host,
    port,
    messages,
    get connections() {
      return connections;
    },
    get maxConcurrentConnections() {
      return maxConcurrent;
    },
    get openConnections() {
      return open;
    },
    get stalled() {
      return stalled;
    },
    get script() {
      return sink.script;
    },
    set script(value: SmtpSinkScript) {
      sink.script = value;
    },
    async waitForMessages(count: number, timeoutMs = 10_000) {
      await waitFor(() => messages.length >= count, { timeoutMs, what: `${count} message(s) at the sink on ${host}:${port} (have ${messages.length})` });
      return messages;
    },
    stop() {
      stopped ??= new Promise<void>((resolve) => server.close(() => resolve()));
      return stopped;
    },
  };
}
