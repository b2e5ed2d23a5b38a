import { createServer, type IncomingMessage, type RequestListener, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { Socket } from 'node:net';
import { HEADER, verifySignature } from '../../shared/signing.ts';
import { freePort } from './ports.ts';

/**
 * A scriptable stand-in for the post office's `POST /v1/messages`, on loopback. It checks
 * signatures with the real `verifySignature`, records what it received and answers as
 * scripted: accept (202, same id for a repeated idempotency key), a fixed status and
 * body, or hang without answering. `down()`/`up()` stop and restart listening on the
 * same port to simulate an outage.
 */
export type FakeAnswer = { kind: 'accept' } | { kind: 'status'; status: number; body: Record<string, unknown> } | { kind: 'hang' };

export interface ReceivedRequest {
  path: string;
  fqdn: string | undefined;
  idempotencyKey: string | undefined;
  signatureOk: boolean;
  contentType: string | undefined;
  mailfrom: unknown;
  rcpttos: unknown;
  data: Buffer;
}

export interface FakePostoffice {
  url: string;
  port: number;
  received: ReceivedRequest[];
  /** Ids handed out, keyed by idempotency key. */
  accepted: Map<string, string>;
  answer(next: FakeAnswer): void;
  down(): Promise<void>;
  up(): Promise<void>;
  stop(): Promise<void>;
}

export async function startFakePostoffice(options: {
  key: string;
  fqdn: string;
  answer?: FakeAnswer;
  listening?: boolean;
  /** Serve HTTPS with this certificate (PEM) instead of HTTP. */
  tls?: { key: string; cert: string };
}): Promise<FakePostoffice> {
  const port = await freePort();
  const received: ReceivedRequest[] = [];
  const accepted = new Map<string, string>();
  const sockets = new Set<Socket>();
  const hanging = new Set<ServerResponse>();
  let answer: FakeAnswer = options.answer ?? { kind: 'accept' };
  let counter = 0;

  const handle = (req: IncomingMessage, res: ServerResponse, body: Buffer): void => {
    const header = (name: string): string | undefined => {
      const value = req.headers[name];
      return Array.isArray(value) ? value[0] : value;
    };
    const verdict = verifySignature(options.key, {
      method: req.method ?? '',
      path: req.url ?? '',
      fqdn: header(HEADER.fqdn) ?? '',
      timestamp: header(HEADER.timestamp),
      signature: header(HEADER.signature),
      idempotencyKey: header(HEADER.idempotencyKey),
      body,
    });
    let json: Record<string, unknown> = {};
    try {
      json = JSON.parse(body.toString('utf8')) as Record<string, unknown>;
    } catch {
      // recorded with empty fields; the test asserts on them
    }
    const idempotencyKey = header(HEADER.idempotencyKey);
    received.push({
      path: req.url ?? '',
      fqdn: header(HEADER.fqdn),
      idempotencyKey,
      signatureOk: verdict.ok && header(HEADER.fqdn) === options.fqdn,
      contentType: header('content-type'),
      mailfrom: json.mailfrom,
      rcpttos: json.rcpttos,
      data: Buffer.from(typeof json.data_base64 === 'string' ? json.data_base64 : '', 'base64'),
    });
    const reply = (status: number, payload: unknown): void => {
      res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(payload));
    };
    if (req.method !== 'POST' || req.url !== '/v1/messages') return reply(404, { error: 'not_found', message: 'no such route' });
    if (!verdict.ok) return reply(401, { error: 'unauthorized', message: verdict.code });
    if (answer.kind === 'hang') {
      hanging.add(res);
      return;
    }
    if (answer.kind === 'status') return reply(answer.status, answer.body);
    const key = idempotencyKey ?? `anonymous-${counter}`;
    let id = accepted.get(key);
    if (!id) {
      id = `po-${++counter}`;
      accepted.set(key, id);
    }
    reply(202, { id });
  };

  const listener: RequestListener = (req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => handle(req, res, Buffer.concat(chunks)));
  };
  const server = options.tls ? createHttpsServer({ key: options.tls.key, cert: options.tls.cert }, listener) : createServer(listener);
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });

  let listening = false;
  const up = async (): Promise<void> => {
    if (listening) return;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    listening = true;
  };
  const down = async (): Promise<void> => {
    if (!listening) return;
    listening = false;
    for (const res of hanging) res.destroy();
    hanging.clear();
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    for (const socket of sockets) socket.destroy();
    await closed;
  };
  if (options.listening !== false) await up();

  return {
    url: `${options.tls ? 'https' : 'http'}://127.0.0.1:${port}`,
    port,
    received,
    accepted,
    answer(next) {
      answer = next;
    },
    up,
    down,
    stop: down,
  };
}
