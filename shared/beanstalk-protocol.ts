/**
 * beanstalkd protocol values for the client: error codes, the mapping of server reply words
 * to them, argument checks (arguments travel on one text line, so a stray CR/LF or space
 * would inject or break a command) and the shaping of YAML replies.
 */
import { HedwigError, type ErrorCode } from './errors.ts';

/** The beanstalkd client's codes: a part of the one table in shared/errors.ts (which says what each means). */
export type BeanstalkErrorCode = Extract<
  ErrorCode,
  'DISCONNECTED' | 'TIMEOUT' | 'STALE_RESERVATION' | 'NOT_FOUND' | 'JOB_TOO_BIG' | 'DRAINING' | 'BURIED' | 'DEADLINE_SOON' | 'PROTOCOL'
>;

export class BeanstalkError extends HedwigError<BeanstalkErrorCode> {
  /** The server's reply word (`NOT_FOUND`, `OUT_OF_MEMORY`, ...) when the server refused the command. */
  readonly reply?: string;
  constructor(code: BeanstalkErrorCode, message: string, options?: { cause?: unknown; reply?: string }) {
    super(code, message, options);
    this.name = 'BeanstalkError';
    if (options?.reply !== undefined) this.reply = options.reply;
  }
}

/** Numbers stay numbers; every other value (names, booleans like `draining`) is a string. */
export type Stats = Record<string, string | number>;

const MAX_UINT32 = 2 ** 32 - 1;

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

export function toStats(parsed: unknown): Stats {
  const stats: Stats = {};
  if (parsed && typeof parsed === 'object') {
    for (const [key, value] of Object.entries(parsed)) stats[key] = typeof value === 'number' ? value : String(value);
  }
  return stats;
}

export function toStringList(parsed: unknown): string[] {
  return Array.isArray(parsed) ? parsed.map((item) => String(item)) : [];
}
