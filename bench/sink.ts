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
 * IPC: {type:'stats'} -> {type:'stats', received, duplicates, connections, dkimSigned}
 *      {type:'records'} -> {type:'records', ids: number[], times: number[]} (arrival, ms since the epoch)
 */
import { createServer, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';

export const BENCH_ID_HEADER = 'X-Bench-Id';
const ID_PATTERN = /\r\nX-Bench-Id: (\d+)\r\n/;
const DKIM_PATTERN = /\r\nDKIM-Signature:/i;

/** Wall-clock milliseconds with sub-millisecond resolution, comparable across processes. */
export function nowMs(): number {
  return performance.timeOrigin + performance.now();
}

export interface SinkStats {
  received: number;
  duplicates: number;
  connections: number;
  /** Messages that arrived with a DKIM-Signature header field. */
  dkimSigned: number;
}

export type SinkRequest = { type: 'stats' } | { type: 'records' };
export type SinkReply = ({ type: 'stats' } & SinkStats) | { type: 'records'; ids: number[]; times: number[] };

const EHLO_REPLY = '250-sink.bench\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 104857600\r\n';
const END_OF_DATA = '\r\n.\r\n';

/** One SMTP session; `onMessage` gets each message as sent (still dot-stuffed, ending in CRLF). */
export function serveSinkSession(socket: Socket, onMessage: (message: string) => void): void {
  socket.setNoDelay(true);
  socket.setEncoding('latin1');
  socket.on('error', () => socket.destroy());
  let buffer = '';
  let inData = false;
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
        onMessage(buffer.slice(0, end));
        buffer = buffer.slice(end + 3);
        inData = false;
        replies += '250 2.0.0 Ok: queued\r\n';
        continue;
      }
      const eol = buffer.indexOf('\r\n');
      if (eol < 0) break;
      const verb = buffer.slice(0, Math.min(eol, 4)).toUpperCase();
      buffer = buffer.slice(eol + 2);
      if (verb === 'EHLO') replies += EHLO_REPLY;
      else if (verb === 'DATA') {
        replies += '354 End data with <CR><LF>.<CR><LF>\r\n';
        inData = true;
      } else if (verb === 'QUIT') {
        socket.end(`${replies}221 2.0.0 Bye\r\n`);
        return;
      } else if (['HELO', 'MAIL', 'RCPT', 'RSET', 'NOOP'].includes(verb)) replies += '250 2.0.0 Ok\r\n';
      else replies += '502 5.5.2 Command not implemented\r\n';
    }
    if (replies) socket.write(replies);
  });
}

function main(port: number): void {
  const ids: number[] = [];
  const times: number[] = [];
  const seen = new Set<number>();
  let duplicates = 0;
  let connections = 0;
  let dkimSigned = 0;

  const server = createServer((socket) => {
    connections++;
    serveSinkSession(socket, (message) => {
      const head = message.slice(0, 4096);
      if (DKIM_PATTERN.test(`\r\n${head}`)) dkimSigned++;
      const match = ID_PATTERN.exec(`\r\n${head}`);
      if (!match) return;
      const id = Number(match[1]);
      if (seen.has(id)) duplicates++;
      seen.add(id);
      ids.push(id);
      times.push(nowMs());
    });
  });
  server.listen(port, '127.0.0.1', () => process.send?.({ type: 'listening' }));

  process.on('message', (request: SinkRequest) => {
    if (request.type === 'stats') process.send?.({ type: 'stats', received: ids.length, duplicates, connections, dkimSigned } satisfies SinkReply);
    else if (request.type === 'records') process.send?.({ type: 'records', ids, times } satisfies SinkReply);
  });
  process.on('disconnect', () => process.exit(0));
}

if (process.argv[1]?.endsWith('sink.ts')) main(Number(process.argv[2]));
