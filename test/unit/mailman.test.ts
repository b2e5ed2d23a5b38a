import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { ConfigError } from '../../shared/config.ts';
import { loadMailmanConfig } from '../../mailman/config.ts';
import { createNetworkMatcher, parseCidr } from '../../mailman/networks.ts';
import { classifyResponse } from '../../mailman/postoffice-client.ts';
import { rejectionReply, suppressedList } from '../../mailman/smtp.ts';
import { Spool, decodeSpoolFile, encodeSpoolFile, isSpoolId, newSpoolId } from '../../mailman/spool.ts';

const dirs: string[] = [];
after(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});
function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'hedwig-mailman-unit-'));
  dirs.push(dir);
  return dir;
}

const REQUIRED = { HEDWIG_MAILMAN__POSTOFFICE__URL: 'https://postoffice.example.test', HEDWIG_MAILMAN__POSTOFFICE__FQDN: 'app.example.test', HEDWIG_MAILMAN__POSTOFFICE__KEY: 'secret-key' };

function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
    return err;
  }
  assert.fail('expected a ConfigError');
}

describe('mailman config', () => {
  it('fills every default around the required post office settings', () => {
    const config = loadMailmanConfig(undefined, REQUIRED);
    assert.deepEqual(config.listen, { host: '127.0.0.1', port: 2525 });
    assert.deepEqual(config.allowedNetworks, ['127.0.0.0/8', '::1/128', '172.17.0.0/16']);
    assert.equal(config.maxMessageBytes, 10_485_760);
    assert.equal(config.maxRecipients, 100);
    assert.equal(config.maxClients, 100);
    assert.equal(config.socketTimeoutMs, 60_000);
    assert.deepEqual(config.tls, {});
    assert.deepEqual(config.postoffice, { url: 'https://postoffice.example.test', fqdn: 'app.example.test', key: 'secret-key', timeoutMs: 10_000 });
    assert.deepEqual(config.spool, { dir: './data/spool' });
    assert.deepEqual(config.forwarder, { minBackoffMs: 1_000, maxBackoffMs: 60_000, maxProbeIntervalMs: 1_000, concurrency: 16, maxAttempts: 10, maxAgeSeconds: 432_000 });
    assert.deepEqual(config.ops, { host: '127.0.0.1', port: 9102 });
    assert.ok(config.hostname.length > 0);
  });

  it('reads the key from postoffice.keyFile (a Docker secret) without its trailing newline', () => {
    const keyFile = join(tempDir(), 'key');
    writeFileSync(keyFile, 'from-file\n');
    const { HEDWIG_MAILMAN__POSTOFFICE__KEY: _, ...withoutKey } = REQUIRED;
    const config = loadMailmanConfig(undefined, { ...withoutKey, HEDWIG_MAILMAN__POSTOFFICE__KEY_FILE: keyFile });
    assert.equal(config.postoffice.key, 'from-file');
    assert.ok(!('keyFile' in config.postoffice));
  });

  it('names the missing key, an unreadable key file, a bad CIDR, half a TLS pair and a non-HTTP URL', () => {
    const { HEDWIG_MAILMAN__POSTOFFICE__KEY: _, ...withoutKey } = REQUIRED;
    assert.equal(configError(() => loadMailmanConfig(undefined, withoutKey)).key, 'postoffice.key');
    assert.equal(configError(() => loadMailmanConfig(undefined, { ...withoutKey, HEDWIG_MAILMAN__POSTOFFICE__KEY_FILE: '/nonexistent/key' })).key, 'postoffice.keyFile');
    assert.equal(configError(() => loadMailmanConfig(undefined, { ...REQUIRED, HEDWIG_MAILMAN__ALLOWED_NETWORKS: '[10.0.0.0/33]' })).key, 'allowedNetworks.0');
    assert.equal(configError(() => loadMailmanConfig(undefined, { ...REQUIRED, HEDWIG_MAILMAN__TLS__CERT: '/etc/cert.pem' })).key, 'tls');
    assert.equal(configError(() => loadMailmanConfig(undefined, { ...REQUIRED, HEDWIG_MAILMAN__POSTOFFICE__URL: 'ftp://x' })).key, 'postoffice.url');
    assert.equal(configError(() => loadMailmanConfig(undefined, { ...REQUIRED, HEDWIG_MAILMAN__UNKNOWN: '1' })).key, 'unknown');
  });
});

describe('allowed networks', () => {
  it('parses CIDRs and bare addresses, and refuses anything else', () => {
    assert.deepEqual(parseCidr('172.17.0.0/16'), { address: '172.17.0.0', prefix: 16, family: 'ipv4' });
    assert.deepEqual(parseCidr('::1'), { address: '::1', prefix: 128, family: 'ipv6' });
    for (const bad of ['172.17.0.0/', '10.0.0.0/33', 'fe80::/129', 'localhost/8', '1.2.3.4/8/9', '']) {
      assert.throws(() => parseCidr(bad), { code: 'BAD_CIDR' }, bad);
    }
  });

  it('matches IPv4, IPv6 and IPv4-mapped IPv6 client addresses', () => {
    const allowed = createNetworkMatcher(['127.0.0.0/8', '::1/128', '172.17.0.0/16']);
    assert.equal(allowed('127.0.0.1'), true);
    assert.equal(allowed('::ffff:127.0.0.1'), true);
    assert.equal(allowed('::FFFF:172.17.3.4'), true);
    assert.equal(allowed('::1'), true);
    assert.equal(allowed('172.18.0.1'), false);
    assert.equal(allowed('::ffff:10.0.0.1'), false);
    assert.equal(allowed('2001:db8::1'), false);
    assert.equal(allowed(undefined), false);
    assert.equal(allowed('not an address'), false);
    assert.equal(createNetworkMatcher([])('127.0.0.1'), false);
  });
});

describe('spool', () => {
  const message = (id = newSpoolId()) => ({
    id,
    mailfrom: 'a@example.test',
    rcpttos: ['b@dest.test', 'ü@dest.test'],
    receivedAt: 1_700_000_000_000,
    data: Buffer.from('Subject: x\r\n\r\n\n{"not":"an envelope"}\n\x00\xff binary\r\n', 'latin1'),
  });

  it('makes ids that sort by time and never repeat', () => {
    const early = newSpoolId(1_000);
    const late = newSpoolId(2_000_000_000_000);
    assert.ok(early < late);
    assert.ok(isSpoolId(early));
    assert.equal(new Set(Array.from({ length: 1000 }, () => newSpoolId(5))).size, 1000);
    assert.equal(isSpoolId('../../etc/passwd'), false);
  });

  it('round-trips the envelope and the exact message bytes through the file format', () => {
    const original = message();
    const file = encodeSpoolFile(original);
    assert.equal(file.subarray(0, file.indexOf(0x0a)).toString().startsWith('{"v":1,'), true);
    assert.deepEqual(decodeSpoolFile(file), original);
  });

  it('detects a truncated or garbled file instead of forwarding part of a message', () => {
    const file = encodeSpoolFile(message());
    assert.throws(() => decodeSpoolFile(file.subarray(0, file.length - 1)), { code: 'SPOOL_CORRUPT' });
    assert.throws(() => decodeSpoolFile(Buffer.from('no newline')), { code: 'SPOOL_CORRUPT' });
    assert.throws(() => decodeSpoolFile(Buffer.from('{"v":2}\nx')), { code: 'SPOOL_CORRUPT' });
  });

  it('writes into new/ via tmp/, lists oldest first, reads, removes and moves to failed/', async () => {
    const spool = new Spool(join(tempDir(), 'spool'));
    await spool.init();
    const older = message(newSpoolId(1_000));
    const newer = message(newSpoolId(2_000));
    await spool.write(newer);
    await spool.write(older);
    assert.deepEqual(readdirSync(spool.tmpDir), []);
    assert.deepEqual(await spool.list(), [older.id, newer.id]);
    assert.deepEqual(await spool.read(older.id), older);

    await spool.remove(older.id);
    await spool.moveToFailed(newer.id, { status: 403, error: 'sender_domain_not_allowed', message: 'no' }, new Date('2024-01-01T00:00:00Z'));
    assert.deepEqual(await spool.list(), []);
    assert.deepEqual(readdirSync(spool.failedDir).sort(), [newer.id, `${newer.id}.reason.json`]);
    assert.deepEqual(JSON.parse(readFileSync(join(spool.failedDir, `${newer.id}.reason.json`), 'utf8')), {
      status: 403,
      error: 'sender_domain_not_allowed',
      message: 'no',
      time: '2024-01-01T00:00:00.000Z',
    });
    assert.deepEqual(readdirSync(spool.tmpDir), []);
  });

  it('refuses ids that are not spool ids, so none can name a path outside the spool', async () => {
    const spool = new Spool(join(tempDir(), 'spool'));
    await spool.init();
    await assert.rejects(spool.read('../secret'), { code: 'SPOOL_BAD_ID' });
    await assert.rejects(spool.write({ ...message(), id: '../x' }), { code: 'SPOOL_BAD_ID' });
  });

  it('clears tmp/ leftovers and reports them', async () => {
    const spool = new Spool(join(tempDir(), 'spool'));
    await spool.init();
    writeFileSync(join(spool.tmpDir, 'leftover'), 'x');
    assert.deepEqual(await spool.removeStaleTmp(), ['leftover']);
    assert.equal(existsSync(join(spool.tmpDir, 'leftover')), false);
  });
});

describe('post office answers', () => {
  const classify = (status: number, body: unknown) => classifyResponse({ status, body: typeof body === 'string' ? body : JSON.stringify(body) });

  it('treats 2xx as accepted, even with a body it cannot read', () => {
    assert.deepEqual(classify(202, { id: 'job-1' }), { kind: 'accepted', id: 'job-1' });
    assert.deepEqual(classify(202, 'not json'), { kind: 'accepted', id: '(unknown)' });
  });

  it('treats 400, 401, 403, 413 and 422 as permanent rejections', () => {
    assert.deepEqual(classify(400, { error: 'invalid_request', message: 'bad', field: 'rcpttos.0' }), { kind: 'rejected', status: 400, error: 'invalid_request', message: 'bad (field rcpttos.0)' });
    assert.deepEqual(classify(401, { error: 'unauthorized', message: 'stale' }), { kind: 'rejected', status: 401, error: 'unauthorized', message: 'stale' });
    assert.equal(classify(403, { error: 'sender_domain_not_allowed' }).kind, 'rejected');
    assert.deepEqual(classify(413, ''), { kind: 'rejected', status: 413, error: 'http_413', message: '' });
    assert.equal(classify(422, { error: 'idempotency_key_reused' }).kind, 'rejected');
  });

  it('treats 503, other 5xx, 429 and unexpected statuses as temporary: a 500 is about the message, the rest say the post office is unavailable', () => {
    const cause = (status: number) => {
      const result = classify(status, { error: 'x' });
      return result.kind === 'temporary' ? result.cause : result.kind;
    };
    for (const status of [503, 502, 504, 429, 404, 301]) assert.equal(cause(status), 'unavailable', String(status));
    for (const status of [500, 501, 507]) assert.equal(cause(status), 'error', String(status));
  });

  it('maps rejections to SMTP replies with enhanced status codes', () => {
    const reply = (status: number) => {
      const err = rejectionReply({ status, error: 'some_error', message: 'why\r\n250 injected' });
      return `${err.responseCode} ${err.message}`;
    };
    assert.equal(reply(401), '554 5.7.1 Rejected by post office (some_error: why 250 injected)');
    assert.match(reply(403), /^554 5\.7\.1 /);
    assert.match(reply(413), /^552 5\.3\.4 Message size exceeds fixed maximum message size/);
    assert.match(reply(400), /^554 5\.6\.0 /);
  });

  it('reads the suppressed recipients of a 202 and of 422 recipients_suppressed, which becomes 550 5.1.1; another 422 stays 554 5.6.0', () => {
    assert.deepEqual(classify(202, { id: 'job-1', suppressed: ['a@x.test', 7, 'b@y.test'] }), { kind: 'accepted', id: 'job-1', suppressed: ['a@x.test', 'b@y.test'] });
    assert.deepEqual(classify(202, { id: 'job-1', suppressed: [] }), { kind: 'accepted', id: 'job-1' });
    const all = classify(422, { error: 'recipients_suppressed', message: 'every recipient is on the suppression list', field: 'rcpttos', suppressed: ['a@x.test'] });
    assert.equal(all.kind, 'rejected');
    const err = rejectionReply(all as Extract<typeof all, { kind: 'rejected' }>);
    assert.equal(`${err.responseCode} ${err.message}`, '550 5.1.1 Every recipient is on the suppression list: a@x.test');
    const reused = rejectionReply({ status: 422, error: 'idempotency_key_reused', message: 'x' });
    assert.match(`${reused.responseCode} ${reused.message}`, /^554 5\.6\.0 /);
  });

  it('names at most three suppressed recipients and 160 characters of them, then a count, without control characters', () => {
    assert.equal(suppressedList(['a@x.test']), 'a@x.test');
    assert.equal(suppressedList(['a@x.test', 'b@x.test', 'c@x.test']), 'a@x.test, b@x.test, c@x.test');
    assert.equal(suppressedList(['a@x.test', 'b@x.test', 'c@x.test', 'd@x.test', 'e@x.test']), 'a@x.test, b@x.test, c@x.test and 2 more');
    const long = (c: string) => `${c.repeat(70)}@x.test`;
    assert.equal(suppressedList([long('a'), long('b'), long('c')]), `${long('a')}, ${long('b')} and 1 more`);
    assert.equal(suppressedList(['a@x.test\r\n250 injected']), 'a@x.test 250 injected');
    const line = `250 2.0.0 Ok: queued as 0mx5sa9hz-a82897066616; suppressed: ${suppressedList(Array.from({ length: 100 }, () => `${'z'.repeat(64)}@${'d'.repeat(180)}.test`))}`;
    assert.ok(line.length < 510, `one reply line (${line.length})`);
  });
});
