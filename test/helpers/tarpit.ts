import { createServer, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';

/**
 * A tarpit MX on loopback: greets at once, then answers a chosen command one byte every
 * `byteEveryMs` (continuation lines of a reply that never ends), so idle timers never fire
 * and only a deadline ends the session. Commands before that one get ordinary replies
 * (EHLO without PIPELINING, so each command waits for its reply).
 */
export interface Tarpit {
  host: string;
  port: number;
  /** Sessions accepted so far. */
  readonly connections: number;
  /** Sessions still open: tarpitted deliveries in flight. */
  readonly openConnections: number;
  stop(): Promise<void>;
}

export async function startTarpit(options: { host?: string; trickleAt?: 'EHLO' | 'MAIL'; byteEveryMs?: number } = {}): Promise<Tarpit> {
  const host = options.host ?? '127.0.0.1';
  const trickleAt = options.trickleAt ?? 'EHLO';
  const byteEveryMs = options.byteEveryMs ?? 500;
  const sockets = new Set<Socket>();
  let connections = 0;
  const server = createServer((socket) => {
    connections++;
    sockets.add(socket);
    const timers: NodeJS.Timeout[] = [];
    socket.on('close', () => {
      sockets.delete(socket);
      for (const t of timers) clearInterval(t);
    });
    socket.on('error', () => {});
    socket.write('220 tarpit.test ESMTP\r\n');
    let buffered = '';
    socket.on('data', (chunk) => {
      buffered += chunk.toString('latin1');
      let end: number;
      while ((end = buffered.indexOf('\r\n')) >= 0) {
        const line = buffered.slice(0, end);
        buffered = buffered.slice(end + 2);
        const verb = line.slice(0, 4).toUpperCase();
        if (verb === trickleAt) {
          const endless = '250-slowly\r\n';
          let i = 0;
          timers.push(setInterval(() => socket.write(endless[i++ % endless.length]!), byteEveryMs));
        } else if (verb === 'EHLO' || verb === 'HELO') socket.write('250 tarpit.test\r\n');
        else if (verb === 'QUIT') socket.end('221 bye\r\n');
        else socket.write('250 ok\r\n');
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  const { port } = server.address() as AddressInfo;
  return {
    host,
    port,
    get connections() {
      return connections;
    },
    get openConnections() {
      return sockets.size;
    },
    stop() {
      for (const socket of sockets) socket.destroy();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
