import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { promises as dns } from 'node:dns';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, waitFor } from './ports.ts';

/**
 * A DNSSEC-validating resolver on loopback for DANE tests, from Debian's tools: zones
 * signed for the test with ldns-signzone (ldnsutils), served by nsd (authoritative) and
 * resolved by unbound, whose only trust anchor is the signed zone's DS record. Nothing is
 * forwarded anywhere else: names outside the zones get no answer.
 *
 *  - `signed`: validated answers (the AD bit);
 *  - `unsigned`: a zone unbound treats as insecure (no AD);
 *  - `tamper`: records changed after signing, so their signatures fail (bogus: SERVFAIL).
 */
export interface ZoneSpec {
  /** The zone's name, e.g. 'dane.test'. */
  name: string;
  /** Zone-file lines relative to the zone ($ORIGIN is the zone), e.g. 'mx IN A 127.0.0.21'. */
  records: string[];
}

export interface DnssecResolverOptions {
  signed: ZoneSpec;
  unsigned?: ZoneSpec;
  /** In the signed zone, after signing: owner name (relative) and type -> the new RDATA. */
  tamper?: Array<{ owner: string; type: string; rdata: string }>;
}

export interface DnssecResolver {
  /** "127.0.0.1:PORT" of unbound, for the worker's dns.servers. */
  server: string;
  log(): string;
  stop(): Promise<void>;
}

function run(command: string, args: string[], cwd: string): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(command, args, { cwd, timeout: 30_000 }, (err, stdout, stderr) => (err ? reject(new Error(`${command} ${args.join(' ')}: ${stderr || err.message}`)) : resolve(stdout.trim())));
  });
}

function zoneFile(zone: ZoneSpec): string {
  return [`$ORIGIN ${zone.name}.`, '$TTL 300', `@ IN SOA ns.${zone.name}. hostmaster.${zone.name}. 1 3600 600 86400 300`, `@ IN NS ns.${zone.name}.`, 'ns IN A 127.0.0.1', ...zone.records, ''].join('\n');
}

function startDaemon(command: string, args: string[], log: { text: string }): { child: ChildProcess; exited: Promise<void> } {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.on('data', (c: Buffer) => (log.text += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (log.text += c.toString()));
  child.once('error', (err) => (log.text += `spawn error: ${err.message}\n`));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return { child, exited };
}

export async function startDnssecResolver(options: DnssecResolverOptions): Promise<DnssecResolver> {
  const dir = mkdtempSync(join(tmpdir(), 'hedwig-dnssec-'));
  const signed = options.signed;
  writeFileSync(join(dir, `${signed.name}.zone`), zoneFile(signed));
  const ksk = await run('ldns-keygen', ['-a', 'ECDSAP256SHA256', '-k', signed.name], dir);
  const zsk = await run('ldns-keygen', ['-a', 'ECDSAP256SHA256', signed.name], dir);
  await run('ldns-signzone', ['-n', `${signed.name}.zone`, ksk, zsk], dir);
  const ds = await run('ldns-key2ds', ['-n', '-2', `${ksk}.key`], dir);
  if (options.tamper?.length) {
    const file = join(dir, `${signed.name}.zone.signed`);
    const lines = readFileSync(file, 'utf8').split('\n');
    for (const change of options.tamper) {
      const owner = `${change.owner}.${signed.name}.`;
      const index = lines.findIndex((line) => {
        const [name, , , type] = line.split(/\s+/);
        return name === owner && type === change.type;
      });
      if (index < 0) throw new Error(`no ${change.type} record at ${owner} to tamper with`);
      const [name, ttl, klass, type] = lines[index]!.split(/\s+/);
      lines[index] = `${name}\t${ttl}\t${klass}\t${type}\t${change.rdata}`;
    }
    writeFileSync(file, lines.join('\n'));
  }
  if (options.unsigned) writeFileSync(join(dir, `${options.unsigned.name}.zone`), zoneFile(options.unsigned));

  const authPort = await freePort('127.0.0.1');
  const zones = [`zone:\n  name: ${signed.name}\n  zonefile: ${signed.name}.zone.signed`, ...(options.unsigned ? [`zone:\n  name: ${options.unsigned.name}\n  zonefile: ${options.unsigned.name}.zone`] : [])];
  writeFileSync(
    join(dir, 'nsd.conf'),
    [
      'server:',
      `  ip-address: 127.0.0.1@${authPort}`,
      '  do-ip6: no',
      '  database: ""',
      `  zonesdir: "${dir}"`,
      `  zonelistfile: "${dir}/zone.list"`,
      `  xfrdfile: "${dir}/xfrd.state"`,
      `  pidfile: "${dir}/nsd.pid"`,
      '  username: ""',
      '  chroot: ""',
      '  server-count: 1',
      'remote-control:',
      '  control-enable: no',
      ...zones,
      '',
    ].join('\n'),
  );
  const resolverPort = await freePort('127.0.0.1');
  const stub = (name: string) => `stub-zone:\n  name: "${name}"\n  stub-addr: 127.0.0.1@${authPort}`;
  writeFileSync(
    join(dir, 'unbound.conf'),
    [
      'server:',
      `  interface: 127.0.0.1@${resolverPort}`,
      '  do-ip6: no',
      '  do-daemonize: no',
      '  username: ""',
      '  chroot: ""',
      `  directory: "${dir}"`,
      '  pidfile: ""',
      '  use-syslog: no',
      '  logfile: ""',
      '  verbosity: 1',
      '  val-log-level: 2',
      '  do-not-query-localhost: no',
      '  access-control: 127.0.0.0/8 allow',
      '  module-config: "validator iterator"',
      `  trust-anchor: "${ds}"`,
      // RFC 6761's .test is one of unbound's default local zones; here it is served by nsd.
      '  local-zone: "test." nodefault',
      ...(options.unsigned ? [`  domain-insecure: "${options.unsigned.name}"`] : []),
      '  qname-minimisation: no',
      '  harden-dnssec-stripped: yes',
      '  cache-max-ttl: 0',
      '  cache-max-negative-ttl: 0',
      stub(signed.name),
      ...(options.unsigned ? [stub(options.unsigned.name)] : []),
      'remote-control:',
      '  control-enable: no',
      '',
    ].join('\n'),
  );

  const log = { text: '' };
  const nsd = startDaemon('/usr/sbin/nsd', ['-d', '-c', join(dir, 'nsd.conf')], log);
  const unbound = startDaemon('/usr/sbin/unbound', ['-d', '-c', join(dir, 'unbound.conf')], log);
  const stop = async () => {
    for (const daemon of [unbound, nsd]) {
      if (daemon.child.exitCode === null && daemon.child.signalCode === null) daemon.child.kill('SIGTERM');
      await daemon.exited;
    }
  };
  const probe = new dns.Resolver({ timeout: 300, tries: 1 });
  probe.setServers([`127.0.0.1:${resolverPort}`]);
  try {
    await waitFor(async () => (await probe.resolve4(`ns.${signed.name}`)).length > 0, { timeoutMs: 15_000, intervalMs: 100, what: `unbound on 127.0.0.1:${resolverPort} answering for ${signed.name}` });
  } catch (err) {
    await stop();
    throw new Error(`${(err as Error).message}\n${log.text}`);
  }
  return { server: `127.0.0.1:${resolverPort}`, log: () => log.text, stop };
}
