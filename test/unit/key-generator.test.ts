import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createPublicKey, createPrivateKey } from 'node:crypto';
import { mkdtempSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import { parse } from 'yaml';

const run = promisify(execFile);
const tsx = ['--import', 'tsx', 'key-generator.ts'];

describe('key-generator.ts', () => {
  it('--fqdn prints a mailman config and a post office client entry sharing one fresh 256-bit key', async () => {
    const { stdout } = await run(process.execPath, [...tsx, '--fqdn', 'app1.example.com', '--postoffice-url', 'https://po.example.com'], { timeout: 20_000 });
    const [mailmanPart, postofficePart] = stdout.split('\n\n');
    const mailman = parse(mailmanPart!);
    const postoffice = parse(postofficePart!);
    assert.equal(mailman.postoffice.fqdn, 'app1.example.com');
    assert.equal(mailman.postoffice.url, 'https://po.example.com');
    assert.match(mailman.postoffice.key, /^[0-9a-f]{64}$/);
    assert.equal(postoffice.clients['app1.example.com'].key, mailman.postoffice.key);
    assert.deepEqual(postoffice.clients['app1.example.com'].senderDomains, ['example.com']);
    const again = await run(process.execPath, [...tsx, '--fqdn', 'app1.example.com', '--json'], { timeout: 20_000 });
    assert.notEqual(JSON.parse(again.stdout).key, mailman.postoffice.key);
  });

  it('--dkim writes a 0600 RSA key and prints DKIM, SPF and DMARC records matching it', async () => {
    const out = mkdtempSync(join(tmpdir(), 'hedwig-dkim-'));
    const { stdout } = await run(process.execPath, [...tsx, '--dkim', 'example.com', '--selector', 's1', '--out', out, '--ip', '192.0.2.10', '--json'], { timeout: 30_000 });
    const result = JSON.parse(stdout);
    assert.equal(statSync(result.keyFile).mode & 0o777, 0o600);
    const privateKey = createPrivateKey(readFileSync(result.keyFile));
    assert.equal(privateKey.asymmetricKeyType, 'rsa');
    assert.equal(privateKey.asymmetricKeyDetails?.modulusLength, 2048);
    const txt = (result.records.dkim as string).match(/"([^"]*)"/g)!.map((s) => s.slice(1, -1)).join('');
    const published = createPublicKey({ key: Buffer.from(txt.replace(/^v=DKIM1; k=rsa; p=/, ''), 'base64'), format: 'der', type: 'spki' });
    assert.equal(published.export({ format: 'pem', type: 'spki' }), createPublicKey(privateKey).export({ format: 'pem', type: 'spki' }));
    assert.match(result.records.dkim, /^s1\._domainkey\.example\.com\. IN TXT /);
    assert.equal(result.records.spf, 'example.com. IN TXT "v=spf1 ip4:192.0.2.10 ~all"');
    assert.match(result.records.dmarc, /^_dmarc\.example\.com\. IN TXT "v=DMARC1; p=none;/);
  });

  it('--dkim --algorithm ed25519 writes an Ed25519 key and prints its RFC 8463 record (the bare 32-byte key)', async () => {
    const out = mkdtempSync(join(tmpdir(), 'hedwig-dkim-'));
    const { stdout } = await run(process.execPath, [...tsx, '--dkim', 'example.com', '--selector', 'ed1', '--algorithm', 'ed25519', '--out', out, '--json'], { timeout: 30_000 });
    const result = JSON.parse(stdout);
    assert.equal(result.algorithm, 'ed25519');
    assert.equal(statSync(result.keyFile).mode & 0o777, 0o600);
    const privateKey = createPrivateKey(readFileSync(result.keyFile));
    assert.equal(privateKey.asymmetricKeyType, 'ed25519');
    const txt = (result.records.dkim as string).match(/"([^"]*)"/g)!.map((s) => s.slice(1, -1)).join('');
    const match = /^v=DKIM1; k=ed25519; p=([A-Za-z0-9+/=]+)$/.exec(txt);
    assert.ok(match, txt);
    const raw = Buffer.from(match[1]!, 'base64');
    assert.equal(raw.length, 32);
    assert.deepEqual(raw, createPublicKey(privateKey).export({ format: 'der', type: 'spki' }).subarray(-32));
    assert.match(result.worker, /- selector: ed1/);
    await assert.rejects(
      run(process.execPath, [...tsx, '--dkim', 'example.com', '--selector', 'x', '--algorithm', 'dsa', '--out', out], { timeout: 20_000 }),
      (err: { code: number; stderr: string }) => err.code === 64 && /--algorithm/.test(err.stderr),
    );
  });

  it('exits 64 with usage on bad arguments', async () => {
    await assert.rejects(run(process.execPath, [...tsx, '--fqdn', 'not a host'], { timeout: 20_000 }), (err: { code: number; stderr: string }) => err.code === 64 && /--fqdn/.test(err.stderr));
    await assert.rejects(run(process.execPath, [...tsx], { timeout: 20_000 }), (err: { code: number; stderr: string }) => err.code === 64 && /usage/.test(err.stderr));
  });
});
