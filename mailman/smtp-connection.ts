import type { Socket } from 'node:net';
import { SMTPServer } from 'smtp-server';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';

/**
 * smtp-server's connection with the replies the README promises where smtp-server answers on
 * its own, before any of our handlers runs (each override names the RFC). Everything else is
 * smtp-server's. These override methods of smtp-server 3.21.6 (typed in its smtp-connection.d.ts);
 * the version is pinned by patches/ (patch-package --error-on-warn), and
 * test/integration/mailman-smtp.test.ts checks every reply, so an upgrade that changes them fails.
 *
 * One handler per verb, so a new verb (AUTH, say) is one more method here.
 */
export interface MailmanConnectionLimits {
  /** SIZE of the listener (smtp-server's `size`). */
  maxMessageBytes: number;
  /** After a 554 greeting, how long to wait for QUIT before closing. */
  refusedWaitMs: number;
  /** SMTP AUTH is configured (mailman/smtp-auth.ts); where a session may not use it, AUTH gets 538. */
  auth: boolean;
}

/**
 * smtp-server's SASL replies (lib/sasl.js) with the enhanced codes of RFC 4954 §6 (and the
 * texts Postfix uses). Keyed by code and smtp-server's text; nothing else is rewritten.
 */
const SASL_REPLIES: Record<string, string> = {
  '235 Authentication successful': '2.7.0 Authentication successful',
  '501 Authentication aborted': '5.7.0 Authentication aborted',
  '501 Error: invalid userdata': '5.5.2 Invalid authentication data',
  '501 Error: missing username': '5.5.2 Missing user name',
  '501 Error: syntax: AUTH PLAIN token': '5.5.4 Syntax: AUTH PLAIN [initial-response]',
  '501 Error: syntax: AUTH LOGIN': '5.5.4 Syntax: AUTH LOGIN [initial-response]',
};

const REFUSED_COMMAND_LIMIT = 20;

class MailmanConnection extends SMTPConnection {
  /** Set after a 554 greeting: RFC 5321 §3.1 waits for QUIT and answers 503 until then. */
  private refused: { commands: number; timer: NodeJS.Timeout } | undefined;
  private readonly limits: MailmanConnectionLimits;

  constructor(server: SMTPServer, socket: Socket, options: Record<string, unknown>, limits: MailmanConnectionLimits) {
    super(server, socket, options);
    this.limits = limits;
  }

  /**
   * smtp-server closes right after the 554 of a refused greeting. RFC 5321 §3.1: the server "MUST
   * wait for the client to send a QUIT command before closing the connection and SHOULD respond
   * to any intervening commands with 503". Bounded: closed after refusedWaitMs or 20 commands.
   */
  override _refuse(err: Parameters<SMTPConnection['_refuse']>[0], context?: string | false): void {
    if ((err.responseCode ?? 554) !== 554) return super._refuse(err, context);
    this.send(554, err.message, false);
    const timer = setTimeout(() => this.close(), this.limits.refusedWaitMs);
    timer.unref();
    this.refused = { commands: 0, timer };
  }

  override _onCommand(command: Buffer, callback?: () => void): void {
    if (!this.refused) {
      // RFC 4954 §6: AUTH where this session may not use it (off the loopback before STARTTLS)
      // is 538 5.7.11, not smtp-server's "500 command not recognized". Not inside an AUTH
      // exchange, whose continuation lines are base64, never a command.
      if (this.limits.auth && !this._nextHandler && /^AUTH(?:\s|$)/i.test(command.toString('latin1').trim()) && !this._isSupported('AUTH')) {
        this.send(538, '5.7.11 Encryption required for requested authentication mechanism', false);
        return callback?.();
      }
      return super._onCommand(command, callback);
    }
    const verb = command.toString('latin1').trim().split(/\s+/)[0]!.toUpperCase();
    if (verb === 'QUIT') {
      clearTimeout(this.refused.timer);
      this.send(221, '2.0.0 Bye', false);
      this.close();
    } else if (++this.refused.commands >= REFUSED_COMMAND_LIMIT) {
      clearTimeout(this.refused.timer);
      this.send(421, '4.7.0 Too many commands after a refused greeting', false);
    } else {
      this.send(503, '5.5.1 Bad sequence of commands', false);
    }
    callback?.();
  }

  /** RFC 4954 §4 replies with their enhanced codes where smtp-server has none: a second AUTH, an unknown mechanism. */
  override handler_AUTH(command: Buffer, callback: () => void): void {
    const mechanism = (command.toString('latin1').trim().split(/\s+/)[1] ?? '').toUpperCase();
    if (this.session.user) {
      this.send(503, '5.5.1 Already authenticated', false);
      return callback();
    }
    if (!(this._server.options.authMethods ?? []).includes(mechanism)) {
      this.send(504, '5.5.4 Unrecognized authentication type', false);
      return callback();
    }
    super.handler_AUTH(command, callback);
  }

  override send(code: number, data?: string | string[] | null, context?: string | false): void {
    const mapped = typeof data === 'string' ? SASL_REPLIES[`${code} ${data}`] : undefined;
    super.send(code, mapped ?? data, context);
  }

  /** smtp-server refuses `SIZE=` over the limit itself, without the enhanced code RFC 1870 §6 and RFC 3463 give (5.3.4). */
  override handler_MAIL(command: Buffer, callback: () => void): void {
    const parsed = this._parseAddressCommand('mail from', command.toString());
    const size = parsed && parsed.args ? (parsed.args as Record<string, unknown>).SIZE : undefined;
    if (typeof size === 'string' && /^\d{1,20}$/.test(size) && Number(size) > this.limits.maxMessageBytes) {
      this.send(552, '5.3.4 Message size exceeds fixed maximum message size', false);
      return callback();
    }
    if (!parsed && /^MAIL\s+FROM:/i.test(command.toString('latin1'))) {
      this.send(553, '5.1.7 Bad sender address syntax', false);
      return callback();
    }
    super.handler_MAIL(command, callback);
  }

  /** smtp-server answers an address its parser refuses (an unqualified `<root>`, say) 501 with no enhanced code; RFC 3463: 553 5.1.3. */
  override handler_RCPT(command: Buffer, callback: () => void): void {
    const parsed = this._parseAddressCommand('rcpt to', command.toString());
    if ((!parsed || !parsed.address) && /^RCPT\s+TO:/i.test(command.toString('latin1'))) {
      this.send(553, '5.1.3 Bad recipient address syntax', false);
      return callback();
    }
    super.handler_RCPT(command, callback);
  }
}

/** smtp-server's listener, making MailmanConnections (the same three steps as SMTPServer.connect). */
export class MailmanSmtpServer extends SMTPServer {
  private readonly limits: MailmanConnectionLimits;

  constructor(options: ConstructorParameters<typeof SMTPServer>[0], limits: MailmanConnectionLimits) {
    super(options);
    this.limits = limits;
  }

  override connect(socket: Socket, socketOptions: Record<string, unknown>): void {
    const connection = new MailmanConnection(this, socket, socketOptions, this.limits);
    this.connections.add(connection);
    connection.on('error', (err: Error) => this._onError(err));
    connection.on('connect', (data: Parameters<SMTPServer['_onClientConnect']>[0]) => this._onClientConnect(data));
    connection.init();
  }
}
