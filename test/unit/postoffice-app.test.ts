import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { HedwigError } from '../../shared/errors.ts';
import { decodeOutboundJob, type OutboundJob } from '../../shared/job.ts';
import { signRequest } from '../../shared/signing.ts';
import { buildApp } from '../../postoffice/app.ts';
import { postofficeConfigSchema, type PostofficeConfig } from '../../postoffice/config.ts';
import type { JobQueue, QueuedJob } from '../../postoffice/queue.ts';

const KEY = 'unit-test-key-0123456789abcdef0123456789';
const OTHER_KEY = 'another-key-0123456789abcdef0123456789ab';
const FQDN = 'app1.example.net';
const MAX_BYTES = 1000;
const MESSAGE = 'From: a@example.com\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nhello\r\n';

/** Records what would have been put into beanstalkd; `down` makes puts fail like a dead server. */
class FakeQueue implements JobQueue {
  payloads: Buffer[] = [];
  down = false;
  async put(payload: Buffer): Promise<QueuedJob> {
    if (this.down) throw new HedwigError('DISCONNECTED', 'not connected');
    this.payloads.push(payload);
    return { jobId: String(this.payloads.length), server: '127.0.0.1:11300' };
  }
  isReady(): boolean {
    return !this.down;
  }
  get jobs(): OutboundJob[] {
    return this.payloads.map(decodeOutboundJob);
  }
}

function makeConfig(overrides: Record<string, unknown> = {}): PostofficeConfig {
  return postofficeConfigSchema.parse({
    limits: { maxMessageBytes: MAX_BYTES, maxRecipients: 3 },
    clients: {
      [FQDN]: { key: KEY, senderDomains: ['example.com'] },
      'relay.example.net': { key: OTHER_KEY, senderDomains: ['*'] },
    },
    ...overrides,
  });
}

function setup(overrides: Record<string, unknown> = {}) {
  const queue = new FakeQueue();
  const logLines: string[] = [];
  const logger = pino({ level: 'info' }, { write: (line: string) => void logLines.push(line) });
  const clock = { nowMs: Date.UTC(2026, 0, 1, 12, 0, 0) };
  const registry = new Registry();
  const app = buildApp(makeConfig(overrides), { logger, queue, registry, now: () => clock.nowMs });
  return { app, queue, logLines, clock, registry };
}

type Setup = ReturnType<typeof setup>;

interface SendOptions {
  key?: string;
  fqdn?: string;
  path?: string;
  signedPath?: string;
  signedBody?: string | Buffer;
  idempotencyKey?: string;
  nowMs?: number;
  headers?: Record<string, string>;
  remoteAddress?: string;
}

function sendSigned(s: Setup, body: string | Buffer, options: SendOptions = {}) {
  const path = options.path ?? '/v1/messages';
  const headers = signRequest(options.key ?? KEY, {
    method: 'POST',
    path: options.signedPath ?? path,
    fqdn: options.fqdn ?? FQDN,
    body: options.signedBody ?? body,
    idempotencyKey: options.idempotencyKey,
    now: options.nowMs ?? s.clock.nowMs,
  });
  return s.app.inject({ method: 'POST', url: path, headers: { 'content-type': 'application/json', ...headers, ...options.headers }, payload: body, ...(options.remoteAddress ? { remoteAddress: options.remoteAddress } : {}) });
}

function message(fields: Record<string, unknown> = {}): string {
  return JSON.stringify({ mailfrom: 'sender@example.com', rcpttos: ['rcpt@example.org'], data: MESSAGE, ...fields });
}

function assertRejected(s: Setup, res: { statusCode: number; json(): unknown }, status: number, body: Record<string, unknown>): void {
  assert.equal(res.statusCode, status);
  const got = res.json() as Record<string, unknown>;
  assert.equal(typeof got.message, 'string');
  const { message: _human, ...rest } = got;
  assert.deepEqual(rest, body);
  assert.equal(s.queue.payloads.length, 0, 'nothing may be queued');
}

describe('POST /v1/messages: accepted messages', () => {
  it('answers 202 with the message id only after the job was put, storing the exact bytes base64-encoded', async () => {
    const s = setup();
    const res = await sendSigned(s, message());
    assert.equal(res.statusCode, 202);
    const { id } = res.json() as { id: string };
    assert.equal(s.queue.jobs.length, 1);
    const job = s.queue.jobs[0]!;
    assert.deepEqual(job, {
      v: 1,
      id,
      fqdn: FQDN,
      mailfrom: 'sender@example.com',
      rcpttos: ['rcpt@example.org'],
      data: Buffer.from(MESSAGE).toString('base64'),
      receivedAt: s.clock.nowMs,
      attempts: 0,
      senderDomains: ['example.com'],
    });
  });

  it('keeps 8-bit content byte for byte when sent as data_base64', async () => {
    const s = setup();
    const bytes = Buffer.concat([Buffer.from('From: sender@example.com\r\nSubject: caf'), Buffer.from([0xe9, 0x00, 0xff]), Buffer.from('\r\n\r\nbody\r\n')]);
    const res = await sendSigned(s, message({ data: undefined, data_base64: bytes.toString('base64') }));
    assert.equal(res.statusCode, 202);
    assert.deepEqual(Buffer.from(s.queue.jobs[0]!.data, 'base64'), bytes);
  });

  it('accepts the null sender (bounces) whatever the sender domain policy', async () => {
    const s = setup();
    const res = await sendSigned(s, message({ mailfrom: '' }));
    assert.equal(res.statusCode, 202);
    assert.equal(s.queue.jobs[0]!.mailfrom, '');
  });

  it('accepts any sender domain for a client allowed "*"', async () => {
    const s = setup();
    const res = await sendSigned(s, message({ mailfrom: 'x@anything.example' }), { fqdn: 'relay.example.net', key: OTHER_KEY });
    assert.equal(res.statusCode, 202);
  });

  it('matches sender domains and the client fqdn case-insensitively', async () => {
    const s = setup();
    const res = await sendSigned(s, message({ mailfrom: 'Sender@EXAMPLE.com' }), { fqdn: 'APP1.example.net' });
    assert.equal(res.statusCode, 202);
    assert.equal(s.queue.jobs[0]!.fqdn, FQDN);
  });

  it('accepts a message of exactly maxMessageBytes', async () => {
    const s = setup();
    const res = await sendSigned(s, message({ data: 'x'.repeat(MAX_BYTES) }));
    assert.equal(res.statusCode, 202);
  });

  it('signs the path as sent, including the query string', async () => {
    const s = setup();
    assert.equal((await sendSigned(s, message(), { path: '/v1/messages?trace=1' })).statusCode, 202);
    const res = await sendSigned(s, message(), { path: '/v1/messages?trace=2', signedPath: '/v1/messages' });
    assert.equal(res.statusCode, 401);
    assert.equal((res.json() as { error: string }).error, 'bad_signature');
  });

  it('logs one "queued" line per message, without keys, signatures or message content', async () => {
    const s = setup();
    const res = await sendSigned(s, message());
    const queued = s.logLines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.event === 'queued');
    assert.equal(queued.length, 1);
    assert.deepEqual(
      { ...queued[0], level: undefined, time: undefined, pid: undefined, hostname: undefined, msg: undefined },
      { level: undefined, time: undefined, pid: undefined, hostname: undefined, msg: undefined, event: 'queued', route: 'v1', messageId: (res.json() as { id: string }).id, fqdn: FQDN, mailfrom: 'sender@example.com', rcpttos: ['rcpt@example.org'], rcptCount: 1, size: Buffer.byteLength(MESSAGE), jobId: '1', server: '127.0.0.1:11300' },
    );
    await sendSigned(s, message(), { key: OTHER_KEY });
    const all = s.logLines.join('');
    assert.ok(!all.includes(KEY) && !all.includes(OTHER_KEY), 'no key in logs');
    assert.ok(!all.includes('hello') && !all.includes(Buffer.from(MESSAGE).toString('base64')), 'no message body in logs');
    assert.ok(!/[0-9a-f]{64}/.test(all), 'no signature in logs');
  });
});

describe('POST /v1/messages: authentication (checked before anything else about the body)', () => {
  it('rejects a request without signature headers', async () => {
    const s = setup();
    const res = await s.app.inject({ method: 'POST', url: '/v1/messages', headers: { 'content-type': 'application/json' }, payload: message() });
    assertRejected(s, res, 401, { error: 'missing_signature' });
  });

  it('answers an unknown fqdn exactly like a wrong key, and judges the timestamp first (issue 12.14)', async () => {
    const s = setup();
    const unknown = await sendSigned(s, message(), { fqdn: 'stranger.example.net' });
    const wrongKey = await sendSigned(s, message(), { key: 'not-the-key-0123456789abcdef0123456789' });
    assertRejected(s, unknown, 401, { error: 'bad_signature' });
    assert.equal(unknown.body, wrongKey.body);
    assertRejected(s, await sendSigned(s, message(), { fqdn: 'stranger.example.net', nowMs: s.clock.nowMs - 301_000 }), 401, { error: 'stale_timestamp' });
    await s.app.close(); // flushes the aggregated failure lines
    const failures = s.logLines.map((l) => JSON.parse(l) as { event?: string; reasons?: Record<string, number> }).filter((l) => l.event === 'auth_failures');
    assert.ok(failures.some((l) => l.reasons?.unknown_fqdn === 1), `the log keeps the distinction: ${JSON.stringify(failures)}`);
  });

  it('rejects a signature made with another key', async () => {
    const s = setup();
    assertRejected(s, await sendSigned(s, message(), { key: OTHER_KEY }), 401, { error: 'bad_signature' });
  });

  it('rejects a body changed after signing', async () => {
    const s = setup();
    const res = await sendSigned(s, message({ rcpttos: ['victim@example.org'] }), { signedBody: message() });
    assertRejected(s, res, 401, { error: 'bad_signature' });
  });

  it('rejects a timestamp outside the window and one that is not a number', async () => {
    const s = setup();
    assertRejected(s, await sendSigned(s, message(), { nowMs: s.clock.nowMs - 301_000 }), 401, { error: 'stale_timestamp' });
    assertRejected(s, await sendSigned(s, message(), { nowMs: s.clock.nowMs + 301_000 }), 401, { error: 'stale_timestamp' });
    assertRejected(s, await sendSigned(s, message(), { headers: { 'x-hedwig-timestamp': 'yesterday' } }), 401, { error: 'bad_timestamp' });
  });

  it('rejects the exact same signed request a second time as a replay', async () => {
    const s = setup();
    const body = message();
    const headers = { 'content-type': 'application/json', ...signRequest(KEY, { method: 'POST', path: '/v1/messages', fqdn: FQDN, body, now: s.clock.nowMs }) };
    const first = await s.app.inject({ method: 'POST', url: '/v1/messages', headers, payload: body });
    assert.equal(first.statusCode, 202);
    const replay = await s.app.inject({ method: 'POST', url: '/v1/messages', headers, payload: body });
    assert.equal(replay.statusCode, 401);
    assert.deepEqual({ ...(replay.json() as object), message: undefined }, { error: 'replayed', message: undefined });
    assert.equal(s.queue.payloads.length, 1, 'queued once');
  });

  it('lets a client resend the exact same request when the first attempt was not accepted', async () => {
    const s = setup();
    s.queue.down = true;
    const body = message();
    const headers = { 'content-type': 'application/json', ...signRequest(KEY, { method: 'POST', path: '/v1/messages', fqdn: FQDN, body, now: s.clock.nowMs }) };
    assert.equal((await s.app.inject({ method: 'POST', url: '/v1/messages', headers, payload: body })).statusCode, 503);
    s.queue.down = false;
    assert.equal((await s.app.inject({ method: 'POST', url: '/v1/messages', headers, payload: body })).statusCode, 202);
    assert.equal(s.queue.payloads.length, 1);
  });

  it('answers 401, not 400, to an unauthenticated request with an invalid body', async () => {
    const s = setup();
    assertRejected(s, await sendSigned(s, '{not json', { key: OTHER_KEY }), 401, { error: 'bad_signature' });
  });
});

describe('POST /v1/messages: validation', () => {
  it('rejects a body that is not JSON', async () => {
    const s = setup();
    assertRejected(s, await sendSigned(s, '{"mailfrom": '), 400, { error: 'invalid_json' });
  });

  it('names the invalid recipient by its index', async () => {
    const s = setup();
    const res = await sendSigned(s, message({ rcpttos: ['ok@example.org', 'not an address'] }));
    assertRejected(s, res, 400, { error: 'invalid_request', field: 'rcpttos.1' });
  });

  it('rejects CR/LF in the sender and in recipients (SMTP command injection)', async () => {
    const s = setup();
    assertRejected(s, await sendSigned(s, message({ mailfrom: 'sender@example.com\r\nRCPT TO:<x@evil.example>' })), 400, { error: 'invalid_request', field: 'mailfrom' });
    assertRejected(s, await sendSigned(s, message({ rcpttos: ['rcpt@example.org\nDATA'] })), 400, { error: 'invalid_request', field: 'rcpttos.0' });
  });

  it('requires between 1 and maxRecipients recipients', async () => {
    const s = setup();
    assertRejected(s, await sendSigned(s, message({ rcpttos: [] })), 400, { error: 'invalid_request', field: 'rcpttos' });
    const four = ['a@example.org', 'b@example.org', 'c@example.org', 'd@example.org'];
    assertRejected(s, await sendSigned(s, message({ rcpttos: four })), 400, { error: 'invalid_request', field: 'rcpttos' });
  });

  it('requires exactly one of data and data_base64', async () => {
    const s = setup();
    assertRejected(s, await sendSigned(s, message({ data_base64: 'aGk=' })), 400, { error: 'invalid_request', field: 'data_base64' });
    assertRejected(s, await sendSigned(s, message({ data: undefined })), 400, { error: 'invalid_request', field: 'data' });
  });

  it('rejects data_base64 that is not strict base64', async () => {
    const s = setup();
    assertRejected(s, await sendSigned(s, message({ data: undefined, data_base64: 'aGk*' })), 400, { error: 'invalid_request', field: 'data_base64' });
  });

  it('accepts data_base64 of every size up to maxMessageBytes (10 MiB), checked in linear time (issue 12.1)', async () => {
    const s = setup({ limits: { maxMessageBytes: 10 * 1024 * 1024, maxRecipients: 3 } });
    for (const size of [1, 3.5 * 1024 * 1024, 5 * 1024 * 1024, 10 * 1024 * 1024]) {
      const bytes = Buffer.alloc(size, 'a');
      bytes.write('From: sender@example.com\r\nSubject: big\r\n\r\n');
      const res = await sendSigned(s, message({ data: undefined, data_base64: bytes.toString('base64') }));
      assert.equal(res.statusCode, 202, `${size} bytes: ${res.body}`);
      // The 1-byte message is too short for its From:, so it gets one on top (and its line an end).
      const queued = Buffer.from(s.queue.jobs.at(-1)!.data, 'base64');
      assert.ok(queued.equals(size === 1 ? Buffer.from('From: sender@example.com\r\nF\r\n') : bytes));
    }
    const bad = `${Buffer.alloc(5 * 1024 * 1024, 'a').toString('base64')}*AAA`;
    const res = await sendSigned(s, message({ data: undefined, data_base64: bad }));
    assert.equal(res.statusCode, 400);
    assert.equal((res.json() as { field: string }).field, 'data_base64');
  });

  it('rejects base64 that decodes but is not canonical: base64url, missing padding, spare bits, line breaks', async () => {
    const s = setup();
    for (const text of ['-_-_', 'aGk', 'aGl=', 'aG\nk=', 'aGk= ', ' aGk=']) {
      assertRejected(s, await sendSigned(s, message({ data: undefined, data_base64: text })), 400, { error: 'invalid_request', field: 'data_base64' });
    }
  });

  it('refuses invalid UTF-8 in data, naming the field, instead of queueing U+FFFD (issue 12.7)', async () => {
    const s = setup();
    const [head, tail] = message({ data: 'Subject: x\r\n\r\nXX\r\n' }).split('XX') as [string, string];
    const body = Buffer.concat([Buffer.from(head), Buffer.from([0xff, 0xfe]), Buffer.from(tail)]);
    assertRejected(s, await sendSigned(s, body), 400, { error: 'invalid_utf8', field: 'data' });
    // An honest U+FFFD (valid UTF-8) is content like any other.
    assert.equal((await sendSigned(s, message({ data: 'Subject: x\r\n\r\n\ufffd\r\n' }))).statusCode, 202);
  });

  it('refuses address-literal recipients, naming the recipient (issue 12.8)', async () => {
    const s = setup();
    for (const literal of ['user@[127.0.0.1]', 'user@[IPv6:::1]']) {
      const res = await sendSigned(s, message({ rcpttos: ['ok@example.org', literal] }));
      assertRejected(s, res, 400, { error: 'invalid_request', field: 'rcpttos.1' });
      assert.match((res.json() as { message: string }).message, /address literals/);
    }
  });

  it('rejects unknown fields by name', async () => {
    const s = setup();
    assertRejected(s, await sendSigned(s, message({ priority: 'high' })), 400, { error: 'invalid_request', field: 'priority' });
  });

  it('rejects a JSON value that is not an object', async () => {
    const s = setup();
    assertRejected(s, await sendSigned(s, '[1,2]'), 400, { error: 'invalid_request' });
  });

  it('rejects a decoded message larger than maxMessageBytes', async () => {
    const s = setup();
    assertRejected(s, await sendSigned(s, message({ data: 'x'.repeat(MAX_BYTES + 1) })), 413, { error: 'message_too_large' });
    const b64 = Buffer.alloc(MAX_BYTES + 1, 0xe9).toString('base64');
    assertRejected(s, await sendSigned(s, message({ data: undefined, data_base64: b64 })), 413, { error: 'message_too_large' });
  });

  it('rejects a body larger than the body limit before reading it, with a JSON 413', async () => {
    const s = setup();
    const huge = message({ data: 'x'.repeat(MAX_BYTES * 2 + 70_000) });
    assertRejected(s, await sendSigned(s, huge), 413, { error: 'message_too_large' });
  });

  it('rejects a sender domain the client may not use; subdomains are not implied', async () => {
    const s = setup();
    assertRejected(s, await sendSigned(s, message({ mailfrom: 'ceo@bank.example' })), 403, { error: 'sender_domain_not_allowed', field: 'mailfrom' });
    assertRejected(s, await sendSigned(s, message({ mailfrom: 'x@mail.example.com' })), 403, { error: 'sender_domain_not_allowed', field: 'mailfrom' });
  });

  it('rejects content types other than JSON with a JSON 415 (once the headers are authenticated)', async () => {
    const s = setup();
    assertRejected(s, await sendSigned(s, 'hi', { headers: { 'content-type': 'text/plain' } }), 415, { error: 'unsupported_media_type' });
    const unsigned = await s.app.inject({ method: 'POST', url: '/v1/messages', headers: { 'content-type': 'text/plain' }, payload: 'hi' });
    assertRejected(s, unsigned, 401, { error: 'missing_signature' });
  });
});

describe('POST /v1/messages: queue failures and idempotency', () => {
  it('answers 503 queue_unavailable with Retry-After when beanstalkd cannot take the job', async () => {
    const s = setup();
    s.queue.down = true;
    const res = await sendSigned(s, message());
    assertRejected(s, res, 503, { error: 'queue_unavailable' });
    assert.match(String(res.headers['retry-after']), /^\d+$/);
    assert.equal((await s.app.inject({ method: 'GET', url: '/readyz' })).statusCode, 503);
  });

  it('answers a retry with the same idempotency key with the same id and queues once', async () => {
    const s = setup();
    const first = await sendSigned(s, message(), { idempotencyKey: 'spool-0001' });
    assert.equal(first.statusCode, 202);
    s.clock.nowMs += 30_000; // a later retry, signed afresh
    const retry = await sendSigned(s, message(), { idempotencyKey: 'spool-0001' });
    assert.equal(retry.statusCode, 202);
    assert.deepEqual(retry.json(), first.json());
    assert.equal(s.queue.payloads.length, 1);
  });

  it('answers an identical resend of an idempotent request like a retry, not as a replay', async () => {
    const s = setup();
    const body = message();
    const headers = { 'content-type': 'application/json', ...signRequest(KEY, { method: 'POST', path: '/v1/messages', fqdn: FQDN, body, idempotencyKey: 'spool-0002', now: s.clock.nowMs }) };
    const first = await s.app.inject({ method: 'POST', url: '/v1/messages', headers, payload: body });
    const again = await s.app.inject({ method: 'POST', url: '/v1/messages', headers, payload: body });
    assert.equal(again.statusCode, 202);
    assert.deepEqual(again.json(), first.json());
    assert.equal(s.queue.payloads.length, 1);
  });

  it('waits for an in-flight first attempt instead of queueing the retry again', async () => {
    const s = setup();
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const put = s.queue.put.bind(s.queue);
    s.queue.put = async (payload) => {
      await gate;
      return put(payload);
    };
    const first = sendSigned(s, message(), { idempotencyKey: 'spool-0003' });
    const retry = sendSigned(s, message(), { idempotencyKey: 'spool-0003', nowMs: s.clock.nowMs + 1000 });
    setImmediate(release);
    const [a, b] = await Promise.all([first, retry]);
    assert.equal(a.statusCode, 202);
    assert.deepEqual(b.json(), a.json());
    assert.equal(s.queue.payloads.length, 1);
  });

  it('queues a retry whose first attempt failed, and only once', async () => {
    const s = setup();
    s.queue.down = true;
    assert.equal((await sendSigned(s, message(), { idempotencyKey: 'spool-0004' })).statusCode, 503);
    s.queue.down = false;
    assert.equal((await sendSigned(s, message(), { idempotencyKey: 'spool-0004', nowMs: s.clock.nowMs + 1000 })).statusCode, 202);
    assert.equal((await sendSigned(s, message(), { idempotencyKey: 'spool-0004', nowMs: s.clock.nowMs + 2000 })).statusCode, 202);
    assert.equal(s.queue.payloads.length, 1);
  });

  it('remembers at most idempotencyMaxEntries keys, forgetting the oldest', async () => {
    const s = setup({ idempotencyMaxEntries: 2 });
    for (const key of ['spool-a', 'spool-b', 'spool-c']) await sendSigned(s, message(), { idempotencyKey: key });
    s.clock.nowMs += 1000;
    await sendSigned(s, message(), { idempotencyKey: 'spool-c' });
    assert.equal(s.queue.payloads.length, 3, 'spool-c is still known');
    await sendSigned(s, message(), { idempotencyKey: 'spool-a' });
    assert.equal(s.queue.payloads.length, 4, 'spool-a was forgotten, so its retry queues again');
  });

  it('scopes idempotency keys per client', async () => {
    const s = setup();
    await sendSigned(s, message(), { idempotencyKey: 'same' });
    await sendSigned(s, message(), { idempotencyKey: 'same', fqdn: 'relay.example.net', key: OTHER_KEY });
    assert.equal(s.queue.payloads.length, 2);
  });

  it('rejects an idempotency key reused for a different message', async () => {
    const s = setup();
    await sendSigned(s, message(), { idempotencyKey: 'spool-0005' });
    s.queue.payloads = [];
    const res = await sendSigned(s, message({ rcpttos: ['other@example.org'] }), { idempotencyKey: 'spool-0005' });
    assertRejected(s, res, 422, { error: 'idempotency_key_reused', field: 'idempotency-key' });
  });
});

describe('authentication failures: throttled per address and fqdn, logged aggregated (issue 12.11)', () => {
  it('answers 429 with Retry-After once an address failed too often for a host, before looking at the request', async () => {
    const s = setup({ authFailures: { windowSeconds: 60, maxPerAddress: 100, maxPerAddressAndFqdn: 3 } });
    for (let i = 0; i < 3; i++) assert.equal((await sendSigned(s, message(), { key: OTHER_KEY, remoteAddress: '192.0.2.66' })).statusCode, 401);
    const locked = await sendSigned(s, message(), { remoteAddress: '192.0.2.66' });
    assertRejected(s, locked, 429, { error: 'too_many_auth_failures' });
    assert.equal(locked.headers['retry-after'], '60');
    // The host itself, from its own address, is not locked out by someone else's failures on its name.
    assert.equal((await sendSigned(s, message(), { remoteAddress: '192.0.2.10' })).statusCode, 202);
    s.clock.nowMs += 60_000;
    const later = await sendSigned(s, message({ rcpttos: ['later@example.org'] }), { remoteAddress: '192.0.2.66' });
    assert.equal(later.statusCode, 202, 'a new window');
  });

  it('throttles the form route too, and the address as a whole across routes', async () => {
    const s = setup({ authFailures: { windowSeconds: 60, maxPerAddress: 2, maxPerAddressAndFqdn: 2 } });
    const form = (key: string) => new URLSearchParams({ fqdn: FQDN, key, email: message() }).toString();
    for (let i = 0; i < 2; i++) {
      const res = await s.app.inject({ method: 'POST', url: '/', headers: { 'content-type': 'application/x-www-form-urlencoded' }, payload: form('wrong') });
      assert.equal(res.statusCode, 401);
    }
    const res = await s.app.inject({ method: 'POST', url: '/', headers: { 'content-type': 'application/x-www-form-urlencoded' }, payload: form(KEY) });
    assert.equal(res.statusCode, 429);
    assert.equal((await sendSigned(s, message())).statusCode, 429, 'the address as a whole');
  });

  it('logs failures as one auth_failures line per address and fqdn, no per-request rejected lines', async () => {
    const s = setup({ authFailures: { windowSeconds: 60, maxPerAddress: 1000, maxPerAddressAndFqdn: 1000 } });
    for (let i = 0; i < 50; i++) await sendSigned(s, message(), { key: OTHER_KEY });
    await s.app.close();
    const lines = s.logLines.map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.equal(lines.filter((l) => l.event === 'rejected').length, 0);
    const failures = lines.filter((l) => l.event === 'auth_failures');
    assert.equal(failures.length, 1);
    assert.deepEqual({ fqdn: failures[0]!.fqdn, failures: failures[0]!.failures, reasons: failures[0]!.reasons }, { fqdn: FQDN, failures: 50, reasons: { bad_signature: 50 } });
    assert.match(await s.registry.metrics(), /hedwig_postoffice_auth_failures_total\{reason="bad_signature",tier="postoffice"\} 50|hedwig_postoffice_auth_failures_total\{reason="bad_signature"\} 50/);
  });
});

describe('legacy hedwig form route', () => {
  function form(s: Setup, fields: Record<string, string>, url = '/') {
    return s.app.inject({ method: 'POST', url, headers: { 'content-type': 'application/x-www-form-urlencoded' }, payload: new URLSearchParams(fields).toString() });
  }
  const email = JSON.stringify({ mailfrom: 'sender@example.com', rcpttos: ['rcpt@example.org'], data: MESSAGE });

  it('answers 200 with the id and queues the message', async () => {
    const s = setup();
    const res = await form(s, { fqdn: FQDN, key: KEY, email });
    assert.equal(res.statusCode, 200);
    const job = s.queue.jobs[0]!;
    assert.equal(job.id, (res.json() as { id: string }).id);
    assert.equal(Buffer.from(job.data, 'base64').toString(), MESSAGE);
    assert.deepEqual(job.rcpttos, ['rcpt@example.org']);
  });

  it('rejects a wrong key and an unknown fqdn alike', async () => {
    const s = setup();
    assertRejected(s, await form(s, { fqdn: FQDN, key: OTHER_KEY, email }), 401, { error: 'bad_credentials' });
    assertRejected(s, await form(s, { fqdn: 'stranger.example.net', key: KEY, email }), 401, { error: 'bad_credentials' });
    assertRejected(s, await form(s, { fqdn: FQDN, email }), 401, { error: 'bad_credentials' });
  });

  it('applies the same validation, size and sender rules', async () => {
    const s = setup();
    assertRejected(s, await form(s, { fqdn: FQDN, key: KEY, email: '{oops' }), 400, { error: 'invalid_json', field: 'email' });
    assertRejected(s, await form(s, { fqdn: FQDN, key: KEY }), 400, { error: 'invalid_request', field: 'email' });
    const badRcpt = JSON.stringify({ mailfrom: 'sender@example.com', rcpttos: ['x\r\n@example.org'], data: 'x' });
    assertRejected(s, await form(s, { fqdn: FQDN, key: KEY, email: badRcpt }), 400, { error: 'invalid_request', field: 'rcpttos.0' });
    const big = JSON.stringify({ mailfrom: 'sender@example.com', rcpttos: ['r@example.org'], data: 'x'.repeat(MAX_BYTES + 1) });
    assertRejected(s, await form(s, { fqdn: FQDN, key: KEY, email: big }), 413, { error: 'message_too_large' });
    const foreign = JSON.stringify({ mailfrom: 'ceo@bank.example', rcpttos: ['r@example.org'], data: 'x' });
    assertRejected(s, await form(s, { fqdn: FQDN, key: KEY, email: foreign }), 403, { error: 'sender_domain_not_allowed', field: 'mailfrom' });
    s.queue.down = true;
    assertRejected(s, await form(s, { fqdn: FQDN, key: KEY, email }), 503, { error: 'queue_unavailable' });
  });

  it('serves on the configured path', async () => {
    const s = setup({ legacy: { path: '/hedwig' } });
    assert.equal((await form(s, { fqdn: FQDN, key: KEY, email }, '/hedwig')).statusCode, 200);
    assert.equal((await form(s, { fqdn: FQDN, key: KEY, email }, '/')).statusCode, 404);
  });

  it('is absent (JSON 404) when disabled', async () => {
    const s = setup({ legacy: { enabled: false } });
    assertRejected(s, await form(s, { fqdn: FQDN, key: KEY, email }), 404, { error: 'not_found' });
  });

  it('never logs the key', async () => {
    const s = setup();
    await form(s, { fqdn: FQDN, key: KEY, email });
    await form(s, { fqdn: FQDN, key: `${KEY}x`, email });
    assert.ok(!s.logLines.join('').includes(KEY));
  });
});

describe('operations endpoints', () => {
  it('serves /healthz, /readyz and prometheus /metrics with the message counters', async () => {
    const s = setup();
    await sendSigned(s, message());
    await sendSigned(s, message(), { key: OTHER_KEY });
    assert.equal((await s.app.inject({ method: 'GET', url: '/healthz' })).statusCode, 200);
    assert.equal((await s.app.inject({ method: 'GET', url: '/readyz' })).statusCode, 200);
    const metrics = await s.app.inject({ method: 'GET', url: '/metrics' });
    assert.equal(metrics.statusCode, 200);
    assert.match(metrics.body, /hedwig_postoffice_messages_accepted_total\{route="v1"\} 1/);
    assert.match(metrics.body, /hedwig_postoffice_messages_rejected_total\{reason="bad_signature"\} 1/);
    assert.match(metrics.body, /hedwig_postoffice_request_duration_seconds_count\{route="\/v1\/messages",method="POST",status="202"\} 1/);
  });

  it('answers unknown routes with a JSON 404', async () => {
    const s = setup();
    const res = await s.app.inject({ method: 'GET', url: '/nope' });
    assertRejected(s, res, 404, { error: 'not_found' });
  });
});
