import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError } from '../../shared/config.ts';
import { loadWorkerConfig } from '../../worker/config.ts';
import { keyFor, loadDkimPrivateKey, signMessage } from '../../worker/dkim.ts';
import { prepareMessage, type OutgoingSettings } from '../../worker/outgoing.ts';
import { makeDkimKey, verifyWithMailauth } from '../helpers/worker-dkim.ts';

/** DKIM keys are checked once at start-up; signing never silently sends a message unsigned. */
describe('DKIM keys and signing', () => {
  const dir = mkdtempSync(join(tmpdir(), 'hedwig-dkim-unit-'));
  const good = makeDkimKey('example.com', 's1', 2048, dir);

  function writeKey(name: string, content: string | Buffer): string {
    const file = join(dir, name);
    writeFileSync(file, content, { mode: 0o600 });
    return file;
  }

  it('accepts an RSA key and refuses missing, broken, non-RSA and too short keys with a reason', () => {
    assert.equal(loadDkimPrivateKey(good.keyFile).ok, true);
    const ed = generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' });
    const short = generateKeyPairSync('rsa', { modulusLength: 768 }).privateKey.export({ type: 'pkcs8', format: 'pem' });
    const cases: Array<[string, RegExp]> = [
      [join(dir, 'absent.key'), /cannot read .*ENOENT/],
      [writeKey('garbage.key', '-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n'), /is not a private key/],
      [writeKey('ed25519.key', ed), /is a ed25519 key; DKIM signing here needs an RSA key/],
      [writeKey('short.key', short), /is a 768-bit RSA key; at least 1024/],
    ];
    for (const [file, reason] of cases) {
      const result = loadDkimPrivateKey(file);
      assert.equal(result.ok, false, file);
      if (!result.ok) assert.match(result.message, reason);
    }
  });

  it('stops start-up (a config error naming the key) when a configured key is unusable', () => {
    const ed = writeKey('ed.key', generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }));
    const config = join(dir, 'worker.yaml');
    writeFileSync(config, `dkim:\n  Example.COM:\n    selector: s1\n    keyFile: ${good.keyFile}\n  example.org:\n    selector: s1\n    keyFile: ${ed}\n`);
    assert.throws(
      () => loadWorkerConfig(config, {}),
      (err: unknown) => err instanceof ConfigError && err.key === 'dkim.example.org.keyFile' && /RSA/.test(err.message),
    );
    writeFileSync(config, `dkim:\n  Example.COM:\n    selector: s1\n    keyFile: ${good.keyFile}\n`);
    const loaded = loadWorkerConfig(config, {});
    assert.equal(loaded.dkim.get('example.com')?.selector, 's1');
    assert.equal(loaded.dkim.get('example.com')?.privateKey.asymmetricKeyType, 'rsa');
  });

  it('finds the key of the sender domain or of its closest configured parent', () => {
    const keys = new Map([['example.com', { domain: 'example.com', selector: 's1', privateKey: loadKey(good.keyFile) }]]);
    assert.equal(keyFor(keys, 'example.com')?.domain, 'example.com');
    assert.equal(keyFor(keys, 'News.Example.com')?.domain, 'example.com');
    assert.equal(keyFor(keys, 'example.org'), undefined);
    assert.equal(keyFor(keys, 'notexample.com'), undefined);
  });

  it('signs relaxed/relaxed rsa-sha256 over the listed fields, List-Unsubscribe-Post included', async () => {
    const key = { domain: 'example.com', selector: 's1', privateKey: loadKey(good.keyFile) };
    const raw = Buffer.from(
      'From: a@example.com\r\nTo: b@example.org\r\nSubject: hi\r\nDate: Thu, 1 Jan 2025 00:00:00 +0000\r\nMessage-ID: <m@example.com>\r\n' +
        'List-Unsubscribe: <https://example.com/u/1>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\nX-Mailer: unsigned\r\nReceived: from x by y; date\r\n\r\nhello\r\n',
    );
    const signed = await signMessage(raw, key);
    assert.ok(signed.ok);
    const header = signed.raw.toString('latin1').split('\r\n\r\n')[0]!;
    assert.match(header, /^DKIM-Signature: v=1; a=rsa-sha256; c=relaxed\/relaxed; d=example.com;/);
    const verdict = await verifyWithMailauth(signed.raw, good.records);
    assert.equal(verdict.pass, true, verdict.detail);
    assert.deepEqual(verdict.signedFields, ['from', 'subject', 'date', 'message-id', 'to', 'list-unsubscribe', 'list-unsubscribe-post']);
  });

  it('signs the envelope sender domain, never the From: header domain; null-sender mail only with the notices domain', async () => {
    const settings: OutgoingSettings = {
      hostname: 'out.example.com',
      dkim: new Map([['example.com', { domain: 'example.com', selector: 's1', privateKey: loadKey(good.keyFile) }]]),
      nullSenderDomain: 'example.com',
      received: false,
    };
    const raw = Buffer.from('From: ceo@example.com\r\nSubject: x\r\n\r\nx\r\n');
    const base = { messageId: 'id1', raw, receivedAt: 0, now: 0 };
    const forged = await prepareMessage({ ...base, from: 'someone@other.test' }, settings);
    assert.ok(forged.ok && forged.signedBy === undefined && !forged.raw.toString().includes('DKIM-Signature'));
    const own = await prepareMessage({ ...base, from: 'app@mail.example.com' }, settings);
    assert.deepEqual(own.ok && own.signedBy, { domain: 'example.com', selector: 's1' });
    const notice = await prepareMessage({ ...base, from: '' }, settings);
    assert.deepEqual(notice.ok && notice.signedBy, { domain: 'example.com', selector: 's1' });
    const noNoticeDomain = await prepareMessage({ ...base, from: '' }, { ...settings, nullSenderDomain: undefined });
    assert.ok(noNoticeDomain.ok && noNoticeDomain.signedBy === undefined);
  });

  it('reports a failure instead of sending unsigned when nodemailer produces no signature', async () => {
    // A public key cannot sign: nodemailer then quietly leaves the signature out.
    const publicOnly = generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey;
    const result = await signMessage(Buffer.from('Subject: x\r\n\r\nx\r\n'), { domain: 'example.com', selector: 's1', privateKey: publicOnly });
    assert.equal(result.ok, false);
    if (!result.ok) assert.match(result.message, /produced no signature/);
  });
});

function loadKey(file: string) {
  const loaded = loadDkimPrivateKey(file);
  if (!loaded.ok) throw new Error(loaded.message);
  return loaded.key;
}
