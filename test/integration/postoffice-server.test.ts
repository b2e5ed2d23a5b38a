import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { signRequest } from '../../shared/signing.ts';
import { postofficeConfigSchema } from '../../postoffice/config.ts';
import { startPostoffice } from '../../postoffice/server.ts';
import { startBeanstalkd } from '../helpers/beanstalkd.ts';
import { freePort, waitFor } from '../helpers/ports.ts';
import { startTier } from '../helpers/tiers.ts';
import { testStoreUrl } from '../helpers/store.ts';

const run = promisify(execFile);
const FQDN = 'app1.example.net';
const KEY = 'server-test-key-0123456789abcdef0123456789';
const clients = { [FQDN]: { key: KEY, senderDomains: ['example.com'] } };

function body(subject: string): string {
  return JSON.stringify({ mailfrom: 'a@example.com', rcpttos: ['b@example.org'], data: `Subject: ${subject}\r\n\r\nx\r\n` });
}

function silentLogger() {
  return pino({ level: process.env.TEST_LOG ? 'debug' : 'silent' });
}

/**
 * A beanstalkd stand-in on loopback that answers `use` at once and holds every `put`
 * until the test releases it: the only way to have a request reliably in flight.
 */
async function startHoldingBeanstalkd(): Promise<{ port: number; puts: number; release(): void; closedConnections: number; stop(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const held: Array<() => void> = [];
  let released = false;
  const state = {
    port: 0,
    puts: 0,
    closedConnections: 0,
    release() {
      released = true;
      for (const answer of held.splice(0)) answer();
    },
    stop: () => new Promise<void>((resolve) => {
      for (const socket of sockets) socket.destroy();
      server.close(() => resolve());
    }),
  };
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => {
      sockets.delete(socket);
      state.closedConnections++;
    });
    let buffer = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      buffer = Buffer.concat([buffer, chunk]);
      for (;;) {
        const eol = buffer.indexOf('\r\n');
        if (eol < 0) return;
        const line = buffer.subarray(0, eol).toString();
        const [command, ...args] = line.split(' ');
        if (command === 'put') {
          const size = Number(args[3]);
          if (buffer.length < eol + 2 + size + 2) return;
          buffer = buffer.subarray(eol + 2 + size + 2);
          state.puts++;
          const answer = () => socket.write(`INSERTED ${state.puts}\r\n`);
          if (released) answer();
          else held.push(answer);
        } else {
          buffer = buffer.subarray(eol + 2);
          socket.write(command === 'use' ? `USING ${args[0]}\r\n` : 'UNKNOWN_COMMAND\r\n');
        }
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  state.port = (server.address() as { port: number }).port;
  return state;
}

describe('post office server lifecycle', { timeout: 60_000 }, () => {
  it('on stop, finishes a request waiting for its put before closing the queue', async (t) => {
    const queue = await startHoldingBeanstalkd();
    t.after(() => queue.stop());
    // The fake beanstalkd speaks only use/put: no status consumer (its own connection) here.
    const config = postofficeConfigSchema.parse({ store: { url: testStoreUrl() }, listen: { port: await freePort() }, beanstalk: { servers: [`127.0.0.1:${queue.port}`] }, clients, status: { enabled: false } });
    const postoffice = await startPostoffice(config, { logger: silentLogger(), registry: new Registry() });
    t.after(() => postoffice.stop());

    const payload = body('in flight');
    const headers = signRequest(KEY, { method: 'POST', path: '/v1/messages', fqdn: FQDN, body: payload });
    const response = fetch(`${postoffice.url}/v1/messages`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: payload, signal: AbortSignal.timeout(20_000) });
    await waitFor(() => queue.puts === 1, { what: 'the put to reach beanstalkd' });

    let stopped = false;
    const stopping = postoffice.stop().then(() => (stopped = true));
    await new Promise((r) => setImmediate(r));
    assert.equal(stopped, false, 'stop waits for the in-flight request');
    assert.equal(queue.closedConnections, 0, 'the queue stays open while a put is pending');

    queue.release();
    const res = await response;
    assert.equal(res.status, 202);
    assert.match(((await res.json()) as { id: string }).id, /^[0-9a-f-]{36}$/);
    await waitFor(() => stopped, { what: 'stop() to finish once the response is sent' });
    await stopping;
    await waitFor(() => queue.closedConnections === 1, { what: 'the queue connection to close after the response' });
  });

  it('serves HTTPS when tls.cert and tls.key are set', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'hedwig-po-tls-'));
    const cert = join(dir, 'cert.pem');
    const key = join(dir, 'key.pem');
    await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost'], { timeout: 30_000 });
    const beanstalkd = await startBeanstalkd();
    t.after(() => beanstalkd.stop());
    const config = postofficeConfigSchema.parse({ store: { url: testStoreUrl() }, listen: { port: await freePort() }, beanstalk: { servers: [beanstalkd.address] }, clients, tls: { cert, key } });
    const postoffice = await startPostoffice(config, { logger: silentLogger(), registry: new Registry() });
    t.after(() => postoffice.stop());
    assert.match(postoffice.url, /^https:\/\/127\.0\.0\.1:\d+$/);

    const payload = body('over tls');
    const headers = signRequest(KEY, { method: 'POST', path: '/v1/messages', fqdn: FQDN, body: payload });
    const answer = await new Promise<{ status: number; text: string }>((resolve, reject) => {
      const req = httpsRequest(`${postoffice.url}/v1/messages`, { method: 'POST', ca: readFileSync(cert), headers: { 'content-type': 'application/json', ...headers }, timeout: 15_000 }, (res) => {
        let text = '';
        res.on('data', (chunk: Buffer) => (text += chunk.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
      });
      req.on('error', reject);
      req.on('timeout', () => req.destroy(new Error('timeout')));
      req.end(payload);
    });
    assert.equal(answer.status, 202, answer.text);

    await assert.rejects(fetch(`${postoffice.url.replace('https:', 'http:')}/healthz`, { signal: AbortSignal.timeout(10_000) }), 'plain HTTP is not served');
  });

  it('refuses to start when a TLS file is missing, naming it', async () => {
    const config = postofficeConfigSchema.parse({ store: { url: testStoreUrl() }, listen: { port: await freePort() }, clients, tls: { cert: '/nonexistent/cert.pem', key: '/nonexistent/key.pem' } });
    await assert.rejects(startPostoffice(config, { logger: silentLogger(), registry: new Registry() }), { code: 'CONFIG_INVALID', message: /tls\.cert \/nonexistent\/cert\.pem: ENOENT/ });
  });
});

describe('postoffice/main.ts as a process', { timeout: 60_000 }, () => {
  it('starts from a YAML config, serves, and exits 0 on SIGTERM', async (t) => {
    const beanstalkd = await startBeanstalkd();
    t.after(() => beanstalkd.stop());
    const port = await freePort();
    const tier = await startTier('postoffice', { listen: { port }, beanstalk: { servers: [beanstalkd.address] }, clients }, { readyPort: port });
    t.after(() => tier.kill());
    assert.equal((await fetch(`http://127.0.0.1:${port}/readyz`)).status, 200);
    assert.equal(await tier.stop(), 0);
    assert.ok(tier.logs.some((l) => l.event === 'started'), JSON.stringify(tier.logs));
    assert.ok(!JSON.stringify(tier.logs).includes(KEY));
  });

  it('exits 2 with one log line naming the bad key when the config is invalid', async () => {
    await assert.rejects(startTier('postoffice', { clients: { [FQDN]: { key: 'short', senderDomains: ['example.com'] } } }), /postoffice exited with 2.*clients\.app1\.example\.net\.key/s);
  });
});
