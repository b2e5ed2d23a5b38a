import type { SMTPServerAuthentication, SMTPServerAuthenticationResponse, SMTPServerSession } from 'smtp-server';
import { errorCode, errorMessage } from '../shared/errors.ts';
import type { Logger } from '../shared/logger.ts';
import type { MailmanMetrics } from './metrics.ts';
import { createNetworkMatcher } from './networks.ts';
import { SmtpAuthenticator, senderAllowed, type AuthUser, type SmtpAuthConfig } from './smtp-auth.ts';

/**
 * SMTP AUTH in mailman's sessions, on smtp-server's own machinery (onAuth, per-session
 * disabledCommands, onSecure): who is offered AUTH, what a client outside allowedNetworks may
 * do, the replies, the logs and the metric. mailman/smtp.ts calls it from its handlers.
 *
 * - AUTH is offered to clients in `auth.plaintextNetworks` (the loopback by default) as they
 *   connect, to everyone else only after STARTTLS (538 5.7.11 before it, mailman/smtp-connection.ts).
 * - A client outside allowedNetworks is let in only when it can be offered AUTH (TLS is configured,
 *   or it is in plaintextNetworks) and its address is not locked out; its MAIL FROM needs AUTH first.
 * - Failures per client address are limited (auth.maxFailuresPerAddress per auth.windowSeconds).
 */

/** A reply that refuses, with what smtp.ts's reject() logs and counts. */
export interface Refusal {
  reason: string;
  code: number;
  text: string;
  fields: Record<string, unknown>;
}

const LOCKED_OUT = '4.7.0 Too many authentication failures from your address, try again later';
const BAD_CREDENTIALS = { message: '5.7.8 Authentication credentials invalid', responseCode: 535 };

type AuthCallback = (err: Error | null | undefined, response?: SMTPServerAuthenticationResponse) => void;

export class SmtpAuthSessions {
  readonly #authenticator: SmtpAuthenticator;
  readonly #plaintext: (address: string | undefined) => boolean;
  readonly #tls: boolean;
  readonly #isAllowed: (address: string | undefined) => boolean;
  readonly #logger: Logger;
  readonly #metrics: MailmanMetrics;

  constructor(options: { config: SmtpAuthConfig; tls: boolean; isAllowed: (address: string | undefined) => boolean; logger: Logger; metrics: MailmanMetrics }) {
    this.#authenticator = new SmtpAuthenticator(options.config);
    this.#plaintext = createNetworkMatcher(options.config.plaintextNetworks);
    this.#tls = options.tls;
    this.#isAllowed = options.isAllowed;
    this.#logger = options.logger;
    this.#metrics = options.metrics;
  }

  /** For a client outside allowedNetworks: why it is refused at connect, or undefined to let it in. */
  refuseOutsider(session: SMTPServerSession, address: string): Refusal | undefined {
    if (!this.#tls && !this.#plaintext(session.remoteAddress)) {
      return { reason: 'network_not_allowed', code: 554, text: '5.7.1 Client host rejected: access denied', fields: { sessionId: session.id, remoteAddress: session.remoteAddress } };
    }
    const lockedFor = this.#authenticator.lockedFor(address);
    if (lockedFor === undefined) return undefined;
    return { reason: 'auth_rate_limited', code: 421, text: LOCKED_OUT, fields: { sessionId: session.id, remoteAddress: address, retryAfterSeconds: lockedFor } };
  }

  /** smtp-server's session.disabledCommands: AUTH outside plaintextNetworks only under TLS, STARTTLS only with a certificate. */
  disabledCommands(session: SMTPServerSession, secure: boolean): string[] {
    const disabled = this.#tls ? [] : ['STARTTLS'];
    if (!secure && !this.#plaintext(session.remoteAddress)) disabled.push('AUTH');
    return disabled;
  }

  /** smtp-server's onAuth, for PLAIN and LOGIN. Never logged: the password, the AUTH payload. */
  onAuth(auth: SMTPServerAuthentication, session: SMTPServerSession, address: string, callback: AuthCallback): void {
    const fields = { sessionId: session.id, remoteAddress: address, method: auth.method, user: (auth.username ?? '').slice(0, 255) };
    if (auth.method !== 'PLAIN' && auth.method !== 'LOGIN') return callback(null, BAD_CREDENTIALS);
    this.#authenticator.authenticate({ username: auth.username ?? '', password: auth.password ?? '', authzid: auth.authzid }, address).then(
      (outcome) => {
        this.#metrics.auth.inc({ result: outcome.ok ? 'succeeded' : outcome.reason });
        if (outcome.ok) {
          this.#logger.info({ event: 'auth_succeeded', ...fields, secure: session.secure });
          return callback(null, { user: outcome.user });
        }
        if (outcome.reason === 'rate_limited') {
          this.#logger.warn({ event: 'auth_rate_limited', ...fields, retryAfterSeconds: outcome.retryAfterSeconds });
          // A client outside allowedNetworks can do nothing more without AUTH: 421 closes the session.
          if (!this.#isAllowed(session.remoteAddress)) return callback(Object.assign(new Error(LOCKED_OUT), { responseCode: 421 }));
          return callback(null, { message: '4.7.0 Too many authentication failures, try again later', responseCode: 454 });
        }
        this.#logger.warn({ event: 'auth_failed', ...fields, reason: outcome.reason, failures: outcome.failures });
        callback(null, BAD_CREDENTIALS);
      },
      (err: unknown) => {
        this.#logger.error({ event: 'internal_error', sessionId: session.id, code: errorCode(err), error: errorMessage(err) });
        callback(null, { message: '4.7.0 Temporary authentication failure', responseCode: 454 });
      },
    );
  }

  /** At MAIL FROM, before anything else: a client outside allowedNetworks must have authenticated. */
  requireAuth(session: SMTPServerSession, address: string): Refusal | undefined {
    if (session.user || this.#isAllowed(session.remoteAddress)) return undefined;
    return { reason: 'auth_required', code: 530, text: '5.7.0 Authentication required', fields: { sessionId: session.id, remoteAddress: address } };
  }

  /** At MAIL FROM, once the address is valid: is it one the authenticated user may use? */
  refuseSender(session: SMTPServerSession, mailfrom: string): Refusal | undefined {
    const user = session.user as AuthUser | false | undefined;
    if (!user || senderAllowed(user, mailfrom)) return undefined;
    return { reason: 'sender_not_permitted', code: 553, text: '5.7.1 Sender address not permitted for this user', fields: { sessionId: session.id, authUser: user.name, mailfrom } };
  }
}

/** The authenticated user of a session, if any (smtp-server's session.user is `false` before AUTH). */
export function authUserOf(session: SMTPServerSession): AuthUser | undefined {
  return (session.user as AuthUser | false | undefined) || undefined;
}
