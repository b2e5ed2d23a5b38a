import { z } from 'zod';
import { isValidDomain, isValidMailbox } from '../shared/address.ts';
import { AuthFailures } from './auth-failures.ts';
import { isCidr } from './networks.ts';
import { dummyHash, parsePasswordHash, verifyPassword, type PasswordHash } from './password-hash.ts';

/**
 * SMTP AUTH on mailman (issue 16.5), optional: PLAIN and LOGIN against users from the config,
 * each with an scrypt hash (password-hash.ts) and optionally the envelope senders it may use.
 * Where and when AUTH is offered (loopback, or after STARTTLS) is mailman/smtp.ts's business;
 * this module only answers "who is this" and "may they send as that".
 */

const USER_NAME = /^[^\s\x00-\x1f\x7f]{1,255}$/;

export function isValidUserName(name: string): boolean {
  return USER_NAME.test(name);
}

/** `app@example.com` or `@example.com`. */
export function isSenderPattern(value: string): boolean {
  return value.startsWith('@') ? isValidDomain(value.slice(1)) : isValidMailbox(value);
}

const userSchema = z
  .object({
    passwordHash: z.string().superRefine((value, ctx) => {
      const parsed = parsePasswordHash(value);
      if (!parsed.ok) ctx.addIssue({ code: 'custom', message: parsed.message });
    }),
    // Addresses (`app@example.com`) or whole domains (`@example.com`, that domain only, not its
    // subdomains). Unset: any sender the post office allows this host.
    allowedSenders: z.array(z.string().refine(isSenderPattern, { message: 'expected an address or @domain' })).min(1).optional(),
  })
  .strict();

export const smtpAuthConfigSchema = z
  .object({
    users: z
      .record(z.string().refine(isValidUserName, { message: 'a user name is 1 to 255 characters without spaces or control characters' }), userSchema)
      .refine((users) => Object.keys(users).length > 0, { message: 'list at least one user, or leave auth out' }),
    // Failures from one client address per window before AUTH from it is refused (454 4.7.0, or
    // 421 4.7.0 for a client outside allowedNetworks, which can do nothing without AUTH).
    maxFailuresPerAddress: z.number().int().positive().default(10),
    windowSeconds: z.number().int().positive().default(300),
    // Clients that may AUTH without STARTTLS, their password in clear on the wire: by default the
    // loopback only, where nothing is on a wire. Everyone else is offered AUTH only under TLS.
    plaintextNetworks: z.array(z.string().refine(isCidr, { message: 'not a CIDR network' })).default(['127.0.0.0/8', '::1/128']),
  })
  .strict();

export type SmtpAuthConfig = z.output<typeof smtpAuthConfigSchema>;

export interface AuthUser {
  name: string;
  /** Lower-cased; undefined when the user may use any sender. */
  allowedSenders: string[] | undefined;
}

export interface Credentials {
  username: string;
  password: string;
  /** PLAIN's authorization identity (RFC 4616), when the client sent one. */
  authzid?: string | undefined;
}

export type AuthFailureReason = 'unknown_user' | 'bad_password' | 'authzid_not_permitted';

export type AuthOutcome =
  | { ok: true; user: AuthUser }
  | { ok: false; reason: AuthFailureReason; failures: number }
  | { ok: false; reason: 'rate_limited'; retryAfterSeconds: number };

interface StoredUser extends AuthUser {
  hash: PasswordHash;
}

export class SmtpAuthenticator {
  readonly #users = new Map<string, StoredUser>();
  readonly #dummy: PasswordHash;
  readonly #failures: AuthFailures;

  constructor(config: Pick<SmtpAuthConfig, 'users' | 'maxFailuresPerAddress' | 'windowSeconds'>, options: { now?: () => number } = {}) {
    for (const [name, user] of Object.entries(config.users)) {
      const parsed = parsePasswordHash(user.passwordHash);
      if (!parsed.ok) throw new Error(`auth.users.${name}.passwordHash: ${parsed.message}`); // the schema refused it already
      this.#users.set(name, { name, allowedSenders: user.allowedSenders?.map((s) => s.toLowerCase()), hash: parsed.value });
    }
    // An unknown name costs one scrypt like a known one, with the cost of the first user's hash
    // (key-generator.ts makes every hash with the same parameters).
    this.#dummy = dummyHash(this.#users.values().next().value!.hash.params);
    this.#failures = new AuthFailures({ max: config.maxFailuresPerAddress, windowSeconds: config.windowSeconds, ...options });
  }

  /** Seconds until `address` may authenticate again; undefined when it may now. */
  lockedFor(address: string): number | undefined {
    return this.#failures.lockedFor(address);
  }

  async authenticate(credentials: Credentials, address: string): Promise<AuthOutcome> {
    const locked = this.#failures.lockedFor(address);
    if (locked !== undefined) return { ok: false, reason: 'rate_limited', retryAfterSeconds: locked };
    const user = this.#users.get(credentials.username);
    const matches = await verifyPassword(credentials.password, user?.hash ?? this.#dummy);
    let reason: AuthFailureReason | undefined;
    if (!user) reason = 'unknown_user';
    else if (!matches) reason = 'bad_password';
    // Acting as someone else (RFC 4616 authzid) is not offered: only as oneself.
    else if (credentials.authzid && credentials.authzid !== credentials.username) reason = 'authzid_not_permitted';
    if (reason || !user) return { ok: false, reason: reason ?? 'unknown_user', failures: this.#failures.failed(address) };
    return { ok: true, user: { name: user.name, allowedSenders: user.allowedSenders } };
  }
}

/** May `user` use `mailfrom` as envelope sender? The null sender only for an unrestricted user. */
export function senderAllowed(user: AuthUser, mailfrom: string): boolean {
  if (!user.allowedSenders) return true;
  const address = mailfrom.toLowerCase();
  if (address === '') return false;
  const domain = address.slice(address.lastIndexOf('@'));
  return user.allowedSenders.some((allowed) => allowed === address || allowed === domain);
}
