/**
 * The compose deployment, run for real: Debian's dockerd started by the test itself
 * (test/helpers/docker-engine.ts: its own data root, no bridge, no iptables), the base images
 * pulled or built as stand-ins (scripts/docker-base-images.sh), then docker-compose.yml with
 * deploy/docker-compose.host-network.yml (the shipped variant with the workers on the host
 * network: one service per worker, each with its own ops port, beanstalkd on loopback) and a
 * test override that puts the other services on the host network too, so all traffic stays on
 * 127.0.0.1, moves every port to one the OS picked, points at the test's secrets and sends
 * example.org to an SMTP sink on loopback. `ports:` are left out of the shipped files here: the
 * host network has no published ports and docker-compose 1.29 refuses the combination.
 * docker-compose is Debian 12's 1.29; Compose v2 checks the files where it is installed.
 *
 * Skips, saying why, when no engine can run (not root, docker.io not installed, dockerd does
 * not start); with HEDWIG_DOCKER_TEST=required (.ci/run) that is a failure instead.
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { chmodSync, chownSync, copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { parse as parseYaml, stringify } from 'yaml';
import { signRequest } from '../../shared/signing.ts';
import { DOCKER, DOCKER_COMPOSE, dockerUnavailable, run, startDockerEngine, type CommandResult, type DockerEngine } from '../helpers/docker-engine.ts';
import { arrivals, messageIdOf, numberedMessage } from '../helpers/mail-load.ts';
import { freePort, waitFor } from '../helpers/ports.ts';
import { startSmtpSink, type SmtpSink } from '../helpers/smtp-sink.ts';
import { makeTestCa } from '../helpers/test-ca.ts';

const root = resolve(import.meta.dirname, '..', '..');
const KEY = 'd0c4e7c0'.repeat(8);
const FQDN = 'app1.example.com';
const required = process.env.HEDWIG_DOCKER_TEST === 'required';
const HEDWIG_SERVICES = ['postoffice', 'worker', 'worker-2', 'mailman'] as const;
const SERVICES = ['beanstalkd', 'postgres', ...HEDWIG_SERVICES] as const;
type ServiceName = (typeof SERVICES)[number];

describe('the compose deployment in a real Docker engine', { timeout: 20 * 60_000 }, () => {
  let skipReason: string | undefined;
  let engine: DockerEngine | undefined;
  let sink: SmtpSink;
  const work = mkdtempSync(join(tmpdir(), 'hedwig-docker-'));
  const project = `hedwigci${process.pid}`;
  const ports = { beanstalkd: 0, postgres: 0, postoffice: 0, worker: 0, worker2: 0, mailman: 0, mailmanOps: 0 };
  let caFile = '';
  let caDir = '';
  const figures: string[] = [];

  /**
   * docker-compose.yml and deploy/docker-compose.host-network.yml as shipped, less their
   * `ports:` (docker-compose 1.29 refuses published ports on the host network, and an override
   * can add ports but never remove them), then the test override; the project directory is the
   * repository, so every relative path (build context, ./config) means what it means there.
   */
  function compose(args: string[], timeoutMs = 120_000): Promise<CommandResult> {
    const files = ['docker-compose.yml', 'docker-compose.host-network.yml', 'docker-compose.test.yml'].flatMap((file) => ['-f', join(work, file)]);
    return run(DOCKER_COMPOSE, ['--ansi', 'never', '--project-directory', root, '-p', project, ...files, '--profile', 'mailman', ...args], {
      env: { ...engine!.env, COMPOSE_HTTP_TIMEOUT: '120' },
      cwd: root,
      timeoutMs,
    });
  }

  function withoutPorts(source: string, target: string): void {
    const file = parseYaml(readFileSync(source, 'utf8'), { merge: true }) as { services: Record<string, Record<string, unknown>> };
    for (const service of Object.values(file.services)) delete service.ports;
    writeFileSync(target, stringify(file));
  }

  async function composeOk(args: string[], timeoutMs?: number): Promise<CommandResult> {
    const result = await compose(args, timeoutMs);
    assert.equal(result.code, 0, `docker-compose ${args.join(' ')}: ${result.stderr.slice(-3000)}`);
    return result;
  }

  async function docker(args: string[], timeoutMs = 60_000): Promise<CommandResult> {
    return run(DOCKER, args, { env: engine!.env, timeoutMs });
  }

  async function containerOf(service: ServiceName): Promise<string> {
    const ps = await composeOk(['ps', '-q', service]);
    const id = ps.stdout.trim().split('\n')[0];
    assert.ok(id, `${service} has a container`);
    return id;
  }

  async function inspect(service: ServiceName, format: string): Promise<string> {
    const result = await docker(['inspect', '--format', format, await containerOf(service)]);
    assert.equal(result.code, 0, result.stderr);
    return result.stdout.trim();
  }

  async function logsOf(service: ServiceName): Promise<string> {
    return (await compose(['logs', '--no-color', '--tail', '30', service])).stdout;
  }

  async function waitHealthy(services: readonly ServiceName[], timeoutMs = 120_000): Promise<void> {
    for (const service of services) {
      try {
        await waitFor(async () => (await inspect(service, '{{.State.Health.Status}}')) === 'healthy', { timeoutMs, intervalMs: 500, what: `${service} to be healthy` });
      } catch (err) {
        throw new Error(`${(err as Error).message}\n${await inspect(service, '{{json .State}}').catch(() => '')}\n${await logsOf(service)}`);
      }
    }
  }

  /** One message through mailman with msmtp; true when mailman accepted it (250). */
  async function viaMailman(tag: string, n: number): Promise<boolean> {
    const sent = await run('msmtp', ['-C', '/dev/null', '--host=127.0.0.1', `--port=${ports.mailman}`, '--from=load@example.com', '--', 'bob@example.org'], {
      input: numberedMessage(tag, n, 'bob@example.org').replace('<load@example.test>', '<load@example.com>'),
      timeoutMs: 30_000,
    });
    return sent.code === 0;
  }

  /** One message to the post office's signed API with curl; true on 202. */
  async function viaPostoffice(tag: string, n: number): Promise<boolean> {
    const data = numberedMessage(tag, n, 'bob@example.org').replace('<load@example.test>', '<load@example.com>');
    const body = JSON.stringify({ mailfrom: 'load@example.com', rcpttos: ['bob@example.org'], data });
    const headers = signRequest(KEY, { method: 'POST', path: '/v1/messages', fqdn: FQDN, body, idempotencyKey: `${tag}-${n}` });
    const sent = await run(
      'curl',
      ['-sS', '--max-time', '20', '--cacert', caFile, '-o', '/dev/null', '-w', '%{http_code}', '-X', 'POST', `https://127.0.0.1:${ports.postoffice}/v1/messages`,
        '-H', 'content-type: application/json', ...Object.entries(headers).flatMap(([k, v]) => ['-H', `${k}: ${v}`]), '--data-binary', '@-'],
      { input: body, timeoutMs: 30_000 },
    );
    return sent.stdout.trim() === '202';
  }

  async function waitDelivered(ids: string[], timeoutMs = 120_000): Promise<void> {
    try {
      await waitFor(() => ids.every((id) => (arrivals(sink).get(id) ?? 0) > 0), { timeoutMs, intervalMs: 250, what: `${ids.length} messages at the sink` });
    } catch (err) {
      const missing = ids.filter((id) => !arrivals(sink).get(id));
      const logs = await Promise.all(HEDWIG_SERVICES.map(async (s) => `--- ${s}\n${await logsOf(s)}`));
      throw new Error(`${(err as Error).message}; missing: ${missing.join(' ')}\n${logs.join('\n')}`);
    }
  }

  function skipIfNoEngine(t: TestContext): boolean {
    if (!skipReason) return false;
    t.skip(`no Docker engine: ${skipReason}`);
    return true;
  }

  /** Secrets as an operator fills ./secrets: every file the config examples name, readable by uid 1000 only. */
  async function writeSecrets(dir: string): Promise<void> {
    mkdirSync(dir, { mode: 0o755 });
    caDir = mkdtempSync(join(tmpdir(), 'hedwig-docker-ca-'));
    const ca = await makeTestCa(['127.0.0.1'], caDir);
    caFile = ca.caCert;
    copyFileSync(ca.cert, join(dir, 'postoffice.crt'));
    copyFileSync(ca.key, join(dir, 'postoffice.key'));
    copyFileSync(ca.caCert, join(dir, 'postoffice-ca.crt'));
    const dkim = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    for (const tier of ['postoffice', 'worker', 'mailman']) {
      for (const m of readFileSync(join(root, 'config', `${tier}.yaml`), 'utf8').matchAll(/\/run\/secrets\/hedwig\/([^\s"']+)/g)) {
        const name = m[1]!;
        const file = join(dir, name);
        if (/\.(crt|key)$/.test(name) && name.startsWith('postoffice')) continue;
        writeFileSync(file, name.endsWith('.s2026.key') ? dkim : `${KEY}\n`);
      }
    }
    for (const name of readdirSync(dir)) {
      chownSync(join(dir, name), 1000, 1000);
      chmodSync(join(dir, name), 0o400);
    }
  }

  /** Only what a test machine must change; every other setting is the shipped files'. */
  function testOverride(secrets: string): string {
    const secretsMount = `${secrets}:/run/secrets/hedwig:ro`;
    // This machine's nofile hard limit is 20000 (README "Open files"); 65536 would not start here.
    const ulimits = { nofile: { soft: 20000, hard: 20000 } };
    const health = (test: string[]) => ({ test, interval: '1s', timeout: '5s', retries: 3, start_period: '60s' });
    const tierHealth = health(['CMD', 'node', 'dist/deploy/healthcheck.js']);
    const beanstalk = `["127.0.0.1:${ports.beanstalkd}"]`;
    const store = `postgres://hedwig@127.0.0.1:${ports.postgres}/hedwig`;
    const worker = (opsPort: number) => ({
      build: { context: '.', target: 'runtime', network: 'host' },
      ulimits,
      healthcheck: tierHealth,
      volumes: [secretsMount],
      environment: {
        HEDWIG_WORKER__BEANSTALK__SERVERS: beanstalk,
        HEDWIG_WORKER__STORE__URL: store,
        HEDWIG_WORKER__OPS__PORT: String(opsPort),
        HEDWIG_WORKER__ROUTES: JSON.stringify({ 'example.org': `127.0.0.1:${sink.port}` }),
        HEDWIG_WORKER__CONCURRENCY: '2',
        // A delivery deferred by a restart comes back within the test's bound.
        HEDWIG_WORKER__RETRY__DELAYS_SECONDS: '[2, 5]',
      },
    });
    return stringify({
      services: {
        beanstalkd: {
          build: { context: '.', target: 'beanstalkd', network: 'host' },
          network_mode: 'host',
          command: ['-l', '127.0.0.1', '-p', String(ports.beanstalkd), '-b', '/var/lib/beanstalkd', '-f', '0', '-z', '16777216'],
          ulimits,
          healthcheck: health(['CMD', 'bash', '-c', `exec 3<>/dev/tcp/127.0.0.1/${ports.beanstalkd} && printf 'stats\\r\\n' >&3 && read -r -t 2 reply <&3 && [[ $$reply == OK* ]]`]),
        },
        postgres: {
          build: { context: '.', target: 'postgres', network: 'host' },
          network_mode: 'host',
          command: ['-p', String(ports.postgres), '-c', 'listen_addresses=127.0.0.1'],
          volumes: [secretsMount],
          healthcheck: health(['CMD', 'pg_isready', '--quiet', '--host=127.0.0.1', `--port=${ports.postgres}`]),
        },
        postoffice: {
          build: { context: '.', target: 'runtime', network: 'host' },
          network_mode: 'host',
          ulimits,
          healthcheck: tierHealth,
          volumes: [secretsMount],
          environment: {
            HEDWIG_POSTOFFICE__LISTEN__HOST: '127.0.0.1',
            HEDWIG_POSTOFFICE__LISTEN__PORT: String(ports.postoffice),
            HEDWIG_POSTOFFICE__BEANSTALK__SERVERS: beanstalk,
            HEDWIG_POSTOFFICE__STORE__URL: store,
          },
        },
        worker: worker(ports.worker),
        'worker-2': worker(ports.worker2),
        mailman: {
          build: { context: '.', target: 'runtime', network: 'host' },
          network_mode: 'host',
          ulimits,
          healthcheck: tierHealth,
          volumes: [secretsMount],
          environment: {
            HEDWIG_MAILMAN__LISTEN__HOST: '127.0.0.1',
            HEDWIG_MAILMAN__LISTEN__PORT: String(ports.mailman),
            HEDWIG_MAILMAN__OPS__PORT: String(ports.mailmanOps),
            HEDWIG_MAILMAN__POSTOFFICE__URL: `https://127.0.0.1:${ports.postoffice}`,
            HEDWIG_MAILMAN__POSTOFFICE__CA_FILE: '/run/secrets/hedwig/postoffice-ca.crt',
            HEDWIG_MAILMAN__FORWARDER__MAX_BACKOFF_MS: '5000',
          },
        },
      },
    });
  }

  before(async () => {
    skipReason = dockerUnavailable();
    if (!skipReason) {
      try {
        engine = await startDockerEngine();
      } catch (err) {
        skipReason = `dockerd did not start: ${(err as Error).message}`;
      }
    }
    if (skipReason) {
      if (required) throw new Error(`HEDWIG_DOCKER_TEST=required, but ${skipReason}`);
      return;
    }
    sink = await startSmtpSink();
    for (const key of Object.keys(ports) as Array<keyof typeof ports>) ports[key] = await freePort();
    await writeSecrets(join(work, 'secrets'));
    withoutPorts(join(root, 'docker-compose.yml'), join(work, 'docker-compose.yml'));
    withoutPorts(join(root, 'deploy', 'docker-compose.host-network.yml'), join(work, 'docker-compose.host-network.yml'));
    writeFileSync(join(work, 'docker-compose.test.yml'), testOverride(join(work, 'secrets')));

    const started = Date.now();
    const images = await run('bash', [join(root, 'scripts', 'docker-base-images.sh')], { env: engine!.env, timeoutMs: 10 * 60_000 });
    assert.equal(images.code, 0, images.stderr);
    figures.push(`base images: ${images.stdout.trim().replaceAll('\n', ', ')} in ${((Date.now() - started) / 1000).toFixed(0)} s`);
  }, { timeout: 12 * 60_000 });

  after(async () => {
    if (engine) {
      await compose(['down', '--volumes', '--timeout', '45'], 180_000).catch(() => undefined);
      await engine.stop();
    }
    await sink?.stop();
    // Secrets and the test CA: nothing of them stays behind.
    for (const dir of [work, caDir]) if (dir) rmSync(dir, { recursive: true, force: true });
  }, { timeout: 5 * 60_000 });

  it("is a file Debian 12's docker-compose 1.29 accepts, alone and with the host-network variant, and Compose v2 where installed", async (t) => {
    if (skipIfNoEngine(t)) return;
    const shipped = [['-f', 'docker-compose.yml'], ['-f', 'docker-compose.yml', '-f', 'deploy/docker-compose.host-network.yml']];
    for (const files of shipped) {
      for (const profile of [[], ['--profile', 'mailman']]) {
        const v1 = await run(DOCKER_COMPOSE, [...files, ...profile, 'config', '-q'], { env: engine!.env, cwd: root });
        assert.equal(v1.code, 0, `docker-compose ${files.join(' ')} config: ${v1.stderr}`);
      }
    }
    assert.equal((await compose(['config', '-q'])).code, 0, 'the test stack');
    const v2 = await run(DOCKER, ['compose', 'version'], { env: engine!.env });
    if (v2.code === 0) {
      for (const files of shipped) {
        const checked = await run(DOCKER, ['compose', ...files, 'config', '-q'], { env: engine!.env, cwd: root });
        assert.equal(checked.code, 0, `docker compose ${files.join(' ')} config: ${checked.stderr}`);
      }
    } else {
      t.diagnostic('Compose v2 (docker compose) is not installed here; checked with docker-compose 1.29 only');
    }
  });

  it('builds the images and starts every service with its health check healthy', { timeout: 10 * 60_000 }, async (t) => {
    if (skipIfNoEngine(t)) return;
    const building = Date.now();
    await composeOk(['build'], 10 * 60_000);
    figures.push(`docker-compose build: ${((Date.now() - building) / 1000).toFixed(0)} s`);
    const starting = Date.now();
    await composeOk(['up', '-d'], 180_000);
    await waitHealthy(SERVICES);
    figures.push(`up -d until all healthy: ${((Date.now() - starting) / 1000).toFixed(0)} s`);
    // The runtime user, and beanstalkd under docker-init.
    assert.equal(await inspect('postoffice', '{{.Config.User}}'), 'node');
    assert.equal(await inspect('beanstalkd', '{{.HostConfig.Init}}'), 'true');
  });

  it('delivers mail from msmtp through mailman and from curl through the post office to the sink', async (t) => {
    if (skipIfNoEngine(t)) return;
    assert.ok(await viaMailman('smtp', 1), 'mailman accepted the message');
    assert.ok(await viaPostoffice('http', 1), 'the post office answered 202');
    await waitDelivered([messageIdOf('smtp', 1), messageIdOf('http', 1)]);
    const received = sink.messages.find((m) => m.raw.toString().includes(messageIdOf('smtp', 1)))!;
    assert.equal(received.clientHostname, 'mail-out.example.com', "config/worker.yaml's ehloName");
    assert.match(received.raw.toString(), /^DKIM-Signature: [^]*?\bd=example\.com;/m, 'signed with the DKIM key config/worker.yaml names');
  });

  it('stops beanstalkd on SIGTERM at once (docker-init), not after the grace period with SIGKILL', async (t) => {
    if (skipIfNoEngine(t)) return;
    const stopping = Date.now();
    const stopped = await compose(['stop', 'beanstalkd']);
    const seconds = (Date.now() - stopping) / 1000;
    figures.push(`docker-compose stop beanstalkd: ${seconds.toFixed(2)} s, exit ${stopped.code}`);
    assert.equal(stopped.code, 0, stopped.stderr);
    const exitCode = Number(await inspect('beanstalkd', '{{.State.ExitCode}}'));
    t.diagnostic(`beanstalkd container exit code ${exitCode} after ${seconds.toFixed(2)} s`);
    assert.notEqual(exitCode, 137, 'killed with SIGKILL: SIGTERM was ignored');
    // Docker's default grace period is 10 s: a stop that waited it out was no SIGTERM stop.
    assert.ok(seconds < 10, `took ${seconds} s`);
    await composeOk(['start', 'beanstalkd']);
    await waitHealthy(SERVICES);
    // The engine's share of that: the same stop without docker-compose's own start-up.
    const container = await containerOf('beanstalkd');
    const direct = Date.now();
    assert.equal((await docker(['stop', container])).code, 0);
    figures.push(`docker stop (beanstalkd container): ${((Date.now() - direct) / 1000).toFixed(2)} s, container exit ${await inspect('beanstalkd', '{{.State.ExitCode}}')}`);
    await composeOk(['start', 'beanstalkd']);
    await waitHealthy(SERVICES);
  });

  it('restarts each service under a small load and loses nothing that was accepted', { timeout: 10 * 60_000 }, async (t) => {
    if (skipIfNoEngine(t)) return;
    const accepted: string[] = [];
    let refused = 0;
    let loading = true;
    let n = 0;
    const load = (async () => {
      while (loading) {
        n += 1;
        const [smtp, http] = await Promise.all([viaMailman('restart-smtp', n), viaPostoffice('restart-http', n)]);
        if (smtp) accepted.push(messageIdOf('restart-smtp', n));
        else refused += 1;
        if (http) accepted.push(messageIdOf('restart-http', n));
        else refused += 1;
        await new Promise((r) => setTimeout(r, 100));
      }
    })();
    try {
      for (const service of SERVICES) {
        const before = accepted.length;
        await composeOk(['restart', service], 120_000);
        await waitHealthy(SERVICES);
        // Some load went through while this service was coming back.
        await waitFor(() => accepted.length > before + 2, { timeoutMs: 60_000, what: `load after restarting ${service}` });
      }
    } finally {
      loading = false;
      await load;
    }
    t.diagnostic(`accepted ${accepted.length}, refused ${refused} during the restarts`);
    await waitDelivered(accepted, 180_000);
  });

  it("keeps what waits in beanstalkd's binlog and mailman's spool across down and up", { timeout: 10 * 60_000 }, async (t) => {
    if (skipIfNoEngine(t)) return;
    await composeOk(['stop', 'worker', 'worker-2'], 120_000);
    const queued: string[] = [];
    for (let i = 1; i <= 5; i++) {
      assert.ok(await viaPostoffice('binlog', i), 'queued with no worker running');
      queued.push(messageIdOf('binlog', i));
    }
    await composeOk(['stop', 'postoffice'], 120_000);
    const spooled: string[] = [];
    for (let i = 1; i <= 5; i++) {
      assert.ok(await viaMailman('spool', i), 'spooled with no post office running');
      spooled.push(messageIdOf('spool', i));
    }
    for (const id of [...queued, ...spooled]) assert.equal(arrivals(sink).get(id), undefined, `${id} cannot have been delivered yet`);

    await composeOk(['down', '--timeout', '45'], 180_000);
    assert.equal((await composeOk(['ps', '-q'])).stdout.trim(), '', 'down removed every container');
    const volumes = (await docker(['volume', 'ls', '--format', '{{.Name}}'])).stdout;
    for (const volume of ['beanstalkd-binlog', 'mailman-spool']) assert.match(volumes, new RegExp(`^${project}_${volume}$`, 'm'));

    await composeOk(['up', '-d'], 180_000);
    await waitHealthy(SERVICES);
    await waitDelivered([...queued, ...spooled]);
  });

  describe('exit codes in the container and the restart policy', () => {
    /** The post office image run once by hand, as the compose service runs it (compose's `run` cannot: it links to depends_on, which host networking refuses). */
    async function postofficeOnce(env: Record<string, string>): Promise<CommandResult> {
      const service = ['--network', 'host', '--read-only', '--tmpfs', '/tmp', '--cap-drop', 'ALL', '--security-opt', 'no-new-privileges:true',
        '-v', `${join(root, 'config', 'postoffice.yaml')}:/etc/hedwig/postoffice.yaml:ro`, '-v', `${join(work, 'secrets')}:/run/secrets/hedwig:ro`,
        '-e', 'HEDWIG_POSTOFFICE__LISTEN__HOST=127.0.0.1', '-e', `HEDWIG_POSTOFFICE__LISTEN__PORT=${ports.postoffice}`,
        '-e', `HEDWIG_POSTOFFICE__BEANSTALK__SERVERS=["127.0.0.1:${ports.beanstalkd}"]`,
        '-e', `HEDWIG_POSTOFFICE__STORE__URL=postgres://hedwig@127.0.0.1:${ports.postgres}/hedwig`, ...Object.entries(env).flatMap(([k, v]) => ['-e', `${k}=${v}`])];
      return docker(['run', '--rm', ...service, 'hedwig:latest', 'node', 'dist/postoffice/main.js', '--config', '/etc/hedwig/postoffice.yaml']);
    }

    it('exits 2 on a bad key and 1 on a port already taken', async (t) => {
      if (skipIfNoEngine(t)) return;
      const badKey = await postofficeOnce({ HEDWIG_POSTOFFICE__LISTEN__PROT: '1' });
      assert.equal(badKey.code, 2, badKey.stdout + badKey.stderr);
      assert.match(badKey.stdout, /environment HEDWIG_POSTOFFICE__LISTEN__PROT: listen\.prot: unknown key/);
      // The running post office holds the port (host network).
      const taken = await postofficeOnce({});
      assert.equal(taken.code, 1, taken.stdout + taken.stderr);
      assert.match(taken.stdout, /EADDRINUSE/);
    });

    it('restarts a tier that exited 1 (restart: unless-stopped) until its port is free, then it is healthy', async (t) => {
      if (skipIfNoEngine(t)) return;
      await composeOk(['stop', 'postoffice'], 120_000);
      const holder: Server = await new Promise((done, fail) => {
        // It only holds the port: whoever connects (mailman's forwarder) is hung up on at once.
        const server = createServer((socket) => socket.destroy());
        server.once('error', fail);
        server.listen(ports.postoffice, '127.0.0.1', () => done(server));
      });
      try {
        await composeOk(['start', 'postoffice']);
        await waitFor(async () => Number(await inspect('postoffice', '{{.RestartCount}}')) >= 2, { timeoutMs: 60_000, intervalMs: 250, what: 'Docker to restart the post office' });
        assert.match(await logsOf('postoffice'), /"exitCode":1/);
      } finally {
        await new Promise((done) => holder.close(done));
      }
      await waitHealthy(['postoffice']);
      assert.ok(await viaPostoffice('after-restarts', 1));
      await waitDelivered([messageIdOf('after-restarts', 1)]);
    });
  });

  it('reports its figures', (t) => {
    if (skipIfNoEngine(t)) return;
    for (const line of figures) t.diagnostic(line);
  });
});
