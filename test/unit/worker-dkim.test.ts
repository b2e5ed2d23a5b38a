import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError } from '../../shared/config.ts';
import { loadWorkerConfig, readConfiguredFiles } from '../../worker/config.ts';
import { keysFor, loadDkimPrivateKey, signMessage, type DkimKey } from '../../worker/dkim.ts';
import { prepareMessage, type OutgoingSettings } from '../../worker/outgoing.ts';
import { makeDkimKey, makeEd25519DkimKey, verifyWithMailauth } from '../helpers/worker-dkim.ts';

/** DKIM keys are checked once at start-up; signing never silently sends a message unsigned. */
describe('DKIM keys and signing', () => {
  const dir = mkdtempSync(join(tmpdir(), 'hedwig-dkim-unit-'));
  const good = makeDkimKey('example.com', 's1', 2048, dir);
  const ed = makeEd25519DkimKey('example.com', 'ed1', dir);
  const rsaKey = (): DkimKey => ({ domain: 'example.com', selector: 's1', algorithm: 'rsa-sha256', privateKey: loadKey(good.keyFile) });
  const edKey = (): DkimKey => ({ domain: 'example.com', selector: 'ed1', algorithm: 'ed25519-sha256', privateKey: loadKey(ed.keyFile) });

  function writeKey(name: string, content: string | Buffer): string {
    const file = join(dir, name);
    writeFileSync(file, content, { mode: 0o600 });
    return file;
  }

  it('accepts RSA and Ed25519 keys and refuses missing, broken, other and too short keys with a reason', () => {
    const rsa = loadDkimPrivateKey(good.keyFile);
    assert.ok(rsa.ok && rsa.algorithm === 'rsa-sha256');
    const ed25519 = loadDkimPrivateKey(ed.keyFile);
    assert.ok(ed25519.ok && ed25519.algorithm === 'ed25519-sha256');
    const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' });
    const short = generateKeyPairSync('rsa', { modulusLength: 768 }).privateKey.export({ type: 'pkcs8', format: 'pem' });
    const cases: Array<[string, RegExp]> = [
      [join(dir, 'absent.key'), /cannot read .*ENOENT/],
      [writeKey('garbage.key', '-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n'), /is not a private key/],
      [writeKey('ec.key', ec), /is a ec key; DKIM signing here needs an RSA \(rsa-sha256\) or Ed25519/],
      [writeKey('short.key', short), /is a 768-bit RSA key; at least 1024/],
    ];
    for (const [file, reason] of cases) {
      const result = loadDkimPrivateKey(file);
      assert.equal(result.ok, false, file);
      if (!result.ok) assert.match(result.message, reason);
    }
  });

  it('stops start-up (a config error naming the key) when a configured key is unusable', () => {
    const ec = writeKey('ec-config.key', generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }));
    const config = join(dir, 'worker.yaml');
    writeFileSync(config, `dkim:\n  Example.COM:\n    selector: s1\n    keyFile: ${good.keyFile}\n  example.org:\n    selector: s1\n    keyFile: ${ec}\n`);
    assert.throws(
      () => readConfiguredFiles(loadWorkerConfig(config, {}), config),
      (err: unknown) => err instanceof ConfigError && err.key === 'dkim.example.org.keyFile' && /RSA/.test(err.message),
    );
    writeFileSync(config, `dkim:\n  Example.COM:\n    selector: s1\n    keyFile: ${good.keyFile}\n`);
    const loaded = readConfiguredFiles(loadWorkerConfig(config, {}), config);
    assert.equal(loaded.dkim.get('example.com')?.[0]?.selector, 's1');
    assert.equal(loaded.dkim.get('example.com')?.[0]?.privateKey.asymmetricKeyType, 'rsa');
  });

  it('takes an RSA and an Ed25519 key for one domain as a list, and refuses two keys of one algorithm', () => {
    const config = join(dir, 'worker-both.yaml');
    writeFileSync(config, `dkim:\n  example.com:\n    - selector: s1\n      keyFile: ${good.keyFile}\n    - selector: ed1\n      keyFile: ${ed.keyFile}\n`);
    const loaded = readConfiguredFiles(loadWorkerConfig(config, {}), config);
    assert.deepEqual(loaded.dkim.get('example.com')?.map((k) => `${k.selector}:${k.algorithm}`), ['s1:rsa-sha256', 'ed1:ed25519-sha256']);
    writeFileSync(config, `dkim:\n  example.com:\n    - selector: s1\n      keyFile: ${good.keyFile}\n    - selector: s2\n      keyFile: ${good.keyFile}\n`);
    assert.throws(
      () => readConfiguredFiles(loadWorkerConfig(config, {}), config),
      (err: unknown) => err instanceof ConfigError && err.key === 'dkim.example.com.1.keyFile' && /a second rsa-sha256 key/.test(err.message),
    );
  });

  it('finds the key of the sender domain or of its closest configured parent', () => {
    const keys = new Map([['example.com', [rsaKey()]]]);
    assert.equal(keysFor(keys, 'example.com')[0]?.domain, 'example.com');
    assert.equal(keysFor(keys, 'News.Example.com')[0]?.domain, 'example.com');
    assert.deepEqual(keysFor(keys, 'example.org'), []);
    assert.deepEqual(keysFor(keys, 'notexample.com'), []);
  });

  it('signs relaxed/relaxed rsa-sha256 over the listed fields, List-Unsubscribe-Post included', async () => {
    const key = rsaKey();
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

  describe('signing authority (issue 12.3, 12.4): only within what the submitting host may use', () => {
    const settings: OutgoingSettings = {
      hostname: 'out.example.com',
      dkim: new Map([
        ['example.com', [rsaKey()]],
        ['customer.test', [{ ...rsaKey(), domain: 'customer.test' }]],
      ]),
      nullSenderDomain: 'example.com',
      received: false,
    };
    const message = (from: string, header: string, extra: { notice?: boolean; senderDomains?: string[] } = {}) => ({
      messageId: 'id1',
      raw: Buffer.from(`From: ${header}\r\nSubject: x\r\n\r\nx\r\n`),
      receivedAt: 0,
      now: 0,
      from,
      ...extra,
    });
    const signedBy = async (m: ReturnType<typeof message>, with_ = settings) => {
      const prepared = await prepareMessage(m, with_);
      assert.ok(prepared.ok);
      assert.equal(prepared.raw.toString().includes('DKIM-Signature'), prepared.signedBy !== undefined);
      return prepared.signedBy?.map((s) => s.domain).join(',');
    };

    it('signs for the envelope sender, never for the From: header domain', async () => {
      assert.equal(await signedBy(message('someone@other.test', 'ceo@example.com', { senderDomains: ['other.test'] })), undefined);
      assert.equal(await signedBy(message('app@customer.test', 'ceo@example.com', { senderDomains: ['customer.test'] })), 'customer.test');
      // Jobs queued before senderDomains existed: the envelope domain's own key still signs.
      assert.equal(await signedBy(message('app@customer.test', 'app@customer.test')), 'customer.test');
    });

    it("signs with a parent domain's key only when the host may use the parent", async () => {
      assert.equal(await signedBy(message('a@marketing.example.com', 'a@marketing.example.com', { senderDomains: ['marketing.example.com'] })), undefined);
      assert.equal(await signedBy(message('a@marketing.example.com', 'a@marketing.example.com')), undefined, 'an old job: conservative');
      assert.equal(await signedBy(message('a@marketing.example.com', 'a@marketing.example.com', { senderDomains: ['marketing.example.com', 'example.com'] })), 'example.com');
      assert.equal(await signedBy(message('a@marketing.example.com', 'a@marketing.example.com', { senderDomains: ['*'] })), 'example.com');
    });

    it("signs a client's null-sender mail for its From domain only when the host may use it", async () => {
      assert.equal(await signedBy(message('', 'security@example.com', { senderDomains: ['customer.test'] })), undefined);
      assert.equal(await signedBy(message('', 'security@example.com')), undefined, 'an old job: conservative');
      assert.equal(await signedBy(message('', 'Support <support@Customer.Test.>', { senderDomains: ['customer.test'] })), 'customer.test');
      assert.equal(await signedBy(message('', 'a@customer.test, b@example.com', { senderDomains: ['customer.test'] })), undefined, 'two authors: no one domain');
    });

    it("signs the worker's own notices for the notices domain, and only those", async () => {
      assert.equal(await signedBy(message('', 'MAILER-DAEMON@example.com', { notice: true })), 'example.com');
      assert.equal(await signedBy(message('', 'MAILER-DAEMON@example.com', { notice: true }), { ...settings, nullSenderDomain: undefined }), undefined);
    });
  });

  it('reports a failure instead of sending unsigned when nodemailer produces no signature', async () => {
    // A public key cannot sign: nodemailer then quietly leaves the signature out.
    const publicOnly = generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey;
    const result = await signMessage(Buffer.from('Subject: x\r\n\r\nx\r\n'), { domain: 'example.com', selector: 's1', algorithm: 'rsa-sha256', privateKey: publicOnly });
    assert.equal(result.ok, false);
    if (!result.ok) assert.match(result.message, /produced no signature/);
    // Nor with one of two signatures: a public Ed25519 key fails the whole message.
    const edPublic = generateKeyPairSync('ed25519').publicKey;
    const both = await signMessage(Buffer.from('Subject: x\r\n\r\nx\r\n'), [rsaKey(), { ...edKey(), privateKey: edPublic }]);
    assert.equal(both.ok, false);
    if (!both.ok) assert.match(both.message, /ed25519-sha256.*failed/);
  });

  it('signs ed25519-sha256 (RFC 8463) next to rsa-sha256; mailauth verifies both (dkimpy too: integration test)', async () => {
    const records = { ...good.records, ...ed.records };
    const raw = Buffer.from(
      'From: a@example.com\r\nTo: b@example.org\r\nSubject: two  signatures\t \r\nDate: Thu, 1 Jan 2025 00:00:00 +0000\r\nMessage-ID: <m2@example.com>\r\n\r\nhello  \r\n\r\n\r\n',
    );
    const signed = await signMessage(raw, [rsaKey(), edKey()]);
    assert.ok(signed.ok);
    const header = signed.raw.toString('latin1').split('\r\n\r\n')[0]!;
    assert.match(header, /^DKIM-Signature: v=1; a=rsa-sha256; [^]*\r\nDKIM-Signature: v=1; a=ed25519-sha256; c=relaxed\/relaxed; d=example\.com;/);
    const verdict = await verifyWithMailauth(signed.raw, records);
    assert.deepEqual(verdict.signatures, [{ algorithm: 'rsa-sha256', pass: true }, { algorithm: 'ed25519-sha256', pass: true }], verdict.detail);
    // The Ed25519 signature alone (RSA key absent from DNS) still verifies; a changed body fails it.
    const onlyEd = await verifyWithMailauth(signed.raw, ed.records);
    assert.deepEqual(onlyEd.signatures?.map((s) => s.pass), [false, true]);
    const tampered = Buffer.from(signed.raw.toString('latin1').replace('hello', 'jello'), 'latin1');
    assert.deepEqual((await verifyWithMailauth(tampered, records)).signatures?.map((s) => s.pass), [false, false]);
  });
});

function loadKey(file: string) {
  const loaded = loadDkimPrivateKey(file);
  if (!loaded.ok) throw new Error(loaded.message);
  return loaded.key;
}
