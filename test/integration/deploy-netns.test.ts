/**
 * mailman published by Docker on the docker0 address is no open relay to the LAN.
 *
 * Docker's published port is a DNAT rule that keeps the client's source address. The test
 * builds that situation in network namespaces of its own (nothing outside them is touched):
 *
 *   lan        192.168.77.2 ── 192.168.77.1  host  172.17.0.1/16 ── 172.17.0.2  container
 *   (routes the docker subnets                 │   (docker0)          (on the default bridge)
 *    through the host)                         │
 *                                        172.30.25.1/24 ── 172.30.25.2:2525  mailman
 *                                        (the compose network)
 *
 * with the host namespace forwarding and DNATing 172.17.0.1:25 to mailman as Docker does, and
 * mailman started with the allowedNetworks docker-compose.yml gives it. A client on the default
 * bridge is accepted; the LAN neighbour reaches mailman with its own address and is refused with
 * 554 5.7.1. Then the README's DOCKER-USER rules, applied in the host namespace, keep the LAN
 * neighbour from reaching port 25 at all, and the container still gets through.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { parse as parseYaml, stringify } from 'yaml';
import { run } from '../helpers/docker-engine.ts';
import { waitFor } from '../helpers/ports.ts';

const root = resolve(import.meta.dirname, '..', '..');
const id = `hw${process.pid}`;
const NS = { host: `${id}h`, lan: `${id}l`, container: `${id}c`, mailman: `${id}m` };

/** Compose's `${VAR:-default}` with nothing set: the defaults an operator gets. */
function composeDefaults(value: string): string {
  return value.replace(/\$\{[A-Z0-9_]+:-([^}]*)\}/g, '$1');
}

function composeAllowedNetworks(): string[] {
  const compose = parseYaml(readFileSync(join(root, 'docker-compose.yml'), 'utf8'), { merge: true }) as { services: Record<string, { environment?: Record<string, string> }> };
  return parseYaml(composeDefaults(compose.services.mailman!.environment!.HEDWIG_MAILMAN__ALLOWED_NETWORKS!)) as string[];
}

/** The DOCKER-USER rules the README ships, as written there. */
function readmeDockerUserRules(): string[] {
  return [...readFileSync(join(root, 'README.md'), 'utf8').matchAll(/^iptables -I DOCKER-USER .+$/gm)].map((m) => m[0]);
}

async function sh(ns: string | undefined, command: string[]): Promise<void> {
  const [cmd, ...args] = ns ? ['ip', 'netns', 'exec', ns, ...command] : command;
  const result = await run(cmd!, args, { timeoutMs: 15_000 });
  assert.equal(result.code, 0, `${command.join(' ')}: ${result.stderr}`);
}

/** swaks from inside a namespace to the docker0 address, port 25. */
function swaksFrom(ns: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return run('ip', ['netns', 'exec', ns, 'swaks', '--server', '172.17.0.1', '--port', '25', '--from', 'load@example.com', '--to', 'bob@example.org',
    '--timeout', '4', '--header', 'Subject: netns', '--body', 'hello'], { timeoutMs: 30_000 });
}

describe('mailman behind Docker-style DNAT, in network namespaces of its own', { timeout: 120_000 }, () => {
  let skipReason: string | undefined;
  let mailman: ChildProcess | undefined;
  let output = '';
  const made: string[] = [];
  let dir = '';

  function skip(t: TestContext): boolean {
    if (!skipReason) return false;
    t.skip(skipReason);
    return true;
  }

  before(async () => {
    if (process.getuid?.() !== 0) skipReason = 'network namespaces need root';
    else if (!existsSync('/usr/sbin/iptables')) skipReason = 'iptables is not installed (scripts/install-debian-deps.sh)';
    else if (!existsSync('/usr/bin/swaks')) skipReason = 'swaks is not installed (scripts/install-debian-deps.sh)';
    if (skipReason) return;

    for (const ns of Object.values(NS)) {
      await sh(undefined, ['ip', 'netns', 'add', ns]);
      made.push(ns);
      await sh(ns, ['ip', 'link', 'set', 'lo', 'up']);
    }
    const link = async (peer: string, hostAddress: string, peerAddress: string, routes: string[][]) => {
      const a = `${peer}a`;
      const b = `${peer}b`;
      await sh(undefined, ['ip', 'link', 'add', a, 'netns', NS.host, 'type', 'veth', 'peer', 'name', b, 'netns', peer]);
      await sh(NS.host, ['ip', 'addr', 'add', hostAddress, 'dev', a]);
      await sh(NS.host, ['ip', 'link', 'set', a, 'up']);
      await sh(peer, ['ip', 'addr', 'add', peerAddress, 'dev', b]);
      await sh(peer, ['ip', 'link', 'set', b, 'up']);
      for (const route of routes) await sh(peer, ['ip', 'route', 'add', ...route]);
    };
    await link(NS.lan, '192.168.77.1/24', '192.168.77.2/24', [['172.17.0.0/16', 'via', '192.168.77.1'], ['172.30.25.0/24', 'via', '192.168.77.1']]);
    await link(NS.container, '172.17.0.1/16', '172.17.0.2/16', [['default', 'via', '172.17.0.1']]);
    await link(NS.mailman, '172.30.25.1/24', '172.30.25.2/24', [['default', 'via', '172.30.25.1']]);
    // What Docker sets up for `ports: ["172.17.0.1:25:2525"]`, in the host namespace only.
    await sh(NS.host, ['sysctl', '-q', '-w', 'net.ipv4.ip_forward=1']);
    await sh(NS.host, ['iptables', '-t', 'nat', '-A', 'PREROUTING', '-d', '172.17.0.1', '-p', 'tcp', '--dport', '25', '-j', 'DNAT', '--to-destination', '172.30.25.2:2525']);
    await sh(NS.host, ['iptables', '-N', 'DOCKER-USER']);
    await sh(NS.host, ['iptables', '-A', 'FORWARD', '-j', 'DOCKER-USER']);

    dir = mkdtempSync(join(tmpdir(), 'hedwig-netns-'));
    const config = join(dir, 'mailman.yaml');
    writeFileSync(config, stringify({
      listen: { host: '0.0.0.0', port: 2525 },
      allowedNetworks: composeAllowedNetworks(),
      postoffice: { url: 'http://127.0.0.1:9', fqdn: 'app1.example.com', key: 'k'.repeat(40) },
      spool: { dir: join(dir, 'spool') },
      ops: { host: '127.0.0.1', port: 9102 },
    }));
    mailman = spawn('ip', ['netns', 'exec', NS.mailman, process.execPath, '--import', 'tsx', join(root, 'mailman', 'main.ts'), '--config', config], {
      cwd: root,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { PATH: process.env.PATH, LOG_LEVEL: 'info' },
    });
    mailman.stdout!.on('data', (c: Buffer) => (output += c.toString()));
    mailman.stderr!.on('data', (c: Buffer) => (output += c.toString()));
    await waitFor(() => output.includes('"event":"ready"') || mailman!.exitCode !== null, { timeoutMs: 30_000, what: 'mailman to start in its namespace' });
    assert.equal(mailman.exitCode, null, output);
  });

  after(async () => {
    if (mailman && mailman.exitCode === null) {
      mailman.kill('SIGTERM');
      await new Promise((done) => mailman!.once('exit', done));
    }
    for (const ns of made.reverse()) await run('ip', ['netns', 'del', ns], { timeoutMs: 15_000 });
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('allows only loopback, the docker0 subnet and the compose network (never whole private ranges)', (t) => {
    if (skip(t)) return;
    assert.deepEqual(composeAllowedNetworks(), ['127.0.0.0/8', '::1/128', '172.17.0.0/16', '172.30.25.0/24']);
  });

  it('accepts a container on the default bridge through the published docker0 port', async (t) => {
    if (skip(t)) return;
    const sent = await swaksFrom(NS.container);
    assert.equal(sent.code, 0, sent.stdout + sent.stderr);
    assert.match(sent.stdout, /<-\s+250 /);
    assert.match(output, /"event":"accepted"/);
  });

  it("accepts what docker-proxy carries: connections from the compose network's gateway (the host)", async (t) => {
    if (skip(t)) return;
    // Docker relays its containers' connections to a published port through docker-proxy on
    // the host, which connects to mailman from the gateway of mailman's network.
    const sent = await run('ip', ['netns', 'exec', NS.host, 'swaks', '--server', '172.30.25.2', '--port', '2525', '--from', 'load@example.com', '--to', 'bob@example.org',
      '--timeout', '4', '--header', 'Subject: proxy', '--body', 'hello'], { timeoutMs: 30_000 });
    assert.equal(sent.code, 0, sent.stdout + sent.stderr);
    assert.match(sent.stdout, /<-\s+250 /);
  });

  it('refuses the LAN neighbour, which arrives with its own address through the DNAT, with 554 5.7.1', async (t) => {
    if (skip(t)) return;
    const sent = await swaksFrom(NS.lan);
    assert.notEqual(sent.code, 0);
    assert.match(sent.stdout, /<\*\*\s+554 5\.7\.1 /, sent.stdout + sent.stderr);
    assert.match(output, /"remoteAddress":"192\.168\.77\.2"/, 'mailman saw the neighbour\'s own address');
  });

  it("with the README's DOCKER-USER rules, the LAN neighbour does not reach port 25 at all, the container still does", async (t) => {
    if (skip(t)) return;
    const rules = readmeDockerUserRules();
    assert.ok(rules.length >= 2, 'the README ships the rules');
    for (const rule of rules) await sh(NS.host, rule.split(' '));
    const lan = await swaksFrom(NS.lan);
    assert.notEqual(lan.code, 0);
    assert.doesNotMatch(lan.stdout, /<\*\*\s+554 /, 'no SMTP answer: the connection is dropped before mailman');
    assert.match(lan.stdout + lan.stderr, /timed out|Timeout|timeout/i, lan.stdout + lan.stderr);
    const container = await swaksFrom(NS.container);
    assert.equal(container.code, 0, container.stdout + container.stderr);
  });
});
