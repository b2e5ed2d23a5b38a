import { z } from 'zod';

/**
 * How long a command may wait for its complete reply: deadlines, not idle timers, so a
 * server that answers one byte at a time (a tarpit) cannot hold a session beyond them.
 * The defaults are RFC 5321 §4.5.3.2's (MAIL, RCPT 5 min, DATA initiation 2 min, DATA
 * termination 10 min) and Postfix's smtp_*_timeout for the others (helo, starttls, quit
 * 300 s, rset 20 s).
 */
export const COMMAND_DEADLINES = {
  heloMs: 300_000,
  starttlsMs: 300_000,
  mailMs: 300_000,
  rcptMs: 300_000,
  dataInitMs: 120_000,
  /** From the 354 to the reply after the final dot: writing the message and the server's verdict. */
  dataDoneMs: 600_000,
  rsetMs: 20_000,
  quitMs: 300_000,
} as const;
export type CommandDeadlines = { [K in keyof typeof COMMAND_DEADLINES]: number };

const deadline = (ms: number) => z.number().int().positive().default(ms);

/** `timeouts`: how long a session may wait for the receiving server, and a delivery in all. */
export const timeoutsSchema = z
  .object({
    connectMs: z.number().int().positive().default(30_000),
    greetingMs: z.number().int().positive().default(30_000),
    /** Idle time on the socket (nothing received) before the session is given up. */
    socketMs: z.number().int().positive().default(300_000),
    heloMs: deadline(COMMAND_DEADLINES.heloMs),
    starttlsMs: deadline(COMMAND_DEADLINES.starttlsMs),
    mailMs: deadline(COMMAND_DEADLINES.mailMs),
    rcptMs: deadline(COMMAND_DEADLINES.rcptMs),
    dataInitMs: deadline(COMMAND_DEADLINES.dataInitMs),
    dataDoneMs: deadline(COMMAND_DEADLINES.dataDoneMs),
    rsetMs: deadline(COMMAND_DEADLINES.rsetMs),
    quitMs: deadline(COMMAND_DEADLINES.quitMs),
    /** One delivery to one domain in all: every MX address, connection and transaction (deliver.ts). */
    deliveryMs: deadline(900_000),
  })
  .strict()
  .prefault({});

/** What a session needs; the command deadlines default to COMMAND_DEADLINES. */
export type SessionTimeouts = { connectMs: number; greetingMs: number; socketMs: number } & Partial<CommandDeadlines>;

/** The command a line sends, as nodemailer's errors name it. */
export function commandOf(line: string): string {
  const verb = line.slice(0, 4).toUpperCase();
  if (verb === 'MAIL') return 'MAIL FROM';
  if (verb === 'RCPT') return 'RCPT TO';
  return line.split(' ', 1)[0]!.toUpperCase();
}

/** The deadline of a command (`end of data`: the reply after the final dot). */
export function deadlineOf(command: string, deadlines: CommandDeadlines): number {
  switch (command) {
    case 'MAIL FROM':
      return deadlines.mailMs;
    case 'RCPT TO':
      return deadlines.rcptMs;
    case 'DATA':
      return deadlines.dataInitMs;
    case 'end of data':
    case '.':
      return deadlines.dataDoneMs;
    case 'STARTTLS':
      return deadlines.starttlsMs;
    case 'RSET':
      return deadlines.rsetMs;
    case 'QUIT':
      return deadlines.quitMs;
    default:
      return deadlines.heloMs;
  }
}

