import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';

/**
 * Hostile HTTP clients on raw sockets (issue 12.6), and what the attacked process costs:
 * resident memory and CPU read from /proc, as `ps` would.
 */

/** Resident set size of `pid` in MB (VmRSS), and its peak so far (VmHWM). */
export function memoryOf(pid: number): { rssMB: number; peakMB: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kB = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
  return { rssMB: kB('VmRSS') / 1024, peakMB: kB('VmHWM') / 1024 };
}

/** CPU seconds `pid` has used (user + system). */
export function cpuSecondsOf(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
}

/** Samples VmRSS every `intervalMs` until stopped; `max` is the highest seen. */
export function sampleMemory(pid: number, intervalMs = 20): { stop(): number } {
  let max = memoryOf(pid).rssMB;
  const timer = setInterval(() => {
    try {
      max = Math.max(max, memoryOf(pid).rssMB);
    } catch {
      // the process is gone
    }
  }, intervalMs);
  return {
    stop() {
      clearInterval(timer);
      return max;
    },
  };
}

export interface RawExchange {
  /** The status line's code, 0 when none came. */
  status: number;
  /** Response head and body as received. */
  response: string;
  /** Bytes of the request body this client managed to hand to its socket before it was closed. */
  bodyBytesWritten: number;
  /** Whether the server closed the connection (rather than this client giving up). */
  closedByServer: boolean;
}

/**
 * Sends `head` and then `body` (or `bodyBytes` filler bytes) as fast as the socket takes
 * them, optionally holding back the last `stallBytes`, and waits for the server to answer
 * and close, at most `waitMs`.
 */
export function rawRequest(options: {
  port: number;
  localAddress?: string;
  head: string;
  body: Buffer;
  stallBytes?: number;
  /** Write the body this many bytes at a time, `trickleMs` apart, instead of at once. */
  trickle?: { bytes: number; everyMs: number };
  waitMs: number;
}): Promise<RawExchange> {
  return new Promise((resolve) => {
    const socket: Socket = connect({ host: '127.0.0.1', port: options.port, ...(options.localAddress ? { localAddress: options.localAddress } : {}) });
    let response = '';
    let written = 0;
    let closedByServer = false;
    let trickleTimer: NodeJS.Timeout | undefined;
    const send = options.body.subarray(0, options.body.length - (options.stallBytes ?? 0));
    const done = () => {
      clearTimeout(giveUp);
      clearInterval(trickleTimer);
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(response)?.[1] ?? 0);
      resolve({ status, response, bodyBytesWritten: written, closedByServer });
    };
    const giveUp = setTimeout(() => {
      socket.destroy();
    }, options.waitMs);
    socket.on('data', (chunk: Buffer) => (response += chunk.toString('latin1')));
    socket.on('end', () => {
      closedByServer = true;
      socket.destroy();
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EPIPE' || err.code === 'ECONNRESET') closedByServer = true;
    });
    socket.on('close', done);
    socket.on('connect', () => {
      socket.write(options.head);
      if (options.trickle) {
        const { bytes, everyMs } = options.trickle;
        trickleTimer = setInterval(() => {
          if (written >= send.length || socket.destroyed) return clearInterval(trickleTimer);
          socket.write(send.subarray(written, written + bytes));
          written += bytes;
        }, everyMs);
        return;
      }
      // In pieces, so `written` says how far the server let it get before it closed.
      const piece = 256 * 1024;
      const pump = () => {
        while (written < send.length && !socket.destroyed) {
          const next = send.subarray(written, written + piece);
          written += next.length;
          if (!socket.write(next)) return void socket.once('drain', pump);
        }
      };
      pump();
    });
  });
}
