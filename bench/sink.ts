/**
 * The fast SMTP sink of the benchmark, run as its own process (forked with IPC) so its
 * CPU time is measured apart from the tiers. It does the least a receiving MX must:
 * answer SMTP (with PIPELINING), read each message to its final dot, and note when the
 * message with a given `X-Bench-Id` arrived. Nothing is stored.
 *
 * Hand-written on raw sockets on purpose: smtp-server holds every greeting back for
 * 100 ms to catch early talkers, so with a new connection per message (as the worker
 * delivers) it caps each worker loop at ten messages a second, and it costs about half
 * a millisecond of CPU per message on the same two cores hedwig is measured on.
 *
 *   node --import tsx bench/sink.ts PORT
 *
 * Each message is known by its `X-Bench-Id` header (the bench's own load generators) or,
 * without one, by the number that Postfix's `smtp-source -N` (and the bench's msmtp runs)
 * put in front of the recipient's local part (`17rcpt@bench.test`). Each session is
 * counted for the relay that opened it, known by its EHLO name, so one sink serves
 * hedwig and Postfix side by side and tells their arrivals apart.
 *
 * IPC: {type:'stats'} -> {type:'stats', received, duplicates, connections, dkimSigned, bytes, byRelay}
 *      {type:'records'} -> {type:'records', ids, times, kinds, relays} (arrival, ms since the epoch)
 *      {type:'reset'} -> {type:'reset'}: forget every arrival (between benchmark cells)
 */
import { createServer, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';

export const BENCH_ID_HEADER = 'X-Bench-Id';
const ID_PATTERN = /\r\nX-Bench-Id: (\d+)\r\n/;
/** smtp-source -N: "<n>rcpt@domain"; the first recipient is the message's number. */
const NUMBERED_RECIPIENT = /^<?(\d+)[^\d@]/;
const DKIM_PATTERN = /\r\nDKIM-Signature:/i;

/** Wall-clock milliseconds with sub-millisecond resolution, comparable across processes. */
export function nowMs(): number {
  return performance.timeOrigin + performance.now();
}

export interface RelayCounts {
  received: number;
  duplicates: number;
  /** Messages that arrived with a DKIM-Signature header field. */
  dkimSigned: number;
  /** SMTP sessions this relay opened. */
  connections: number;
  /** Bytes of message data (as sent, dot-stuffed), for the mean message size. */
  bytes: number;
}

export interface SinkStats extends RelayCounts {
  /** The same counts for each relay, by the EHLO (or HELO) name it gave. */
  byRelay: Record<string, RelayCounts>;
}

/** How an arrival was told apart: its X-Bench-Id header, or the number in front of its first recipient. */
export type ArrivalKind = 'id' | 'rcpt';

export interface SinkRecords {
  ids: number[];
  /** Arrival, ms since the epoch. */
  times: number[];
  kinds: ArrivalKind[];
  /** EHLO name of the relay that delivered each arrival. */
  relays: string[];
}

export type SinkRequest = { type: 'stats' } | { type: 'records' } | { type: 'reset' };
export type SinkReply = ({ type: 'stats' } & SinkStats) | ({ type: 'records' } & SinkRecords) | { type: 'reset' };

/** What the client said in the session and transaction that carried a message. */
export interface SinkEnvelope {
  /** The EHLO/HELO argument, '' before any. */
  helo: string;
  /** RCPT TO arguments as sent (with angle brackets). */
  rcpts: string[];
}

const EHLO_REPLY = '250-sink.bench\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 104857600\r\n';
const END_OF_DATA = '\r\n.\r\n';

/**
 * One SMTP session; `onMessage` gets each message as sent (still dot-stuffed, ending in CRLF)
 * with its envelope; `onHelo` each EHLO/HELO name.
 */
export function serveSinkSession(socket: Socket, onMessage: (message: string, envelope: SinkEnvelope) => void, onHelo?: (name: string) => void): void {
  socket.setNoDelay(true);
  socket.setEncoding('latin1');
  socket.on('error', () => socket.destroy());
  let buffer = '';
  let inData = false;
  let helo = '';
  let rcpts: string[] = [];
  socket.write('220 sink.bench ESMTP\r\n');
  socket.on('data', (chunk: string) => {
    buffer += chunk;
    let replies = '';
    for (;;) {
      if (inData) {
        // A leading CRLF lets an empty message (a lone dot line) match too.
        const end = `\r\n${buffer}`.indexOf(END_OF_DATA);
        if (end < 0) break;
        // `end` is where the marker starts in the prefixed text, so in `buffer` the message
        // (with its last CRLF) is [0, end) and the marker's remaining ".\r\n" follows it.
        onMessage(buffer.slice(0, end), { helo, rcpts });
        rcpts = [];
        buffer = buffer.slice(end + 3);
        inData = false;
        replies += '250 2.0.0 Ok: queued\r\n';
        continue;
      }
      const eol = buffer.indexOf('\r\n');
      if (eol < 0) break;
      const verb = buffer.slice(0, Math.min(eol, 4)).toUpperCase();
      const line = buffer.slice(0, eol);
      buffer = buffer.slice(eol + 2);
      if (verb === 'EHLO' || verb === 'HELO') {
        helo = line.slice(5).trim().split(' ')[0] ?? '';
        onHelo?.(helo);
        replies += verb === 'EHLO' ? EHLO_REPLY : '250 sink.bench\r\n';
      } else if (verb === 'RCPT') {
        rcpts.push(line.slice(line.indexOf(':') + 1).trim().split(' ')[0] ?? '');
        replies += '250 2.0.0 Ok\r\n';
      } else if (verb === 'MAIL' || verb === 'RSET') {
        rcpts = [];
        replies += '250 2.0.0 Ok\r\n';
      } else if (verb === 'DATA') {
        replies += '354 End data with <CR><LF>.<CR><LF>\r\n';
        inData = true;
      } else if (verb === 'QUIT') {
        socket.end(`${replies}221 2.0.0 Bye\r\n`);
        return;
      } else if (verb === 'NOOP') replies += '250 2.0.0 Ok\r\n';
      else replies += '502 5.5.2 Command not implemented\r\n';
    }
    if (replies) socket.write(replies);
  });
}

/** The message's number: its X-Bench-Id, else the number in front of its first recipient. */
export function arrivalKey(message: string, envelope: SinkEnvelope): { kind: ArrivalKind; id: number } | undefined {
  const match = ID_PATTERN.exec(`\r\n${message.slice(0, 4096)}`);
  if (match) return { kind: 'id', id: Number(match[1]) };
  const numbered = NUMBERED_RECIPIENT.exec(envelope.rcpts[0] ?? '');
  return numbered ? { kind: 'rcpt', id: Number(numbered[1]) } : undefined;
}

function emptyCounts(): RelayCounts {
  return { received: 0, duplicates: 0, dkimSigned: 0, connections: 0, bytes: 0 };
}

function main(port: number): void {
  let records: SinkRecords = { ids: [], times: [], kinds: [], relays: [] };
  let seen = new Set<string>();
  let total = emptyCounts();
  let byRelay: Record<string, RelayCounts> = {};
  const countsOf = (relay: string) => (byRelay[relay] ??= emptyCounts());

  const server = createServer((socket) => {
    total.connections++;
    serveSinkSession(
      socket,
      (message, envelope) => {
        const key = arrivalKey(message, envelope);
        if (!key) return;
        const relay = countsOf(envelope.helo);
        const name = `${key.kind}:${key.id}`;
        const signed = DKIM_PATTERN.test(`\r\n${message.slice(0, 4096)}`);
        for (const counts of [total, relay]) {
          counts.received++;
          counts.bytes += message.length;
          if (signed) counts.dkimSigned++;
          if (seen.has(name)) counts.duplicates++;
        }
        seen.add(name);
        records.ids.push(key.id);
        records.times.push(nowMs());
        records.kinds.push(key.kind);
        records.relays.push(envelope.helo);
      },
      (helo) => countsOf(helo).connections++,
    );
  });
  server.listen(port, '127.0.0.1', () => process.send?.({ type: 'listening' }));

  process.on('message', (request: SinkRequest) => {
    if (request.type === 'stats') process.send?.({ type: 'stats', ...total, byRelay } satisfies SinkReply);
    else if (request.type === 'records') process.send?.({ type: 'records', ...records } satisfies SinkReply);
    else if (request.type === 'reset') {
      records = { ids: [], times: [], kinds: [], relays: [] };
      seen = new Set();
      total = emptyCounts();
      byRelay = {};
      process.send?.({ type: 'reset' } satisfies SinkReply);
    }
  });
  process.on('disconnect', () => process.exit(0));
}

if (process.argv[1]?.endsWith('sink.ts')) main(Number(process.argv[2]));
