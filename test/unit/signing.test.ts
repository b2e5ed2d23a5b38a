import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { describe, it } from 'node:test';
import { canonicalString, HEADER, sha256Hex, signRequest, verifySignature } from '../../shared/signing.ts';

const key = 'a'.repeat(64);
const body = Buffer.from('{"mailfrom":"a@example.test","rcpttos":["b@dest.test"],"data":"hi"}');
const now = 1_800_000_000_000;

function signed(overrides: { body?: Buffer; path?: string; method?: string } = {}) {
  const headers = signRequest(key, { method: 'POST', path: '/v1/messages', fqdn: 'app.example.test', body, idempotencyKey: 'k1', now });
  return {
    method: overrides.method ?? 'POST',
    path: overrides.path ?? '/v1/messages',
    fqdn: headers[HEADER.fqdn]!,
    timestamp: headers[HEADER.timestamp],
    signature: headers[HEADER.signature],
    idempotencyKey: headers[HEADER.idempotencyKey],
    body: overrides.body ?? body,
  };
}

describe('request signing', () => {
  it('uses the documented canonical string: method, path, timestamp, fqdn, idempotency key, body digest', () => {
    const parts = { method: 'post', path: '/v1/messages', timestamp: 1800000000, fqdn: 'h.example', idempotencyKey: '', body: 'x' };
    assert.equal(canonicalString(parts), `POST\n/v1/messages\n1800000000\nh.example\n\n${sha256Hex('x')}`);
    const headers = signRequest('k'.repeat(32), { ...parts, now: 1_800_000_000_000 });
    const expected = createHmac('sha256', 'k'.repeat(32)).update(canonicalString(parts)).digest('hex');
    assert.equal(headers[HEADER.signature], expected);
    assert.equal(headers[HEADER.idempotencyKey], undefined);
  });

  it('verifies its own signature', () => {
    assert.deepEqual(verifySignature(key, signed(), { now }), { ok: true, timestamp: now / 1000 });
  });

  it('rejects a tampered body, path or method', () => {
    const tampered = Buffer.from(body.toString().replace('b@dest', 'c@dest'));
    assert.deepEqual(verifySignature(key, { ...signed(), body: tampered }, { now }), { ok: false, code: 'bad_signature' });
    assert.deepEqual(verifySignature(key, { ...signed(), path: '/v1/other' }, { now }), { ok: false, code: 'bad_signature' });
    assert.deepEqual(verifySignature(key, { ...signed(), method: 'PUT' }, { now }), { ok: false, code: 'bad_signature' });
  });

  it('rejects a changed idempotency key or fqdn', () => {
    assert.equal(verifySignature(key, { ...signed(), idempotencyKey: 'k2' }, { now }).ok, false);
    assert.equal(verifySignature(key, { ...signed(), fqdn: 'other.example.test' }, { now }).ok, false);
  });

  it('rejects a wrong key', () => {
    assert.deepEqual(verifySignature('b'.repeat(64), signed(), { now }), { ok: false, code: 'bad_signature' });
  });

  it('accepts timestamps inside ±300 s and rejects those outside', () => {
    assert.equal(verifySignature(key, signed(), { now: now + 300_000 }).ok, true);
    assert.equal(verifySignature(key, signed(), { now: now - 300_000 }).ok, true);
    assert.deepEqual(verifySignature(key, signed(), { now: now + 301_000 }), { ok: false, code: 'stale_timestamp' });
    assert.deepEqual(verifySignature(key, signed(), { now: now - 301_000 }), { ok: false, code: 'stale_timestamp' });
  });

  it('names missing or malformed headers', () => {
    assert.deepEqual(verifySignature(key, { ...signed(), signature: undefined }, { now }), { ok: false, code: 'missing_signature' });
    assert.deepEqual(verifySignature(key, { ...signed(), timestamp: '12e9' }, { now }), { ok: false, code: 'bad_timestamp' });
    assert.deepEqual(verifySignature(key, { ...signed(), signature: 'zz' }, { now }), { ok: false, code: 'bad_signature' });
  });
});
