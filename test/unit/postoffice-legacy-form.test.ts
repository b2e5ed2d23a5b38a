import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { readLegacyForm } from '../../postoffice/legacy-form.ts';
import { ok, rejection } from '../../postoffice/rejection.ts';
import { UploadBudget } from '../../postoffice/upload.ts';

const limits = { bodyTimeoutMs: 5000, maxPendingBodies: 10, maxPendingBodiesPerAddress: 10, maxPendingBodyBytes: 100_000_000 };

/** A body that hands out its chunks one by one and counts what was taken. */
function chunked(body: Buffer, sizes: number[]): Readable & { taken: () => number } {
  const chunks: Buffer[] = [];
  for (let at = 0, i = 0; at < body.length; i++) {
    const size = Math.max(1, sizes[i % sizes.length] ?? body.length);
    chunks.push(body.subarray(at, at + size));
    at += size;
  }
  let taken = 0;
  const stream = new Readable({
    read() {
      const next = chunks.shift();
      if (next) taken += next.length;
      this.push(next ?? null);
    },
  });
  return Object.assign(stream, { taken: () => taken });
}

function read(body: string | Buffer, options: { sizes?: number[]; key?: string; maxPendingBodyBytes?: number } = {}) {
  const calls: Array<[string | undefined, string | undefined]> = [];
  const payload = chunked(Buffer.isBuffer(body) ? body : Buffer.from(body, 'latin1'), options.sizes ?? [1_000_000]);
  const slot = new UploadBudget({ ...limits, ...(options.maxPendingBodyBytes ? { maxPendingBodyBytes: options.maxPendingBodyBytes } : {}) }).admit('192.0.2.1')!;
  const result = readLegacyForm(payload, {
    slot,
    limit: 50_000_000,
    deadlineMs: Date.now() + 5000,
    timeoutMs: 5000,
    authenticate: (fqdn, key) => {
      calls.push([fqdn, key]);
      return fqdn === 'app1.test' && key === (options.key ?? 'k3y') ? ok('client') : rejection(401, 'bad_credentials', 'no');
    },
  });
  return { result, calls, payload };
}

describe('the form route body, read as it streams (postoffice/legacy-form.ts, issue 12.6)', () => {
  it('decodes fields exactly as URLSearchParams does, however the body is split into chunks', async () => {
    const value = fc.string({ unit: 'binary', maxLength: 40 });
    await fc.assert(
      fc.asyncProperty(value, fc.array(fc.integer({ min: 1, max: 7 }), { minLength: 1, maxLength: 5 }), fc.boolean(), async (email, sizes, raw) => {
        // Either encoded by URLSearchParams, or written raw (stray '%', '+', bad escapes).
        const body = raw ? `fqdn=app1.test&key=k3y&email=${email.replace(/&/g, '')}` : new URLSearchParams({ fqdn: 'app1.test', key: 'k3y', email }).toString();
        const expected = new URLSearchParams(body).get('email')!;
        const { result } = read(Buffer.from(body, 'utf8'), { sizes });
        const got = await result;
        assert.ok(got.ok, JSON.stringify(got));
        assert.equal(got.value.email!.toString('utf8'), expected);
      }),
      { numRuns: 300 },
    );
  });

  it('checks the key as soon as it is in and stops reading a form with a wrong one', async () => {
    const body = `fqdn=app1.test&key=wrong&email=${'x'.repeat(5_000_000)}`;
    const { result, calls, payload } = read(body, { sizes: [4096] });
    const got = await result;
    assert.ok(!got.ok && got.rejection.status === 401);
    assert.deepEqual(calls, [['app1.test', 'wrong']]);
    assert.ok(payload.taken() < 100_000, `read ${payload.taken()} of ${body.length} bytes`);
  });

  it('reads a form whose email comes first, then authenticates at the end', async () => {
    const { result, calls } = read('email=%7B%22a%22%3A1%7D&key=k3y&fqdn=app1.test', { sizes: [3] });
    const got = await result;
    assert.ok(got.ok && got.value.email!.toString() === '{"a":1}' && got.value.client === 'client');
    assert.deepEqual(calls, [['app1.test', 'k3y']]);
  });

  it('authenticates with nothing when a credential is missing, repeated or far too long', async () => {
    for (const body of ['', 'email=x', 'fqdn=app1.test&email=x', 'fqdn=app1.test&fqdn=app1.test&key=k3y', `fqdn=app1.test&key=${'k'.repeat(5000)}`]) {
      const { result, calls } = read(body);
      const got = await result;
      assert.ok(!got.ok && got.rejection.status === 401, body.slice(0, 40));
      assert.equal(calls.length, 1);
      assert.ok(calls[0]![0] === undefined || calls[0]![1] === undefined, body.slice(0, 40));
    }
  });

  it('refuses a second email field, and an email that does not fit the budget (503)', async () => {
    const twice = await read('fqdn=app1.test&key=k3y&email=a&email=b').result;
    assert.ok(!twice.ok && twice.rejection.field === 'email');
    const big = await read(`email=${'x'.repeat(300_000)}&fqdn=app1.test&key=k3y`, { maxPendingBodyBytes: 200_000 }).result;
    assert.ok(!big.ok && big.rejection.status === 503 && big.rejection.code === 'busy');
  });
});
