/**
 * docker-compose.yml, the Dockerfile, .dockerignore and deploy/hedwig-mailman.service as a
 * specification. There is no Docker engine on the development machines, so every command,
 * file, port and environment variable they name is checked against the project (each tier
 * loads its mounted config with the service's environment through its own loader), and the
 * health-check commands they run are run here against real processes.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { copyFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parse as parseYaml } from 'yaml';
import { envNamespace } from '../../shared/config.ts';
import { jobSizeFor } from '../../shared/job.ts';
import { loadMailmanConfig } from '../../mailman/config.ts';
import { loadPostofficeConfig, type PostofficeConfig } from '../../postoffice/config.ts';
import { loadWorkerConfig } from '../../worker/config.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { freePort } from '../helpers/ports.ts';

const root = resolve(import.meta.dirname, '..', '..');
const SECRETS_IN_CONTAINER = '/run/secrets/hedwig';
const TIERS = ['postoffice', 'worker', 'mailman'] as const;
type Tier = (typeof TIERS)[number];

// ---------------------------------------------------------------- compose model

interface Service {
  build?: { context: string; target?: string };
  image?: string;
  command?: string[];
  environment?: Record<string, string>;
  volumes?: string[];
  ports?: string[];
  healthcheck?: { test: string[] };
  profiles?: string[];
  deploy?: { replicas?: number };
  stop_grace_period?: string;
  container_name?: string;
  read_only?: boolean;
  user?: string;
}

/**
 * Compose's variable interpolation for the forms this file may use: `$$` (a literal `$`),
 * `${VAR}`, `${VAR:-default}` and `${VAR-default}`, with an empty environment (defaults
 * apply). Any other form is an error, so a typo cannot slip through as literal text.
 */
function interpolate(value: string, env: Record<string, string> = {}): string {
  return value.replace(/\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)?/g, (match, braced?: string, op?: string, fallback?: string, bare?: string) => {
    if (match === '$$') return '$';
    const name = braced ?? bare;
    if (!name) throw new Error(`unsupported interpolation in ${JSON.stringify(value)}`);
    const set = env[name];
    if (op === ':-') return set ? set : (fallback ?? '');
    if (op === '-') return set ?? fallback ?? '';
    if (set === undefined) throw new Error(`${name} has no default in ${JSON.stringify(value)}`);
    return set;
  });
}

function interpolateTree(node: unknown): unknown {
  if (typeof node === 'string') return interpolate(node);
  if (Array.isArray(node)) return node.map(interpolateTree);
  if (node && typeof node === 'object') return Object.fromEntries(Object.entries(node).map(([k, v]) => [k, interpolateTree(v)]));
  return node;
}

const composeText = readFileSync(join(root, 'docker-compose.yml'), 'utf8');
// Compose resolves `<<:` merge keys (the x-hedwig anchor), then interpolates.
const compose = interpolateTree(parseYaml(composeText, { merge: true })) as { services: Record<string, Service>; volumes?: Record<string, unknown> };
const services = compose.services;

function tierOf(service: Service): Tier | undefined {
  const entry = service.command?.find((arg) => /^dist\/(mailman|postoffice|worker)\/main\.js$/.test(arg));
  return entry?.split('/')[1] as Tier | undefined;
}

function hedwigServices(): Array<[string, Service, Tier]> {
  return Object.entries(services).flatMap(([name, service]) => {
    const tier = tierOf(service);
    return tier ? [[name, service, tier] as [string, Service, Tier]] : [];
  });
}

/** `./x:/y[:ro]` bind mounts of a service as [project path, container path]. */
function bindMounts(service: Service): Array<[string, string]> {
  return (service.volumes ?? []).filter((v) => v.startsWith('./')).map((v) => {
    const [source, target] = v.split(':');
    return [source!, target!];
  });
}

/** The project file bind-mounted at `containerPath`, if any (a file inside a mounted directory included). */
function mountedSource(service: Service, containerPath: string): string | undefined {
  for (const [source, target] of bindMounts(service)) {
    if (containerPath === target) return join(root, source);
    if (containerPath.startsWith(`${target}/`)) return join(root, source, containerPath.slice(target.length + 1));
  }
  return undefined;
}

function configFileOf(service: Service): string {
  const i = service.command!.indexOf('--config');
  assert.ok(i > 0, 'every tier is started with --config FILE');
  return service.command![i + 1]!;
}

/** `dist/a/b.js` in the image is compiled from `a/b.ts` (tsconfig.build.json: outDir dist, rootDir the project). */
function sourceOfDist(path: string): string {
  const m = /^dist\/(.+)\.js$/.exec(path);
  assert.ok(m, `${path} is not under dist/`);
  return `${m[1]}.ts`;
}

const buildConfig = JSON.parse(readFileSync(join(root, 'tsconfig.build.json'), 'utf8')) as { compilerOptions: { outDir: string }; include: string[] };

function compiledByBuild(source: string): boolean {
  return buildConfig.include.some((entry) => source === entry || source.startsWith(`${entry}/`));
}

// ------------------------------------------------------------- Dockerfile model

interface Instruction {
  keyword: string;
  args: string;
  stage: string;
}

function dockerfileInstructions(): Instruction[] {
  const lines = readFileSync(join(root, 'Dockerfile'), 'utf8').replace(/\\\n/g, ' ').split('\n');
  const result: Instruction[] = [];
  let stage = '';
  for (const line of lines.map((l) => l.trim())) {
    if (!line || line.startsWith('#')) continue;
    const [keyword, ...rest] = line.split(/\s+/);
    const args = rest.join(' ');
    if (keyword!.toUpperCase() === 'FROM') stage = /\bAS\s+(\S+)/i.exec(args)?.[1] ?? '';
    result.push({ keyword: keyword!.toUpperCase(), args, stage });
  }
  return result;
}

/** Docker's .dockerignore rules: patterns in order, the last one matching a path or one of its parents wins. */
function inBuildContext(path: string): boolean {
  const patterns = readFileSync(join(root, '.dockerignore'), 'utf8').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
  const prefixes = path.split('/').map((_, i, parts) => parts.slice(0, i + 1).join('/'));
  let included = true;
  for (const raw of patterns) {
    const negated = raw.startsWith('!');
    const pattern = (negated ? raw.slice(1) : raw).replace(/^\/|\/$/g, '');
    const regex = new RegExp(`^${pattern.split('**').map((part) => part.split('*').map((s) => s.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('[^/]*')).join('.*')}$`);
    if (prefixes.some((prefix) => regex.test(prefix))) included = negated;
  }
  return included;
}

function filesUnder(path: string): string[] {
  const full = join(root, path);
  if (!statSync(full).isDirectory()) return [path];
  return readdirSync(full, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => relative(root, join(entry.parentPath, entry.name)));
}

function execArgs(json: string): string[] {
  const parsed = JSON.parse(json) as unknown;
  assert.ok(Array.isArray(parsed), `exec form expected: ${json}`);
  return parsed as string[];
}

// ------------------------------------------------------------------ helpers

function run(command: string, args: string[], options: { env?: NodeJS.ProcessEnv } = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolveRun) => {
    execFile(command, args, { timeout: 30_000, env: options.env ?? process.env, encoding: 'utf8' }, (err, stdout, stderr) => {
      resolveRun({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
    });
  });
}

/**
 * The secrets directory as an operator fills it: every file the configs name under
 * /run/secrets/hedwig. Each holds an RSA private key in PEM, which serves as a host key
 * (any string of 32 characters or more) and as a DKIM key alike (the worker checks DKIM
 * keys at load). Mounted configs are rewritten to point here instead.
 */
function fakeSecrets(): string {
  const dir = mkdtempSync(join(tmpdir(), 'hedwig-compose-secrets-'));
  const pem = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  for (const tier of TIERS) {
    for (const m of readFileSync(join(root, 'config', `${tier}.yaml`), 'utf8').matchAll(/\/run\/secrets\/hedwig\/([^\s"']+)/g)) {
      writeFileSync(join(dir, m[1]!), pem, { mode: 0o600 });
    }
  }
  return dir;
}

function configWithSecretsIn(source: string, secretsDir: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'hedwig-compose-config-'));
  const file = join(dir, source.split('/').pop()!);
  writeFileSync(file, readFileSync(source, 'utf8').replaceAll(SECRETS_IN_CONTAINER, secretsDir));
  return file;
}

const loaders = { postoffice: loadPostofficeConfig, worker: loadWorkerConfig, mailman: loadMailmanConfig };

function loadTierConfig(tier: Tier, file: string, env: Record<string, string>) {
  return loaders[tier](file, env);
}

// -------------------------------------------------------------------- tests

describe('docker-compose.yml', () => {
  const secretsDir = fakeSecrets();
  const loaded = new Map<string, ReturnType<typeof loadTierConfig>>();

  before(() => {
    for (const [name, service, tier] of hedwigServices()) {
      const source = mountedSource(service, configFileOf(service));
      assert.ok(source, `${name}: its --config file is not mounted from the project`);
      loaded.set(name, loadTierConfig(tier, configWithSecretsIn(source, secretsDir), service.environment ?? {}));
    }
  });

  it('runs beanstalkd and one service per tier, mailman only in the "mailman" profile', () => {
    assert.deepEqual(hedwigServices().map(([name, , tier]) => [name, tier]).sort(), [['mailman', 'mailman'], ['postoffice', 'postoffice'], ['worker', 'worker']]);
    assert.ok(services.beanstalkd, 'a beanstalkd service');
    assert.deepEqual(services.mailman!.profiles, ['mailman'], 'mailman runs on app hosts, not with the central services');
    for (const name of ['beanstalkd', 'postoffice', 'worker']) assert.equal(services[name]!.profiles, undefined, `${name} starts by default`);
  });

  it('starts each tier from a dist/ entry point compiled from a source file that exists', () => {
    for (const [name, service] of hedwigServices()) {
      const [node, entry] = service.command!;
      assert.equal(node, 'node', name);
      const source = sourceOfDist(entry!);
      assert.ok(existsSync(join(root, source)), `${name}: ${entry} would be built from ${source}, which does not exist`);
      assert.ok(compiledByBuild(source), `${name}: ${source} is not in tsconfig.build.json's include`);
    }
  });

  it('mounts only files that exist, config read-only, and the secrets directory that git and the image never hold', () => {
    for (const [name, service] of Object.entries(services)) {
      for (const volume of service.volumes ?? []) {
        const [source, target, mode] = volume.split(':');
        if (source === './secrets') {
          assert.equal(target, SECRETS_IN_CONTAINER, `${name}: secrets go to ${SECRETS_IN_CONTAINER}`);
          assert.equal(mode, 'ro', `${name}: secrets are mounted read-only`);
          continue;
        }
        if (source!.startsWith('./')) {
          assert.ok(existsSync(join(root, source!)), `${name}: ${source} does not exist`);
          assert.equal(mode, 'ro', `${name}: ${source} is mounted read-only`);
        } else {
          assert.ok(compose.volumes && source! in compose.volumes, `${name}: named volume ${source} is declared`);
        }
      }
    }
    assert.match(readFileSync(join(root, '.gitignore'), 'utf8'), /^\/secrets\/$/m, 'secrets/ is git-ignored');
    assert.equal(inBuildContext('secrets/app1.example.com.key'), false, 'secrets/ is outside the Docker build context');
  });

  it('names only key and certificate files under /run/secrets/hedwig in the config files, which the services mount', () => {
    for (const [name, service, tier] of hedwigServices()) {
      const text = readFileSync(join(root, 'config', `${tier}.yaml`), 'utf8');
      if (text.includes(SECRETS_IN_CONTAINER)) {
        assert.ok(mountedSource(service, `${SECRETS_IN_CONTAINER}/x`), `${name}: uses ${SECRETS_IN_CONTAINER} but does not mount it`);
      }
    }
  });

  it('loads every tier config through the tier loader with the service environment (known keys only)', () => {
    for (const [name, service, tier] of hedwigServices()) {
      for (const variable of Object.keys(service.environment ?? {})) {
        assert.ok(variable.startsWith(envNamespace(tier)) || ['LOG_LEVEL', 'NODE_OPTIONS'].includes(variable), `${name}: ${variable} is not a ${tier} setting (${envNamespace(tier)}*)`);
      }
      assert.ok(loaded.get(name), `${name} loaded`);
    }
    // The overrides take effect (a strict schema already refused unknown keys).
    const mailman = loaded.get('mailman') as ReturnType<typeof loadMailmanConfig>;
    assert.deepEqual(mailman.listen, { host: '0.0.0.0', port: 2525 });
    assert.equal(mailman.spool.dir, '/var/spool/hedwig');
  });

  it('publishes the ports the tiers listen on: the post office to the network, mailman on the docker0 address only, nothing else', () => {
    const postoffice = loaded.get('postoffice') as PostofficeConfig;
    assert.deepEqual(services.postoffice!.ports, [`${postoffice.listen.port}:${postoffice.listen.port}`]);
    assert.equal(postoffice.listen.host, '0.0.0.0');
    assert.ok(postoffice.tls, 'the published post office serves HTTPS');

    const mailman = loaded.get('mailman') as ReturnType<typeof loadMailmanConfig>;
    assert.deepEqual(services.mailman!.ports, [`172.17.0.1:25:${mailman.listen.port}`], 'mailman: docker0 address, port 25, to its listen port');
    assert.ok(composeText.includes('${HEDWIG_DOCKER0_ADDRESS:-172.17.0.1}:25:'), 'the docker0 address can be changed (old Docker: 172.17.42.1)');
    // Docker's DNAT keeps a LAN client's own address: only loopback, docker0's subnet and the project's network.
    assert.deepEqual(mailman.allowedNetworks.map(String), ['127.0.0.0/8', '::1/128', '172.17.0.0/16', '172.30.25.0/24']);
    assert.ok(composeText.includes('${HEDWIG_DOCKER0_SUBNET:-172.17.0.0/16}') && composeText.includes('${HEDWIG_COMPOSE_SUBNET:-172.30.25.0/24}'), 'both subnets can be changed in .env');
    const network = (compose as { networks?: { default?: { ipam?: { config?: Array<{ subnet?: string }> } } } }).networks?.default?.ipam?.config?.[0]?.subnet;
    assert.equal(network, '172.30.25.0/24', "the project's network has the subnet mailman allows");

    assert.equal(services.beanstalkd!.ports, undefined, 'beanstalkd has no authentication: never published');
    assert.equal(services.worker!.ports, undefined, 'workers take no connections from outside');
  });

  it('lets the post office and the workers reach every beanstalkd by service name, and beanstalkd take the largest job', () => {
    const postoffice = loaded.get('postoffice') as PostofficeConfig;
    const worker = loaded.get('worker') as ReturnType<typeof loadWorkerConfig>;
    const serverNames = (list: Array<{ host: string; port: number }>) => list.map((s) => `${s.host}:${s.port}`).sort();
    assert.deepEqual(serverNames(worker.beanstalk.servers), serverNames(postoffice.beanstalk.servers), 'workers watch every server the post office puts to');
    assert.equal(worker.beanstalk.tube, postoffice.beanstalk.tube);

    const command = services.beanstalkd!.command!;
    const flag = (name: string) => command[command.indexOf(name) + 1];
    for (const server of postoffice.beanstalk.servers) {
      assert.ok(services[server.host], `${server.host} is a compose service`);
      assert.equal(String(server.port), flag('-p'));
    }
    assert.ok(Number(flag('-z')) >= jobSizeFor(postoffice.limits.maxMessageBytes, postoffice.limits.maxRecipients), '-z fits the largest message');
    assert.ok(command.includes('-b'), 'binlog on');
    const binlogVolume = services.beanstalkd!.volumes!.find((v) => v.endsWith(`:${flag('-b')}`));
    assert.ok(binlogVolume && !binlogVolume.startsWith('./'), 'the binlog directory is a named volume');
  });

  it("runs the store the configs name: the postgres service, with the password file the tiers' store.passwordFile names", () => {
    const postgres = services.postgres!;
    assert.ok(postgres, 'a postgres service');
    for (const [name, , tier] of hedwigServices()) {
      if (tier === 'mailman') continue;
      const store = (loaded.get(name) as { store: { url: string; passwordFile?: string } }).store;
      const url = new URL(store.url);
      assert.equal(url.hostname, 'postgres', `${name}: store.url names the service`);
      assert.equal(url.port, '5432');
      assert.equal(url.username, 'hedwig');
      assert.equal(url.pathname, '/hedwig');
      const passwordFile = readFileSync(join(root, 'config', `${tier}.yaml`), 'utf8').match(/passwordFile: (\S+)/)?.[1];
      assert.equal(passwordFile, postgres.environment!.POSTGRES_PASSWORD_FILE, `${name}: the same password file`);
      assert.ok(mountedSource(postgres, passwordFile!), 'postgres mounts the secrets directory');
      assert.deepEqual((services[name] as { depends_on?: Record<string, unknown> }).depends_on?.postgres, { condition: 'service_healthy' });
    }
    assert.equal(postgres.ports, undefined, 'never published');
    assert.ok(postgres.volumes!.some((v) => v.endsWith(':/var/lib/postgresql/data') && !v.startsWith('./')), 'the data directory is a named volume');
    assert.equal((postgres as { init?: boolean }).init, true);
  });

  it('gives every directory a tier writes a named volume, which the image creates for its user (the containers are read-only)', () => {
    const writes: Record<Tier, (config: ReturnType<typeof loadTierConfig>) => string[]> = {
      mailman: (config) => [(config as ReturnType<typeof loadMailmanConfig>).spool.dir],
      worker: (config) => [(config as ReturnType<typeof loadWorkerConfig>).stateDir],
      postoffice: () => [],
    };
    const runtimeRuns = dockerfileInstructions().filter((i) => i.stage === 'runtime' && i.keyword === 'RUN').map((i) => i.args.split(/\s+/));
    for (const [name, service, tier] of hedwigServices()) {
      assert.equal(service.read_only, true, `${name} runs read-only`);
      for (const dir of writes[tier](loaded.get(name)!)) {
        assert.ok(dir.startsWith('/'), `${name}: ${dir} is an absolute path in the container, not one under the read-only /app`);
        const volume = (service.volumes ?? []).map((v) => v.split(':')).find(([, target]) => dir === target || dir.startsWith(`${target}/`));
        assert.ok(volume && !volume[0]!.startsWith('./') && compose.volumes && volume[0]! in compose.volumes, `${name}: ${dir} is on a named volume`);
        const mountPoint = volume[1]!;
        assert.ok(runtimeRuns.some((words) => words.includes('mkdir') && words.includes(mountPoint)), `Dockerfile runtime stage: mkdir ${mountPoint}`);
        assert.ok(runtimeRuns.some((words) => words.includes('chown') && words.includes('node:node') && words.includes(mountPoint)), `Dockerfile runtime stage: chown node:node ${mountPoint}, or a fresh volume is root's`);
      }
    }
  });

  it('gives every service a health check, and Docker more time to stop than each tier takes', () => {
    for (const [name, service] of Object.entries(services)) assert.ok(service.healthcheck?.test?.length, `${name} has a health check`);
    for (const [name, service] of hedwigServices()) {
      assert.deepEqual(service.healthcheck!.test, ['CMD', 'node', 'dist/deploy/healthcheck.js'], name);
      assert.ok(existsSync(join(root, sourceOfDist('dist/deploy/healthcheck.js'))));
      const grace = Number(/^(\d+)s$/.exec(service.stop_grace_period ?? '')?.[1]);
      const config = loaded.get(name)!;
      // Each tier's main.ts: 30 s for the post office and mailman, shutdownGraceMs + 10 s for the worker.
      const bound = 'shutdownGraceMs' in config ? config.shutdownGraceMs + 10_000 : 30_000;
      assert.ok(grace * 1000 > bound, `${name}: stop_grace_period ${service.stop_grace_period} must exceed ${bound} ms`);
    }
  });

  it('runs with Debian 12\'s docker-compose 1.29 too: no top-level name, beanstalkd under docker-init', () => {
    assert.equal((parseYaml(composeText) as Record<string, unknown>).name, undefined, "1.29: 'name' does not match any of the regexes: '^x-'");
    assert.equal((services.beanstalkd as { init?: boolean }).init, true, 'beanstalkd as PID 1 ignores SIGTERM');
  });

  it('lets the worker scale: replicas, no fixed container name, no published port', () => {
    assert.ok((services.worker!.deploy?.replicas ?? 0) >= 2);
    for (const [name, service] of Object.entries(services)) assert.equal(service.container_name, undefined, name);
  });

  describe('the beanstalkd health check', () => {
    let beanstalkd: BeanstalkdProcess;
    before(async () => {
      beanstalkd = await startBeanstalkd();
    });
    after(() => beanstalkd?.stop());

    /** The compose command, pointed at a test port (11300 may belong to someone else). */
    function healthCommand(port: number): string[] {
      const [kind, ...command] = services.beanstalkd!.healthcheck!.test;
      assert.equal(kind, 'CMD');
      assert.match(command.join(' '), /\/dev\/tcp\/127\.0\.0\.1\/11300/);
      return command.map((arg) => arg.replace('/11300', `/${port}`));
    }

    it('passes against a running beanstalkd', async () => {
      const [command, ...args] = healthCommand(beanstalkd.port);
      const result = await run(command!, args);
      assert.equal(result.code, 0, result.stderr);
    });

    it('fails when nothing answers on the port', async () => {
      const [command, ...args] = healthCommand(await freePort());
      assert.notEqual((await run(command!, args)).code, 0);
    });

    it('is the same command the beanstalkd image declares', () => {
      const declared = dockerfileInstructions().find((i) => i.stage === 'beanstalkd' && i.keyword === 'HEALTHCHECK');
      assert.ok(declared);
      assert.deepEqual(execArgs(declared.args.slice(declared.args.indexOf('CMD') + 3)), services.beanstalkd!.healthcheck!.test.slice(1));
    });
  });
});

describe('deploy/docker-compose.host-network.yml', () => {
  const hostNetworkText = readFileSync(join(root, 'deploy', 'docker-compose.host-network.yml'), 'utf8');
  const override = interpolateTree(parseYaml(hostNetworkText, { merge: true })) as { services: Record<string, Service & { network_mode?: string; depends_on?: unknown }> };
  /** Compose's merge of an override into a base service: mappings key by key, the rest replaced. */
  function merged(name: string): Service & Record<string, unknown> {
    const base = (services[name] ?? {}) as Record<string, unknown>;
    const top = (override.services[name] ?? {}) as Record<string, unknown>;
    const result: Record<string, unknown> = { ...base };
    for (const [key, value] of Object.entries(top)) {
      const was = base[key];
      result[key] = key === 'ports' ? [...((was as unknown[]) ?? []), ...(value as unknown[])] : was && typeof was === 'object' && !Array.isArray(was) && typeof value === 'object' && !Array.isArray(value) ? { ...was, ...(value as object) } : value;
    }
    return result as Service & Record<string, unknown>;
  }
  const workers = Object.keys(override.services).filter((name) => tierOf(merged(name)) === 'worker');

  it('puts every worker on the host network as a service of its own, each with its own ops port', () => {
    assert.deepEqual(workers, ['worker', 'worker-2']);
    const opsPorts = new Set<number>();
    for (const name of workers) {
      const service = merged(name);
      assert.equal(service.network_mode, 'host', name);
      assert.equal(service.deploy?.replicas ?? 1, 1, `${name}: replicas would share one ops port`);
      assert.equal(service.ports, undefined, `${name}: nothing to publish on the host network`);
      const config = loadWorkerConfig(configWithSecretsIn(mountedSource(service, configFileOf(service))!, fakeSecrets()), service.environment ?? {});
      assert.equal(config.ops.host, '127.0.0.1', `${name}: ops port on loopback`);
      opsPorts.add(config.ops.port);
      assert.deepEqual(config.beanstalk.servers, [{ host: '127.0.0.1', port: 11300 }], `${name}: no service names on the host network`);
    }
    assert.equal(opsPorts.size, workers.length, 'distinct ops ports');
  });

  it('publishes beanstalkd and postgres for them on loopback only, and points them there', () => {
    assert.deepEqual(merged('beanstalkd').ports, ['127.0.0.1:11300:11300']);
    assert.deepEqual(merged('postgres').ports, ['127.0.0.1:5432:5432']);
    for (const name of workers) assert.equal(merged(name).environment!.HEDWIG_WORKER__STORE__URL, 'postgres://hedwig@127.0.0.1:5432/hedwig', name);
    assert.equal(merged('postoffice').network_mode, undefined, 'the post office stays on the project network');
  });

  it("writes worker-2 out exactly as docker-compose.yml's worker, but for its environment", () => {
    const { environment: _a, deploy: _b, ...worker } = merged('worker');
    const { environment: _c, ...second } = override.services['worker-2'] as Record<string, unknown>;
    assert.deepEqual(second, worker);
  });
});

describe('Dockerfile', () => {
  const instructions = dockerfileInstructions();
  const stages = new Set(instructions.filter((i) => i.keyword === 'FROM').map((i) => i.stage));

  it('builds the targets docker-compose.yml asks for', () => {
    for (const [name, service] of Object.entries(services)) {
      if (service.build) assert.ok(stages.has(service.build.target ?? ''), `${name}: target ${service.build.target} is a Dockerfile stage`);
    }
  });

  it('copies only sources that exist and are in the build context, and from stages that exist', () => {
    const copies = instructions.filter((i) => i.keyword === 'COPY');
    assert.ok(copies.length > 0);
    for (const copy of copies) {
      const words = copy.args.split(/\s+/);
      const from = words.find((w) => w.startsWith('--from='))?.slice('--from='.length);
      const paths = words.filter((w) => !w.startsWith('--'));
      const sources = paths.slice(0, -1);
      if (from) {
        assert.ok(stages.has(from), `COPY --from=${from}: no such stage`);
        continue;
      }
      for (const source of sources) {
        assert.ok(existsSync(join(root, source)), `COPY ${source}: does not exist`);
        for (const file of filesUnder(source)) assert.ok(inBuildContext(file), `COPY ${source}: ${file} is excluded by .dockerignore`);
      }
    }
  });

  it('copies every source file the build compiles', () => {
    const copied = instructions.filter((i) => i.keyword === 'COPY' && !i.args.includes('--from=')).flatMap((i) => i.args.split(/\s+/).slice(0, -1));
    for (const entry of buildConfig.include) {
      assert.ok(copied.some((c) => c === entry || c.startsWith(`${entry}/`)), `${entry} (tsconfig.build.json include) is not copied into the build stage`);
    }
  });

  it('runs the runtime stage as a non-root user, with a default command and health check whose files are built', () => {
    const runtime = instructions.filter((i) => i.stage === 'runtime');
    const user = runtime.filter((i) => i.keyword === 'USER').pop();
    assert.ok(user && !['root', '0'].includes(user.args), 'USER is not root');
    for (const keyword of ['CMD', 'HEALTHCHECK']) {
      const instruction = runtime.find((i) => i.keyword === keyword);
      assert.ok(instruction, keyword);
      const args = execArgs(instruction.args.slice(instruction.args.indexOf('[')));
      const entry = args.find((a) => a.startsWith('dist/'))!;
      assert.ok(existsSync(join(root, sourceOfDist(entry))), `${keyword}: ${entry}`);
    }
    assert.ok(instructions.find((i) => i.stage === 'beanstalkd' && i.keyword === 'USER' && i.args !== 'root'), 'beanstalkd does not run as root');
  });
});

describe('deploy/hedwig-mailman.service', () => {
  const unit = readFileSync(join(root, 'deploy', 'hedwig-mailman.service'), 'utf8');
  const settings = (key: string) => [...unit.matchAll(new RegExp(`^${key}=(.*)$`, 'gm'))].map((m) => m[1]!);

  it('runs the compiled mailman with config/mailman.yaml installed at /etc/hedwig, hardened', () => {
    const [exec] = settings('ExecStart');
    assert.match(exec!, /^\/usr\/local\/bin\/node (?:--[a-z-]+(?:=\S+)? )*\/opt\/hedwig\/(dist\/mailman\/main\.js) --config \/etc\/hedwig\/mailman\.yaml$/);
    assert.ok(existsSync(join(root, sourceOfDist('dist/mailman/main.js'))));
    for (const hardening of ['DynamicUser=yes', 'ProtectSystem=strict', 'NoNewPrivileges=yes', 'PrivateTmp=yes', 'ProtectHome=yes', 'StateDirectory=hedwig-mailman']) {
      assert.ok(unit.includes(`\n${hardening}\n`), hardening);
    }
    assert.equal(settings('MemoryDenyWriteExecute').length, 0, "V8's JIT needs W+X memory");
  });

  it('loads config/mailman.yaml with the unit environment: spool in the state directory, key from a credential', () => {
    const credentials = mkdtempSync(join(tmpdir(), 'hedwig-credentials-'));
    const state = mkdtempSync(join(tmpdir(), 'hedwig-state-'));
    for (const credential of settings('LoadCredential')) writeFileSync(join(credentials, credential.split(':')[0]!), 'k3y'.repeat(22));
    // systemd specifiers: %d the credentials directory, %S the state root (/var/lib).
    const env = Object.fromEntries(settings('Environment').map((assignment) => {
      const eq = assignment.indexOf('=');
      return [assignment.slice(0, eq), assignment.slice(eq + 1).replaceAll('%d', credentials).replaceAll('%S', state)];
    }));
    const config = loadMailmanConfig(join(root, 'config', 'mailman.yaml'), env);
    assert.equal(config.spool.dir, join(state, 'hedwig-mailman', 'spool'));
    assert.equal(config.postoffice.key, 'k3y'.repeat(22));
    assert.equal(config.listen.host, '127.0.0.1', 'without Docker mailman listens on loopback');
    assert.equal(config.listen.port, 25);
    assert.ok(settings('AmbientCapabilities').includes('CAP_NET_BIND_SERVICE'), 'port 25 without root');
    const timeoutStop = Number(settings('TimeoutStopSec')[0]);
    assert.ok(timeoutStop > 30, 'systemd waits longer than mailman takes to stop');
  });

  it('passes systemd-analyze verify', async (t) => {
    const probe = await run('systemd-analyze', ['--version']);
    if (probe.code !== 0) {
      t.skip('systemd-analyze is not installed');
      return;
    }
    const copy = join(mkdtempSync(join(tmpdir(), 'hedwig-unit-')), 'hedwig-mailman.service');
    copyFileSync(join(root, 'deploy', 'hedwig-mailman.service'), copy);
    const result = await run('systemd-analyze', ['verify', copy]);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stderr.trim(), '', 'no warnings');
  });
});
