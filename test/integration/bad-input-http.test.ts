/**
 * Bad input over HTTP against a real post office process and a real beanstalkd: each
 * request gets the documented 4xx with a JSON error code, nothing reaches the queue, and
 * the process keeps serving. (test/unit/postoffice-app.test.ts checks the same rules
 * in depth through fastify's inject; this checks them over real sockets, where body and
 * header limits and HTTP parsing happen.)
 */
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { connect } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { BeanstalkClient } from '../../shared/beanstalk.ts';
import { TUBE, jobSizeFor } from '../../shared/job.ts';
import { signRequest } from '../../shared/signing.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { freePort } from '../helpers/ports.ts';
import { startTier, type TierProcess } from '../helpers/tiers.ts';

const FQDN = 'app1.badinput.test';
const KEY = '0badc0de'.repeat(8);
const OTHER_KEY = 'feedface'.repeat(8);
const MAX_MESSAGE_BYTES = 4096;
const PATH = '/v1/messages';
const MESSAGE = 'From: a@example.test\r\nTo: b@dest.test\r\nSubject: hi\r\n\r\nhello\r\n';

interface Answer {
  status: number;
  body: Record<string, unknown>;
}

function submission(fields: Record<string, unknown> = {}): string {
  return JSON.stringify({ mailfrom: 'a@example.test', rcpttos: ['b@dest.test'], data: MESSAGE, ...fields });
}

describe('bad input over HTTP (real post office, real beanstalkd)', { timeout: 90_000 }, () => {
  let beanstalkd: BeanstalkdProcess;
  let postoffice: TierProcess;
  let probe: BeanstalkClient;
  let port: number;

  before(async () => {
    beanstalkd = await startBeanstalkd({ maxJobSize: jobSizeFor(MAX_MESSAGE_BYTES, 5) });
    port = await freePort();
    postoffice = await startTier(
      'postoffice',
      {
        listen: { host: '127.0.0.1', port },
        beanstalk: { servers: [beanstalkd.address] },
        limits: { maxMessageBytes: MAX_MESSAGE_BYTES, maxRecipients: 5 },
        // This file sends many bad credentials on purpose; the throttle has its own tests (postoffice-abuse).
        authFailures: { maxPerAddress: 1000, maxPerAddressAndFqdn: 1000 },
        clients: { [FQDN]: { key: KEY, senderDomains: ['example.test'] } },
      },
      { readyPort: port },
    );
    probe = new BeanstalkClient({ host: '127.0.0.1', port: beanstalkd.port });
    await probe.connect();
  });

  after(async () => {
    await probe?.close();
    await postoffice?.stop();
    await beanstalkd?.stop();
  });

  async function queuedTotal(): Promise<number> {
    // The tube exists only after its first put.
    const stats = await probe.statsTube(TUBE.outbound).catch(() => ({ 'total-jobs': '0' }));
    return Number(stats['total-jobs']);
  }

  function send(options: { method?: string; path?: string; headers?: Record<string, string | string[]>; body?: string | Buffer; chunked?: boolean }): Promise<Answer> {
    return new Promise((resolve, reject) => {
      const body = options.body ?? '';
      const req = request({ host: '127.0.0.1', port, method: options.method ?? 'POST', path: options.path ?? PATH, headers: options.headers }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let parsed: Record<string, unknown> = {};
          try {
            parsed = JSON.parse(text) as Record<string, unknown>;
          } catch {
            parsed = { raw: text };
          }
          resolve({ status: res.statusCode ?? 0, body: parsed });
        });
      });
      req.on('error', reject);
      if (options.chunked) {
        // No content-length: the limit has to hold while the body streams in.
        const buffer = Buffer.from(body);
        for (let i = 0; i < buffer.length; i += 65_536) req.write(buffer.subarray(i, i + 65_536));
        req.end();
      } else {
        req.end(body);
      }
    });
  }

  function signed(body: string | Buffer, options: { key?: string; fqdn?: string; now?: number; idempotencyKey?: string; extraHeaders?: Record<string, string> } = {}): Promise<Answer> {
    const headers = signRequest(options.key ?? KEY, { method: 'POST', path: PATH, fqdn: options.fqdn ?? FQDN, body, now: options.now, idempotencyKey: options.idempotencyKey });
    return send({ headers: { 'content-type': 'application/json', ...headers, ...options.extraHeaders }, body });
  }

  async function expectRejected(answer: Promise<Answer>, status: number, error: string, field?: string): Promise<void> {
    const before = await queuedTotal();
    const { status: got, body } = await answer;
    assert.equal(got, status, JSON.stringify(body));
    assert.equal(body.error, error, JSON.stringify(body));
    if (field !== undefined) assert.equal(body.field, field);
    assert.equal(typeof body.message, 'string');
    assert.ok(!('stack' in body), 'no stack trace in answers');
    assert.equal(await queuedTotal(), before, 'nothing may be queued');
  }

  describe('malformed and mistyped bodies: 400', () => {
    it('rejects JSON that does not parse: truncated, trailing garbage, a lone BOM, invalid UTF-8', async () => {
      await expectRejected(signed('{"mailfrom": "a@example.test", "rcpttos": ['), 400, 'invalid_json');
      await expectRejected(signed(`${submission()}}`), 400, 'invalid_json');
      await expectRejected(signed('\ufeff'), 400, 'invalid_json');
      await expectRejected(signed(Buffer.from([0x7b, 0xff, 0xfe, 0x7d])), 400, 'invalid_json');
      await expectRejected(signed(''), 400, 'invalid_json');
    });

    it('rejects wrong types and names the field', async () => {
      await expectRejected(signed(submission({ mailfrom: 42 })), 400, 'invalid_request', 'mailfrom');
      await expectRejected(signed(submission({ mailfrom: null })), 400, 'invalid_request', 'mailfrom');
      await expectRejected(signed(submission({ rcpttos: 'b@dest.test' })), 400, 'invalid_request', 'rcpttos');
      await expectRejected(signed(submission({ rcpttos: [['b@dest.test']] })), 400, 'invalid_request', 'rcpttos.0');
      await expectRejected(signed(submission({ rcpttos: [{ address: 'b@dest.test' }] })), 400, 'invalid_request', 'rcpttos.0');
      await expectRejected(signed(submission({ data: 12345 })), 400, 'invalid_request', 'data');
      await expectRejected(signed(submission({ data: undefined, data_base64: ['aGk='] })), 400, 'invalid_request', 'data_base64');
      await expectRejected(signed('null'), 400, 'invalid_request');
      await expectRejected(signed('"a string"'), 400, 'invalid_request');
      await expectRejected(signed('{"__proto__": {"mailfrom": "a@example.test"}}'), 400, 'invalid_request');
    });

    it('rejects invalid UTF-8 inside the data string, naming data (data_base64 is for 8-bit content)', async () => {
      const [head, tail] = submission({ data: 'Subject: x\r\n\r\nXX\r\n' }).split('XX') as [string, string];
      await expectRejected(signed(Buffer.concat([Buffer.from(head), Buffer.from([0xff, 0xfe]), Buffer.from(tail)])), 400, 'invalid_utf8', 'data');
    });

    it('rejects address-literal recipients, naming the recipient', async () => {
      await expectRejected(signed(submission({ rcpttos: ['user@[127.0.0.1]'] })), 400, 'invalid_request', 'rcpttos.0');
      await expectRejected(signed(submission({ rcpttos: ['b@dest.test', 'user@[IPv6:::1]'] })), 400, 'invalid_request', 'rcpttos.1');
    });

    it('rejects invalid and CRLF-injected addresses', async () => {
      await expectRejected(signed(submission({ rcpttos: ['b@dest.test>\r\nRCPT TO:<victim@elsewhere.test'] })), 400, 'invalid_request', 'rcpttos.0');
      await expectRejected(signed(submission({ rcpttos: ['b@dest.test', 'c@dest.test\nDATA'] })), 400, 'invalid_request', 'rcpttos.1');
      await expectRejected(signed(submission({ mailfrom: 'a@example.test\r\n' })), 400, 'invalid_request', 'mailfrom');
      await expectRejected(signed(submission({ mailfrom: 'a@example.test\u0000' })), 400, 'invalid_request', 'mailfrom');
      await expectRejected(signed(submission({ rcpttos: ['<b@dest.test>'] })), 400, 'invalid_request', 'rcpttos.0');
      await expectRejected(signed(submission({ rcpttos: ['b @dest.test'] })), 400, 'invalid_request', 'rcpttos.0');
      await expectRejected(signed(submission({ rcpttos: ['@relay.test:b@dest.test'] })), 400, 'invalid_request', 'rcpttos.0');
      await expectRejected(signed(submission({ rcpttos: [`${'x'.repeat(65)}@dest.test`] })), 400, 'invalid_request', 'rcpttos.0');
      await expectRejected(signed(submission({ rcpttos: ['b@dest.test.'] })), 400, 'invalid_request', 'rcpttos.0');
    });
  });

  describe('size limits', () => {
    it('answers 413 to a message over limits.maxMessageBytes', async () => {
      await expectRejected(signed(submission({ data: 'x'.repeat(MAX_MESSAGE_BYTES + 1) })), 413, 'message_too_large');
    });

    it('answers 413 to a body far over the limit, with or without a content-length', async () => {
      const huge = submission({ data: 'x'.repeat(2_000_000) });
      await expectRejected(signed(huge), 413, 'message_too_large');
      const headers = signRequest(KEY, { method: 'POST', path: PATH, fqdn: FQDN, body: huge });
      await expectRejected(send({ headers: { 'content-type': 'application/json', 'transfer-encoding': 'chunked', ...headers }, body: huge, chunked: true }), 413, 'message_too_large');
    });

    it('answers 431 to request headers over 16 KB and keeps serving', async () => {
      const before = await queuedTotal();
      const answer = await signed(submission(), { extraHeaders: { 'x-padding': 'p'.repeat(20_000) } });
      assert.equal(answer.status, 431);
      assert.equal(await queuedTotal(), before);
    });

    it('answers 400 to a request that is not HTTP at all, and keeps serving', async () => {
      const reply = await new Promise<string>((resolve, reject) => {
        let text = '';
        const socket = connect({ host: '127.0.0.1', port }, () => socket.write('\x16\x03\x01 not http at all\r\n\r\n'));
        socket.setEncoding('latin1');
        socket.on('data', (chunk: string) => (text += chunk));
        socket.on('close', () => resolve(text));
        socket.on('error', reject);
      });
      assert.match(reply, /^HTTP\/1\.1 400 /);
    });
  });

  describe('authentication: 401, checked before the body is looked at', () => {
    it('rejects an unknown fqdn, a wrong key and a tampered body', async () => {
      // One answer for an unknown host and a wrong key: enrolment is not an unauthenticated client's business.
      await expectRejected(signed(submission(), { fqdn: 'stranger.badinput.test' }), 401, 'bad_signature');
      await expectRejected(signed(submission(), { key: OTHER_KEY }), 401, 'bad_signature');
      const headers = signRequest(KEY, { method: 'POST', path: PATH, fqdn: FQDN, body: submission() });
      await expectRejected(send({ headers: { 'content-type': 'application/json', ...headers }, body: submission({ rcpttos: ['victim@dest.test'] }) }), 401, 'bad_signature');
      await expectRejected(signed('{not json', { key: OTHER_KEY }), 401, 'bad_signature');
    });

    it('rejects missing, repeated and malformed signature headers', async () => {
      await expectRejected(send({ headers: { 'content-type': 'application/json' }, body: submission() }), 401, 'missing_signature');
      const headers = signRequest(KEY, { method: 'POST', path: PATH, fqdn: FQDN, body: submission() });
      // Node joins a repeated x- header into "a, b", which is not a signature.
      await expectRejected(send({ headers: { 'content-type': 'application/json', ...headers, 'x-hedwig-signature': [headers['x-hedwig-signature']!, headers['x-hedwig-signature']!] }, body: submission() }), 401, 'bad_signature');
      await expectRejected(send({ headers: { 'content-type': 'application/json', ...headers, 'x-hedwig-signature': 'zz'.repeat(32) }, body: submission() }), 401, 'bad_signature');
      await expectRejected(send({ headers: { 'content-type': 'application/json', ...headers, 'x-hedwig-timestamp': '1e9' }, body: submission() }), 401, 'bad_timestamp');
    });

    it('rejects a stale or future timestamp (±300 s)', async () => {
      await expectRejected(signed(submission(), { now: Date.now() - 600_000 }), 401, 'stale_timestamp');
      await expectRejected(signed(submission(), { now: Date.now() + 600_000 }), 401, 'stale_timestamp');
    });

    it('queues a signed request once and rejects its replay', async () => {
      const body = submission({ rcpttos: ['replay@dest.test'] });
      const headers = { 'content-type': 'application/json', ...signRequest(KEY, { method: 'POST', path: PATH, fqdn: FQDN, body }) };
      const before = await queuedTotal();
      assert.equal((await send({ headers, body })).status, 202);
      assert.equal(await queuedTotal(), before + 1);
      await expectRejected(send({ headers, body }), 401, 'replayed');
    });

    it('rejects the legacy form route with a wrong key, and with no fields', async () => {
      const form = (fields: Record<string, string>) => new URLSearchParams(fields).toString();
      const headers = { 'content-type': 'application/x-www-form-urlencoded' };
      await expectRejected(send({ path: '/', headers, body: form({ fqdn: FQDN, key: OTHER_KEY, email: submission() }) }), 401, 'bad_credentials');
      await expectRejected(send({ path: '/', headers, body: form({}) }), 401, 'bad_credentials');
      await expectRejected(send({ path: '/', headers, body: form({ fqdn: FQDN, key: KEY, email: '{"mailfrom":' }) }), 400, 'invalid_json', 'email');
    });
  });

  describe('policy', () => {
    it('answers 403 to a sender domain the host may not use, subdomains included', async () => {
      await expectRejected(signed(submission({ mailfrom: 'ceo@bank.test' })), 403, 'sender_domain_not_allowed', 'mailfrom');
      await expectRejected(signed(submission({ mailfrom: 'a@mail.example.test' })), 403, 'sender_domain_not_allowed', 'mailfrom');
      await expectRejected(signed(submission({ mailfrom: 'a@example.test.evil.test' })), 403, 'sender_domain_not_allowed', 'mailfrom');
    });

    it('answers 415 to other content types and 404 to other routes', async () => {
      const headers = signRequest(KEY, { method: 'POST', path: PATH, fqdn: FQDN, body: submission() });
      await expectRejected(send({ headers: { ...headers, 'content-type': 'text/plain' }, body: submission() }), 415, 'unsupported_media_type');
      await expectRejected(send({ method: 'PUT', headers: { 'content-type': 'application/json' }, body: submission() }), 404, 'not_found');
    });
  });

  it('is still up afterwards and queues a good request', async () => {
    const before = await queuedTotal();
    const answer = await signed(submission({ rcpttos: ['still-up@dest.test'] }));
    assert.equal(answer.status, 202, JSON.stringify(answer.body));
    assert.equal(await queuedTotal(), before + 1);
    assert.equal(postoffice.child.exitCode, null);
    assert.equal(postoffice.logs.filter((l) => l.level === 50 || l.level === 60).length, 0, 'no error-level log lines');
  });
});
