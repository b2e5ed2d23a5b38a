/**
 * Every code a hedwig error (or an `{ ok: false, code }` result) can carry, with what it
 * means: one table, so callers branch on values, not on message text (the convention of
 * fastify's FST_* table and nodemailer's E* codes), the compiler refuses a code nobody
 * declared, and the README's error-code table is checked against this one
 * (test/unit/errors.test.ts).
 *
 * Not in this table: codes of other libraries that pass through as they are (nodemailer's
 * ECONNECTION, Node's ENOENT; `errorCode()` reads those too) and the post office's HTTP
 * `error` values (snake_case, part of its API, listed with its answers in the README).
 */
export const ERROR_CODES = {
  // Start-up (shared/lifecycle.ts logs them as startup_failed; exit 2 for CONFIG_INVALID, 1 for anything else).
  CONFIG_INVALID: 'a configuration value is wrong or a file it names cannot be read; the message names the file (or environment variable) and every bad key; exit code 2, never retried',
  STARTUP_FAILED: 'start-up failed for a reason a retry can cure: a port that is taken or not allowed, an address that is not up yet; exit code 1',
  BAD_HOSTPORT: 'a value is not host[:port]',
  BAD_CIDR: 'a value is not a CIDR network',

  // beanstalkd (shared/beanstalk*.ts).
  DISCONNECTED: 'the beanstalkd connection closed or never opened; pending operations are rejected with it',
  TIMEOUT: 'beanstalkd did not answer within the command timeout (the connection is then dropped)',
  STALE_RESERVATION: 'a job operation on a job reserved on an earlier connection (the job went back to ready)',
  NOT_FOUND: 'beanstalkd has no such job or tube; the CLI: no such record',
  JOB_TOO_BIG: "a put larger than beanstalkd's -z",
  DRAINING: 'beanstalkd is draining and takes no new jobs',
  BURIED: 'beanstalkd stored the job but, out of memory, buried it',
  DEADLINE_SOON: 'a job this connection holds is about to reach its time-to-run',
  PROTOCOL: 'any other beanstalkd error reply, or an argument the client refuses to send',

  // mailman's spool.
  SPOOL_BAD_ID: 'not a spool entry id',
  SPOOL_CORRUPT: 'a spool file whose envelope or size is wrong',
  SPOOL_WRITE_FAILED: 'a message could not be written to the spool',

  // worker.
  DKIM_SIGN_FAILED: 'a message that should be signed came out of the signer without a DKIM-Signature',
  EIGHTBIT_UNCONVERTIBLE: 'an 8-bit message for a server without 8BITMIME that cannot be converted to 7 bit (8-bit header, or 8-bit bytes in a quoted-printable or base64 part)',
  DNS_TIMEOUT: 'a DNS query the worker sends itself (DANE: TLSA and DNSSEC status) got no answer in time',
  DNS_ERROR: 'such a DNS query failed otherwise (unreachable server, unreadable answer)',

  // The shared store (shared/store/).
  STORE_UNAVAILABLE: 'the store (store.url: SQLite file or PostgreSQL) cannot be opened or did not answer in time; the relay goes on without it',

  // The hedwig CLI (cli/args.ts CliError; each also has an exit code).
  USAGE: 'wrong command line',
  UNREACHABLE: 'beanstalkd or the post office cannot be reached',
  UNREADABLE: 'a file (key, message, log) cannot be read',
  NOT_QUEUED: 'the post office does not know the message',
  REFUSED: 'mailman or the post office refused the message',
  REJECTED: 'the post office answered with an error',
  SCAN_FAILED: 'reading the failed tube stopped half way',
} as const satisfies Record<string, string>;

export type ErrorCode = keyof typeof ERROR_CODES;

/** An expected failure as a value: what modules return instead of throwing across their boundary. */
export interface Failed<C extends ErrorCode = ErrorCode> {
  ok: false;
  code: C;
  message: string;
}

export class HedwigError<C extends ErrorCode = ErrorCode> extends Error {
  readonly code: C;
  constructor(code: C, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'HedwigError';
  }
}

/** The `code` of any thrown value: ours, a library's (nodemailer's E*, Node's errno names), or undefined. */
export function errorCode(err: unknown): string | undefined {
  if (err && typeof err === 'object' && 'code' in err && typeof (err as { code: unknown }).code === 'string') {
    return (err as { code: string }).code;
  }
  return undefined;
}

export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
