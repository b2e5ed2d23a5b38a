import { parseArgs, type ParseArgsConfig } from 'node:util';
import { parseHostPort } from '../shared/host-port.ts';
import { HedwigError, type ErrorCode } from '../shared/errors.ts';
import type { BeanstalkAddress } from '../shared/beanstalk.ts';

/**
 * Command-line parsing on top of node:util parseArgs: the commands are few and flat, so a
 * CLI framework would add a dependency without removing much code.
 */

/** Exit codes, documented in the README (operations section). */
export const EXIT = {
  ok: 0,
  /** Something failed at run time: beanstalkd unreachable, a move that did not complete. */
  failure: 1,
  /** Bad flags or arguments. */
  usage: 2,
  /** The command worked but found nothing: no such job, no matching log line. */
  notFound: 3,
} as const;

export class CliError extends HedwigError {
  readonly exitCode: number;
  constructor(code: ErrorCode, message: string, exitCode: number, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'CliError';
    this.exitCode = exitCode;
  }
}

export function usageError(message: string): CliError {
  return new CliError('USAGE', message, EXIT.usage);
}

export interface CliIo {
  stdout: NodeJS.WritableStream & { isTTY?: boolean };
  stderr: NodeJS.WritableStream & { isTTY?: boolean };
  stdin: NodeJS.ReadableStream & { isTTY?: boolean };
  env: NodeJS.ProcessEnv;
  now: () => number;
}

export interface Command {
  /** e.g. "failed retry" */
  name: string;
  summary: string;
  help: string;
  run(argv: string[], io: CliIo): Promise<number>;
}

type Options = NonNullable<ParseArgsConfig['options']>;

export const HELP_OPTION = { help: { type: 'boolean', short: 'h' } } as const satisfies Options;
export const JSON_OPTION = { json: { type: 'boolean' } } as const satisfies Options;

/** parseArgs with strict checking; its errors become usage errors naming the command. */
export function parseCommandArgs<O extends Options>(command: string, argv: string[], options: O) {
  try {
    return parseArgs({ args: argv, options: { ...HELP_OPTION, ...options }, allowPositionals: true, strict: true });
  } catch (err) {
    throw usageError(`${command}: ${(err as Error).message}`);
  }
}

const DURATION = /^(\d+)(s|m|h|d|w)$/;
const UNIT_SECONDS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86_400, w: 604_800 };

/** "90s", "30m", "2h", "1d", "1w" in milliseconds. */
export function parseDuration(value: string, flag: string): number {
  const match = DURATION.exec(value.trim());
  if (!match) throw usageError(`${flag}: expected a duration like 30m, 2h or 1d, got ${JSON.stringify(value)}`);
  return Number(match[1]) * UNIT_SECONDS[match[2]!]! * 1000;
}

export function parsePositiveInt(value: string, flag: string): number {
  if (!/^\d{1,9}$/.test(value) || Number(value) < 1) throw usageError(`${flag}: expected a positive whole number, got ${JSON.stringify(value)}`);
  return Number(value);
}

export const DEFAULT_BEANSTALK = '127.0.0.1:11300';
const BEANSTALK_PORT = 11300;

/** `--server host:port` (repeatable), else HEDWIG_BEANSTALK_SERVERS (comma-separated), else 127.0.0.1:11300. */
export function beanstalkServers(flags: string[] | undefined, env: NodeJS.ProcessEnv): BeanstalkAddress[] {
  const given = flags && flags.length > 0 ? flags : (env.HEDWIG_BEANSTALK_SERVERS ?? DEFAULT_BEANSTALK).split(',');
  const servers = given.map((s) => s.trim()).filter((s) => s.length > 0);
  if (servers.length === 0) throw usageError('no beanstalkd server given');
  return servers.map((value) => {
    try {
      const address = parseHostPort(value, BEANSTALK_PORT);
      if (!Number.isInteger(address.port) || address.port < 1 || address.port > 65535) throw new Error('port');
      return address;
    } catch {
      throw usageError(`--server: not a host[:port]: ${JSON.stringify(value)}`);
    }
  });
}

export const SERVER_OPTIONS = {
  server: { type: 'string', multiple: true },
} as const satisfies Options;

export const SERVER_HELP = `  --server HOST:PORT   beanstalkd server (repeatable); default: $HEDWIG_BEANSTALK_SERVERS
                       (comma-separated) or ${DEFAULT_BEANSTALK}`;
