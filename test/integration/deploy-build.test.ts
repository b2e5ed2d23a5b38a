/**
 * What the runtime image runs, without Docker: `tsc -p tsconfig.build.json` (the Dockerfile's
 * build step) compiled into a temp dist/, then every tier started with plain `node
 * dist/<tier>/main.js` and the production examples in config/, exactly as docker-compose.yml
 * mounts them. Only what must differ on a test machine is overridden, the way an operator
 * would: addresses and ports through <TIER>_* environment variables (loopback only), and the
 * secrets directory, which holds a test CA's certificate and real keys.
 * The health check the image declares (`node dist/deploy/healthcheck.js`) is run against
 * each tier, and a message goes from msmtp through all of them over HTTPS.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { isBuiltin } from 'node:module';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parse as parseYaml } from 'yaml';
import { startBeanstalkd, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { freePort } from '../helpers/ports.ts';
import { startSmtpSink, type SmtpSink } from '../helpers/smtp-sink.ts';
import { makeTestCa } from '../helpers/test-ca.ts';
import { startTier, type TierName, type TierProcess } from '../helpers/tiers.ts';
import { startPostgres, type PostgresProcess } from '../helpers/postgres.ts';

const root = resolve(import.meta.dirname, '..', '..');
const KEY = 'c0ffee42'.repeat(8);

function run(command: string, args: string[], options: { input?: string; cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolveRun) => {
    const child = execFile(command, args, { timeout: 90_000, cwd: options.cwd ?? root, encoding: 'utf8', env: { ...process.env, ...options.env } }, (err, stdout, stderr) => {
      resolveRun({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
    });
    child.stdin?.end(options.input ?? '');
  });
}

/** config/<tier>.yaml with /run/secrets/hedwig pointing at the test's secrets directory. */
function productionConfig(tier: TierName, secretsDir: string): unknown {
  return parseYaml(readFileSync(join(root, 'config', `${tier}.yaml`), 'utf8').replaceAll('/run/secrets/hedwig', secretsDir));
}

describe('the production build with the config/ examples', { timeout: 180_000 }, () => {
  const buildDir = mkdtempSync(join(tmpdir(), 'hedwig-build-'));
  const distDir = join(buildDir, 'dist');
  let beanstalkd: BeanstalkdProcess;
  let postgres: PostgresProcess;
  let sink: SmtpSink;
  const tiers: Partial<Record<TierName, TierProcess>> = {};
  let mailmanPort = 0;

  before(async () => {
    // The Dockerfile's build step; node_modules and package.json ("type": "module") sit beside dist/ as in /app.
    const tsc = await run(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.build.json', '--outDir', distDir]);
    assert.equal(tsc.code, 0, tsc.stdout + tsc.stderr);
    symlinkSync(join(root, 'node_modules'), join(buildDir, 'node_modules'));
    copyFileSync(join(root, 'package.json'), join(buildDir, 'package.json'));

    const secrets = join(buildDir, 'secrets');
    mkdirSync(secrets, { mode: 0o700 });
    const ca = await makeTestCa(['127.0.0.1'], mkdtempSync(join(tmpdir(), 'hedwig-build-ca-')));
    copyFileSync(ca.cert, join(secrets, 'postoffice.crt'));
    copyFileSync(ca.key, join(secrets, 'postoffice.key'));
    copyFileSync(ca.caCert, join(secrets, 'postoffice-ca.crt'));
    for (const name of ['app1.example.com.key', 'app2.example.com.key', 'mailman.key']) writeFileSync(join(secrets, name), `${KEY}\n`, { mode: 0o600 });
    // Any other file the examples name there is a DKIM key: an RSA key pair as key-generator.ts --dkim makes.
    const dkimPem = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    for (const tier of ['postoffice', 'worker', 'mailman']) {
      for (const m of readFileSync(join(root, 'config', `${tier}.yaml`), 'utf8').matchAll(/\/run\/secrets\/hedwig\/([^\s"']+)/g)) {
        if (!existsSync(join(secrets, m[1]!))) writeFileSync(join(secrets, m[1]!), dkimPem, { mode: 0o600 });
      }
    }

    beanstalkd = await startBeanstalkd({ maxJobSize: 16_777_216, fsyncMs: 0 });
    // The examples' store is docker-compose.yml's PostgreSQL: a real one here, on loopback.
    postgres = await startPostgres();
    sink = await startSmtpSink();
    const postofficePort = await freePort();
    mailmanPort = await freePort();
    const loopbackBeanstalk = `["${beanstalkd.address}"]`;

    tiers.postoffice = await startTier('postoffice', productionConfig('postoffice', secrets), {
      distDir,
      env: { HEDWIG_POSTOFFICE__LISTEN__HOST: '127.0.0.1', HEDWIG_POSTOFFICE__LISTEN__PORT: String(postofficePort), HEDWIG_POSTOFFICE__BEANSTALK__SERVERS: loopbackBeanstalk, HEDWIG_POSTOFFICE__STORE__URL: postgres.url },
    });
    tiers.worker = await startTier('worker', productionConfig('worker', secrets), {
      distDir,
      env: {
        HEDWIG_WORKER__BEANSTALK__SERVERS: loopbackBeanstalk,
        HEDWIG_WORKER__STORE__URL: postgres.url,
        HEDWIG_WORKER__CONCURRENCY: '2',
        HEDWIG_WORKER__ROUTES: `{"example.org": "127.0.0.1:${sink.port}"}`,
        HEDWIG_WORKER__OPS__HOST: '127.0.0.1',
        HEDWIG_WORKER__OPS__PORT: String(await freePort()),
      },
    });
    tiers.mailman = await startTier('mailman', productionConfig('mailman', secrets), {
      distDir,
      readyPort: mailmanPort,
      env: {
        HEDWIG_MAILMAN__LISTEN__PORT: String(mailmanPort),
        HEDWIG_MAILMAN__POSTOFFICE__URL: `https://127.0.0.1:${postofficePort}`,
        HEDWIG_MAILMAN__POSTOFFICE__CA_FILE: join(secrets, 'postoffice-ca.crt'),
        HEDWIG_MAILMAN__SPOOL__DIR: join(buildDir, 'spool'),
        HEDWIG_MAILMAN__OPS__PORT: String(await freePort()),
      },
    });
  });

  after(async () => {
    await Promise.allSettled(Object.values(tiers).map((tier) => tier.kill()));
    await Promise.allSettled([sink?.stop(), beanstalkd?.stop(), postgres?.stop()]);
  });

  function healthcheck(pid: number): Promise<{ code: number; stdout: string; stderr: string }> {
    return run(process.execPath, [join(distDir, 'deploy', 'healthcheck.js'), '--pid', String(pid)]);
  }

  it('emits runnable JavaScript whose relative imports name .js files', () => {
    const main = readFileSync(join(distDir, 'postoffice', 'main.js'), 'utf8');
    assert.match(main, /from "\.\/server\.js"/);
    assert.doesNotMatch(main, /\.ts"/);
    const emitted = readdirSync(distDir);
    for (const entry of ['mailman', 'postoffice', 'worker', 'shared', 'cli', 'deploy', 'key-generator.js']) assert.ok(emitted.includes(entry), `dist/${entry}`);
  });

  it('imports at run time only packages the image installs (dependencies, not devDependencies)', () => {
    const { dependencies } = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
    const files = readdirSync(distDir, { recursive: true, encoding: 'utf8' }).filter((file) => file.endsWith('.js'));
    const missing = new Set<string>();
    for (const file of files) {
      const code = readFileSync(join(distDir, file), 'utf8');
      // Static imports and re-exports, dynamic imports, and createRequire(...)('x') calls.
      const specifiers = /^\s*(?:import|export)\b[^;]*?\bfrom\s*["']([^"'.][^"']*)["']|^\s*import\s*["']([^"'.][^"']*)["']|\bimport\s*\(\s*["']([^"'.][^"']*)["']|\bcreateRequire\([^)]*\)\s*\(\s*["']([^"'.][^"']*)["']/gm;
      for (const m of code.matchAll(specifiers)) {
        const specifier = (m[1] ?? m[2] ?? m[3] ?? m[4])!;
        if (specifier.startsWith('node:') || isBuiltin(specifier)) continue;
        const name = specifier.startsWith('@') ? specifier.split('/').slice(0, 2).join('/') : specifier.split('/')[0]!;
        if (!(name in dependencies)) missing.add(`${name} (dist/${file})`);
      }
    }
    assert.ok(files.length > 20);
    assert.deepEqual([...missing], [], 'the runtime image installs with npm ci --omit=dev');
  });

  it("passes each tier's image health check, which finds the URL in the tier's own config (HTTPS for the post office)", async () => {
    const expected: Record<TierName, RegExp> = {
      postoffice: /^healthy: postoffice https:\/\/127\.0\.0\.1:\d+\/readyz$/,
      worker: /^healthy: worker http:\/\/127\.0\.0\.1:\d+\/readyz$/,
      mailman: /^healthy: mailman http:\/\/127\.0\.0\.1:\d+\/readyz$/,
    };
    for (const [name, tier] of Object.entries(tiers) as Array<[TierName, TierProcess]>) {
      const result = await healthcheck(tier.child.pid!);
      assert.equal(result.code, 0, `${name}: ${result.stdout}${result.stderr}`);
      assert.match(result.stdout.trim(), expected[name]);
    }
  });

  it('relays a message from msmtp through mailman, the HTTPS post office (private CA), beanstalkd and the worker', async () => {
    const message = 'From: <alerts@example.com>\r\nTo: <bob@example.org>\r\nSubject: built\r\nMessage-ID: <built@example.com>\r\n\r\nfrom the compiled tiers\r\n';
    const sent = await run('msmtp', ['-C', '/dev/null', '--host=127.0.0.1', `--port=${mailmanPort}`, '--from=alerts@example.com', '--', 'bob@example.org'], { input: message });
    assert.equal(sent.code, 0, sent.stderr);
    const [received] = await sink.waitForMessages(1, 30_000).catch((err: Error) => {
      const recent = (tier: TierName) => JSON.stringify(tiers[tier]!.logs.slice(-5));
      throw new Error(`${err.message}\nmailman: ${recent('mailman')}\npostoffice: ${recent('postoffice')}\nworker: ${recent('worker')}`);
    });
    assert.deepEqual(received!.rcptTo, ['bob@example.org']);
    assert.ok(received!.raw.toString().endsWith(message), 'the message arrives unchanged below the fields the worker adds on top');
    assert.equal(received!.clientHostname, 'mail-out.example.com', "the worker's EHLO name from config/worker.yaml");
    assert.match(received!.raw.toString(), /^DKIM-Signature: [^]*?\bd=example\.com;[^]*?\bs=s2026;/m, 'signed with the DKIM key config/worker.yaml names');
    assert.equal(tiers.mailman!.logs.find((l) => l.event === 'accepted')?.path, 'inline', 'mailman trusted the post office certificate without spooling');
    assert.ok(tiers.postoffice!.logs.every((l) => l.event !== 'plain_http'), 'no plain-HTTP warning with TLS configured');
  });

  it('runs the hedwig CLI from dist/ against the queue', async () => {
    const result = await run(process.execPath, [join(distDir, 'cli', 'run.js'), 'queue', 'stats'], { env: { HEDWIG_BEANSTALK_SERVERS: beanstalkd.address } });
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /hedwig-outbound/);
  });

  it('fails the health check of a tier that is not ready, and of a process that is no hedwig tier', async () => {
    await beanstalkd.stop();
    try {
      const unready = await healthcheck(tiers.postoffice!.child.pid!);
      assert.equal(unready.code, 1);
      assert.match(unready.stdout, /^unhealthy: postoffice https:\/\/127\.0\.0\.1:\d+\/readyz: status 503/);
    } finally {
      await beanstalkd.restart();
    }
    const stranger = await healthcheck(process.pid);
    assert.equal(stranger.code, 1);
    assert.match(stranger.stdout, /^unhealthy: process \d+ is not a hedwig tier/);
  });

  it('stops every tier on SIGTERM with exit code 0', async () => {
    for (const name of ['mailman', 'postoffice', 'worker'] as const) {
      assert.equal(await tiers[name]!.stop(), 0, `${name}: ${tiers[name]!.stderr()}`);
    }
  });
});
