import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import { parse } from 'yaml';
import { ConfigError } from '../../shared/config.ts';
import { loadMailmanConfig } from '../../mailman/config.ts';
import { DEFAULT_SCRYPT_PARAMS, hashPassword, parsePasswordHash, verifyPassword } from '../../mailman/password-hash.ts';
import { SmtpAuthenticator, senderAllowed, type SmtpAuthConfig } from '../../mailman/smtp-auth.ts';

const run = promisify(execFile);
const REQUIRED = { HEDWIG_MAILMAN__POSTOFFICE__URL: 'https://postoffice.example.test', HEDWIG_MAILMAN__POSTOFFICE__FQDN: 'app.example.test', HEDWIG_MAILMAN__POSTOFFICE__KEY: 'secret-key' };
/** Cheap parameters where the test is not about cost. */
const FAST = { N: 1024, r: 8, p: 1 };

function parsed(text: string) {
  const result = parsePasswordHash(text);
  assert.ok(result.ok, result.ok ? '' : result.message);
  return result.value;
}

function authConfig(overrides: Partial<SmtpAuthConfig> = {}): ConstructorParameters<typeof SmtpAuthenticator>[0] {
  return {
    users: {
      app: { passwordHash: hashPassword('right horse', FAST), allowedSenders: ['app@example.test', '@alerts.example.test'] },
      cron: { passwordHash: hashPassword('battery staple', FAST) },
    },
    maxFailuresPerAddress: 3,
    windowSeconds: 60,
    ...overrides,
  };
}

async function elapsedMs(fn: () => Promise<unknown>): Promise<number> {
  const start = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - start) / 1e6;
}

describe('SMTP AUTH password hashes (scrypt$N=..,r=..,p=..$salt$hash)', () => {
  it('makes a self-describing hash with the default cost, a fresh 16-byte salt and a 32-byte key', () => {
    const text = hashPassword('correct horse');
    assert.match(text, /^scrypt\$N=32768,r=8,p=1\$[A-Za-z0-9+/]{22}==\$[A-Za-z0-9+/]{43}=$/);
    const value = parsed(text);
    assert.deepEqual(value.params, DEFAULT_SCRYPT_PARAMS);
    assert.equal(value.salt.length, 16);
    assert.equal(value.hash.length, 32);
    assert.notEqual(parsed(hashPassword('correct horse')).salt.toString('hex'), value.salt.toString('hex'), 'a new salt every time');
  });

  it('verifies the right password only, with the parameters the hash names', async () => {
    const value = parsed(hashPassword('correct horse', FAST));
    assert.deepEqual(value.params, FAST);
    assert.equal(await verifyPassword('correct horse', value), true);
    assert.equal(await verifyPassword('correct horsE', value), false);
    assert.equal(await verifyPassword('', value), false);
    // NFC and NFD spellings of one password are the same password.
    const accented = parsed(hashPassword('caf\u00e9', FAST));
    assert.equal(await verifyPassword('cafe\u0301', accented), true);
  });

  it('refuses malformed hashes with a message saying what is wrong', () => {
    const good = hashPassword('x', FAST);
    const [, , salt, hash] = good.split('$');
    const cases: Array<[string, RegExp]> = [
      ['', /expected scrypt\$/],
      [`argon2id$v=19$${salt}$${hash}`, /expected scrypt\$/],
      [`scrypt$N=1000,r=8,p=1$${salt}$${hash}`, /power of two/],
      [`scrypt$N=512,r=8,p=1$${salt}$${hash}`, /at least 1024/],
      [`scrypt$N=1048576,r=8,p=1$${salt}$${hash}`, /MiB per check/],
      [`scrypt$N=1024,r=0,p=1$${salt}$${hash}`, /r must be/],
      [`scrypt$N=1024,r=8$${salt}$${hash}`, /parameters must read/],
      [`scrypt$N=1024,r=8,p=1$c2hvcnQ=$${hash}`, /salt must be 16 to 64 bytes/],
      [`scrypt$N=1024,r=8,p=1$${salt}$not*base64`, /hash is not base64/],
      [`scrypt$N=1024,r=8,p=1$${salt}$${hash}$extra`, /expected scrypt\$/],
    ];
    for (const [text, message] of cases) {
      const result = parsePasswordHash(text);
      assert.equal(result.ok, false, text);
      assert.match(result.ok ? '' : result.message, message, text);
    }
  });
});

describe('SmtpAuthenticator', () => {
  it('authenticates a listed user with the right password and says why anything else failed', async () => {
    const auth = new SmtpAuthenticator(authConfig());
    const ok = await auth.authenticate({ username: 'app', password: 'right horse' }, '127.0.0.1');
    assert.deepEqual(ok, { ok: true, user: { name: 'app', allowedSenders: ['app@example.test', '@alerts.example.test'] } });
    assert.deepEqual(await auth.authenticate({ username: 'cron', password: 'battery staple' }, '127.0.0.1'), { ok: true, user: { name: 'cron', allowedSenders: undefined } });
    assert.deepEqual(await auth.authenticate({ username: 'app', password: 'wrong' }, '127.0.0.1'), { ok: false, reason: 'bad_password', failures: 1 });
    assert.deepEqual(await auth.authenticate({ username: 'nobody', password: 'right horse' }, '127.0.0.1'), { ok: false, reason: 'unknown_user', failures: 2 });
    assert.deepEqual(await auth.authenticate({ username: 'APP', password: 'right horse' }, '127.0.0.2'), { ok: false, reason: 'unknown_user', failures: 1 }, 'names are exact, counts per address');
    // PLAIN's authorization identity: acting as another user is not offered.
    assert.deepEqual(await auth.authenticate({ username: 'cron', password: 'battery staple', authzid: 'app' }, '127.0.0.3'), { ok: false, reason: 'authzid_not_permitted', failures: 1 });
    assert.equal((await auth.authenticate({ username: 'cron', password: 'battery staple', authzid: 'cron' }, '127.0.0.3')).ok, true);
  });

  it('locks an address out after maxFailuresPerAddress failures, right password or not, until the window ends', async () => {
    let now = 1_000_000;
    const auth = new SmtpAuthenticator(authConfig(), { now: () => now });
    for (let i = 1; i <= 3; i++) assert.deepEqual(await auth.authenticate({ username: 'app', password: `guess ${i}` }, '::ffff:127.0.0.9'), { ok: false, reason: 'bad_password', failures: i });
    assert.equal(auth.lockedFor('127.0.0.9'), 60, 'an IPv4-mapped address counts as its IPv4 form');
    assert.deepEqual(await auth.authenticate({ username: 'app', password: 'right horse' }, '127.0.0.9'), { ok: false, reason: 'rate_limited', retryAfterSeconds: 60 });
    assert.equal((await auth.authenticate({ username: 'app', password: 'right horse' }, '127.0.0.10')).ok, true, 'other addresses are not affected');
    now += 45_000;
    assert.equal(auth.lockedFor('127.0.0.9'), 15);
    now += 15_000;
    assert.equal(auth.lockedFor('127.0.0.9'), undefined);
    assert.equal((await auth.authenticate({ username: 'app', password: 'right horse' }, '127.0.0.9')).ok, true);
  });

  it('spends as long on an unknown user as on a wrong password (one scrypt at the same cost)', async () => {
    const auth = new SmtpAuthenticator({ users: { app: { passwordHash: hashPassword('right horse') } }, maxFailuresPerAddress: 100, windowSeconds: 60 });
    const known: number[] = [];
    const unknown: number[] = [];
    for (let i = 0; i < 7; i++) {
      known.push(await elapsedMs(() => auth.authenticate({ username: 'app', password: 'wrong' }, '127.0.0.1')));
      unknown.push(await elapsedMs(() => auth.authenticate({ username: 'ghost', password: 'wrong' }, '127.0.0.1')));
    }
    // The fastest of seven: what the work costs, less whatever else the machine was doing.
    const [k, u] = [Math.min(...known), Math.min(...unknown)];
    console.log(`# scrypt N=2^15 r=8: wrong password ${k.toFixed(1)} ms, unknown user ${u.toFixed(1)} ms (fastest of 7)`);
    assert.ok(k > 10, `a check costs something (${k} ms)`);
    // Without the dummy hash an unknown user costs well under a millisecond; the loose bounds allow for a busy machine.
    assert.ok(u > k / 4 && u < k * 4, `unknown user ${u} ms vs wrong password ${k} ms`);
  });
});

describe('senderAllowed', () => {
  const user = { name: 'app', allowedSenders: ['app@example.test', '@alerts.example.test'] };
  it('admits the listed addresses and domains (case-insensitive), not subdomains, not the null sender', () => {
    assert.equal(senderAllowed(user, 'app@example.test'), true);
    assert.equal(senderAllowed(user, 'App@Example.TEST'), true);
    assert.equal(senderAllowed(user, 'anyone@alerts.example.test'), true);
    assert.equal(senderAllowed(user, 'other@example.test'), false);
    assert.equal(senderAllowed(user, 'a@sub.alerts.example.test'), false);
    assert.equal(senderAllowed(user, 'a@evilalerts.example.test'), false);
    assert.equal(senderAllowed(user, ''), false);
    assert.equal(senderAllowed({ name: 'cron', allowedSenders: undefined }, ''), true);
    assert.equal(senderAllowed({ name: 'cron', allowedSenders: undefined }, 'x@y.test'), true);
  });
});

describe('mailman config: auth', () => {
  function configError(env: Record<string, string>): ConfigError {
    try {
      loadMailmanConfig(undefined, { ...REQUIRED, ...env });
    } catch (err) {
      assert.ok(err instanceof ConfigError, String(err));
      return err;
    }
    assert.fail('expected a ConfigError');
  }

  it('is off by default and takes users with hashes, sender limits and failure limits', () => {
    assert.equal(loadMailmanConfig(undefined, REQUIRED).auth, undefined);
    const hash = hashPassword('pw', FAST);
    const config = loadMailmanConfig(undefined, { ...REQUIRED, HEDWIG_MAILMAN__AUTH: JSON.stringify({ users: { app: { passwordHash: hash, allowedSenders: ['@example.test'] } } }) });
    assert.deepEqual(config.auth, { users: { app: { passwordHash: hash, allowedSenders: ['@example.test'] } }, maxFailuresPerAddress: 10, windowSeconds: 300, plaintextNetworks: ['127.0.0.0/8', '::1/128'] });
  });

  it('names the key of a bad hash, a bad sender pattern, a bad user name, and an empty user list', () => {
    const hash = hashPassword('pw', FAST);
    const bad = (auth: unknown) => configError({ HEDWIG_MAILMAN__AUTH: JSON.stringify(auth) }).issues.map((i) => `${i.key}: ${i.message}`).join('; ');
    assert.match(bad({ users: { app: { passwordHash: 'plaintext' } } }), /^auth\.users\.app\.passwordHash: expected scrypt\$/);
    assert.match(bad({ users: { app: { passwordHash: hash, allowedSenders: ['@', 'not an address'] } } }), /auth\.users\.app\.allowedSenders\.0: expected an address or @domain; auth\.users\.app\.allowedSenders\.1: expected an address or @domain/);
    assert.match(bad({ users: { 'has space': { passwordHash: hash } } }), /auth\.users/);
    assert.match(bad({ users: {} }), /^auth\.users: list at least one user/);
    assert.match(bad({ users: { app: { passwordHash: hash } }, plaintextNetworks: ['172.17.0.0/33'] }), /^auth\.plaintextNetworks\.0: not a CIDR network/);
    assert.match(bad({ users: { app: { passwordHash: hash, password: 'pw' } } }), /auth\.users\.app/);
  });
});

describe('key-generator.ts --smtp-user', () => {
  const tsx = ['--import', 'tsx', 'key-generator.ts'];
  it('generates a password, prints it once, and an auth.users entry whose hash verifies it', async () => {
    const { stdout } = await run(process.execPath, [...tsx, '--smtp-user', 'app', '--allowed-sender', '@example.test', '--allowed-sender', 'a@b.test'], { timeout: 20_000 });
    const password = /^# password for app \(shown this once, stored nowhere\): (\S+)$/m.exec(stdout)?.[1];
    assert.ok(password && password.length >= 32, stdout);
    const entry = parse(stdout).auth.users.app;
    assert.deepEqual(entry.allowedSenders, ['@example.test', 'a@b.test']);
    assert.equal(await verifyPassword(password, parsed(entry.passwordHash)), true);
    // What it prints is a valid mailman config block.
    assert.equal(loadMailmanConfig(undefined, { ...REQUIRED, HEDWIG_MAILMAN__AUTH: JSON.stringify(parse(stdout).auth) }).auth?.users.app?.passwordHash, entry.passwordHash);
  });

  it('--password-stdin hashes the line it reads and prints no password', async () => {
    const child = execFile(process.execPath, [...tsx, '--smtp-user', 'cron', '--password-stdin', '--json'], { timeout: 20_000 });
    child.stdin!.end('s3cret words\n');
    const stdout = await new Promise<string>((resolve, reject) => {
      let out = '';
      child.stdout!.on('data', (chunk: Buffer) => (out += chunk.toString()));
      child.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`exit ${code}`))));
    });
    const result = JSON.parse(stdout);
    assert.equal(result.password, undefined);
    assert.doesNotMatch(stdout, /s3cret/);
    assert.equal(await verifyPassword('s3cret words', parsed(result.passwordHash)), true);
  });

  it('refuses a bad user name or sender pattern with exit code 64', async () => {
    await assert.rejects(run(process.execPath, [...tsx, '--smtp-user', 'two words'], { timeout: 20_000 }), (err: { code: number }) => err.code === 64);
    await assert.rejects(run(process.execPath, [...tsx, '--smtp-user', 'app', '--allowed-sender', 'example.test'], { timeout: 20_000 }), (err: { code: number }) => err.code === 64);
  });
});
