/**
 * Property-based checks (fast-check) of the post office's request validation: for
 * every generated body, not just the examples in postoffice-app.test.ts, a submission
 * is either accepted exactly as sent or rejected with a 400/413 naming the field.
 * A failing run prints the seed and the shrunk counterexample.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { buildApp } from '../../postoffice/app.ts';
import { postofficeConfigSchema } from '../../postoffice/config.ts';
import type { JobQueue, QueuedJob } from '../../postoffice/queue.ts';
import { createSubmissionParser } from '../../postoffice/submission.ts';
import { isValidMailbox } from '../../shared/address.ts';
import { signRequest } from '../../shared/signing.ts';

const LIMITS = { maxMessageBytes: 2000, maxRecipients: 5 };
const parse = createSubmissionParser(LIMITS);

// RFC 5321 dot-string local parts and LDH domains with an alphabetic top label, ASCII
// and UTF-8 (RFC 6531), so that every generated mailbox is valid by construction.
const ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~";
// Astral code points included: RFC 6531 allows every UTF-8 sequence, 4-byte ones too.
const UTF8_LETTERS = [...'äöüßéèçñøåłżœæ用户名例子дмитрийπ😀𠀀𝔘'];
const atom = fc.string({ unit: fc.constantFrom(...ATEXT, ...UTF8_LETTERS), minLength: 1, maxLength: 10 });
const localPart = fc
  .array(atom, { minLength: 1, maxLength: 3 })
  .map((atoms) => atoms.join('.'))
  .filter((local) => Buffer.byteLength(local) <= 64);
const label = fc.stringMatching(/^[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?$/);
const topLabel = fc.stringMatching(/^[a-z]{2,6}$/);
const domain = fc.tuple(fc.array(label, { minLength: 1, maxLength: 3 }), topLabel).map(([labels, top]) => [...labels, top].join('.'));
const mailbox = fc.tuple(localPart, domain).map(([local, name]) => `${local}@${name}`);
const reversePath = fc.oneof({ weight: 1, arbitrary: fc.constant('') }, { weight: 5, arbitrary: mailbox });
const recipients = fc.array(mailbox, { minLength: 1, maxLength: LIMITS.maxRecipients });
const CONTROL = fc.integer({ min: 0, max: 0x1f }).map((code) => String.fromCharCode(code)).chain((c) => fc.constantFrom(c, '\x7f'));
/** A lone surrogate has no UTF-8 form: accepting one would change the address on the wire. */
const LONE_SURROGATE = fc.constantFrom('\ud800', '\udbff', '\udc00', '\udfff');

/** `text` with `insert` placed at a generated position. */
function inserted(text: fc.Arbitrary<string>, insert: fc.Arbitrary<string>): fc.Arbitrary<string> {
  return fc.tuple(text, insert, fc.nat()).map(([t, i, at]) => t.slice(0, at % (t.length + 1)) + i + t.slice(at % (t.length + 1)));
}

describe('request validation, property-based', () => {
  it('accepts every well-formed submission and keeps envelope and bytes exactly', () => {
    fc.assert(
      fc.property(reversePath, recipients, fc.oneof(fc.string({ maxLength: 500 }), fc.uint8Array({ maxLength: 1500 })), (mailfrom, rcpttos, content) => {
        const body = typeof content === 'string' ? { mailfrom, rcpttos, data: content } : { mailfrom, rcpttos, data_base64: Buffer.from(content).toString('base64') };
        const result = parse(body);
        assert.ok(result.ok, JSON.stringify(!result.ok && result.rejection));
        assert.equal(result.value.mailfrom, mailfrom);
        assert.deepEqual(result.value.rcpttos, rcpttos);
        assert.deepEqual(result.value.data, typeof content === 'string' ? Buffer.from(content, 'utf8') : Buffer.from(content));
      }),
      { numRuns: 300 },
    );
  });

  it('rejects an address with a control character (CR/LF injection) or a lone surrogate anywhere, and names it', () => {
    const injected = inserted(mailbox, fc.oneof(CONTROL, LONE_SURROGATE, fc.constantFrom('\r\n', '\r\nRCPT TO:<x@evil.test>', '\n.\n')));
    fc.assert(
      // One fewer than the limit, so that adding the bad address never trips the count check.
      fc.property(fc.array(mailbox, { minLength: 1, maxLength: LIMITS.maxRecipients - 1 }), injected, fc.nat(), fc.boolean(), (rcpttos, bad, at, inSender) => {
        const spliced = [...rcpttos.slice(0, at % rcpttos.length), bad, ...rcpttos.slice(at % rcpttos.length)];
        const body = inSender ? { mailfrom: bad, rcpttos, data: 'x' } : { mailfrom: '', rcpttos: spliced, data: 'x' };
        const result = parse(body);
        assert.ok(!result.ok, `accepted ${JSON.stringify(bad)}`);
        assert.equal(result.rejection.status, 400);
        assert.equal(result.rejection.field, inSender ? 'mailfrom' : `rcpttos.${at % rcpttos.length}`);
      }),
      { numRuns: 300 },
    );
  });

  it('answers any JSON value with acceptance of a valid submission or a 400/413, never an exception', () => {
    const field = fc.oneof(fc.jsonValue(), mailbox, fc.array(fc.oneof(mailbox, fc.jsonValue()), { maxLength: 7 }));
    const body = fc.oneof(
      fc.jsonValue(),
      fc.record({ mailfrom: field, rcpttos: field, data: field, data_base64: field }, { requiredKeys: [] }),
      fc.dictionary(fc.string({ maxLength: 12 }), field, { maxKeys: 5 }),
    );
    fc.assert(
      fc.property(body, (value) => {
        const result = parse(JSON.parse(JSON.stringify(value)));
        if (result.ok) {
          assert.ok(result.value.mailfrom === '' || isValidMailbox(result.value.mailfrom));
          assert.ok(result.value.rcpttos.length >= 1 && result.value.rcpttos.length <= LIMITS.maxRecipients);
          assert.ok(result.value.rcpttos.every((address) => isValidMailbox(address)));
          assert.ok(result.value.data.length <= LIMITS.maxMessageBytes);
        } else {
          assert.ok([400, 413].includes(result.rejection.status), JSON.stringify(result.rejection));
          assert.match(result.rejection.code, /^(invalid_request|message_too_large)$/);
        }
      }),
      { numRuns: 500 },
    );
  });

  it('accepts 1 to maxRecipients recipients and rejects 0 or more', () => {
    fc.assert(
      fc.property(fc.array(mailbox, { maxLength: LIMITS.maxRecipients * 2 }), (rcpttos) => {
        const result = parse({ mailfrom: '', rcpttos, data: 'x' });
        const fits = rcpttos.length >= 1 && rcpttos.length <= LIMITS.maxRecipients;
        assert.equal(result.ok, fits);
        if (!result.ok) assert.equal(result.rejection.field, 'rcpttos');
      }),
    );
  });

  it('draws the size limit on the decoded bytes, for data and data_base64 alike', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: LIMITS.maxMessageBytes * 2 }), fc.boolean(), fc.constantFrom('a', 'é', '€'), (length, asBase64, unit) => {
        const text = unit.repeat(Math.ceil(length / Buffer.byteLength(unit)));
        const bytes = Buffer.from(text, 'utf8');
        const result = parse(asBase64 ? { mailfrom: '', rcpttos: ['a@b.test'], data_base64: bytes.toString('base64') } : { mailfrom: '', rcpttos: ['a@b.test'], data: text });
        if (bytes.length <= LIMITS.maxMessageBytes) assert.ok(result.ok);
        else assert.equal(!result.ok && result.rejection.status, 413);
      }),
    );
  });

  it('rejects data_base64 with anything outside the padded standard alphabet instead of skipping it', () => {
    const foreign = fc.constantFrom(' ', '\n', '\r\n', '-', '_', '.', '*', '=', 'é', '\x00');
    fc.assert(
      fc.property(inserted(fc.uint8Array({ minLength: 1, maxLength: 300 }).map((b) => Buffer.from(b).toString('base64')), foreign), (text) => {
        fc.pre(Buffer.from(Buffer.from(text, 'base64').toString('base64')).toString() !== text);
        const result = parse({ mailfrom: '', rcpttos: ['a@b.test'], data_base64: text });
        assert.equal(!result.ok && result.rejection.field, 'data_base64', `accepted ${JSON.stringify(text)}`);
      }),
      { numRuns: 300 },
    );
  });
});

class CountingQueue implements JobQueue {
  puts = 0;
  async put(): Promise<QueuedJob> {
    this.puts++;
    return { jobId: String(this.puts), server: 'test' };
  }
  isReady(): boolean {
    return true;
  }
}

describe('POST /v1/messages, property-based', () => {
  it('queues exactly the requests it answers 202; every other signed body gets a JSON 400, 403 or 413', async () => {
    const key = 'property-test-key-0123456789abcdef0123';
    const config = postofficeConfigSchema.parse({ limits: LIMITS, clients: { 'app.property.test': { key, senderDomains: ['*'] } } });
    const queue = new CountingQueue();
    const app = buildApp(config, { logger: pino({ level: 'silent' }), queue, registry: new Registry() });
    const body = fc.oneof(
      fc.record({ mailfrom: reversePath, rcpttos: recipients, data: fc.string({ maxLength: 300 }) }).map((b) => JSON.stringify(b)),
      fc.jsonValue().map((v) => JSON.stringify(v)),
      fc.string({ maxLength: 200 }),
    );
    await fc.assert(
      fc.asyncProperty(body, async (text) => {
        const before = queue.puts;
        const headers = signRequest(key, { method: 'POST', path: '/v1/messages', fqdn: 'app.property.test', body: text });
        const res = await app.inject({ method: 'POST', url: '/v1/messages', headers: { 'content-type': 'application/json', ...headers }, payload: text });
        assert.ok([202, 400, 403, 413].includes(res.statusCode), `${res.statusCode} ${res.body}`);
        assert.equal(queue.puts - before, res.statusCode === 202 ? 1 : 0);
        const json = res.json() as Record<string, unknown>;
        assert.equal(typeof (res.statusCode === 202 ? json.id : json.error), 'string');
      }),
      { numRuns: 200 },
    );
    await app.close();
  });
});
