import { spawn, type ChildProcess } from 'node:child_process';
import { createSocket, type Socket } from 'node:dgram';
import { promises as dns } from 'node:dns';
import { isIPv4, isIPv6 } from 'node:net';
import { freePort, waitFor } from './ports.ts';

/**
 * A real DNS server (dnsmasq) on 127.0.0.1 with the records a test needs.
 *
 * Every name without a record answers NXDOMAIN (`--local=/#/`): nothing is ever
 * forwarded to a real resolver, so a test can never reach a real MX by accident.
 */
export interface DnsRecords {
  /** MX records: domain -> exchanges (dnsmasq `--mx-host`). */
  mx?: Record<string, Array<{ host: string; preference: number }>>;
  /** A/AAAA records: name -> addresses, IPv4 and IPv6 mixed (dnsmasq `--host-record`). */
  hosts?: Record<string, string[]>;
  /** Domains publishing a null MX, RFC 7505 `MX 0 .` (a raw `--dns-rr` record). */
  nullMx?: string[];
  /** Domains whose queries are answered SERVFAIL (forwarded to a stub that says so). */
  servfail?: string[];
  /** Domains whose queries are never answered, so resolvers time out. */
  unanswered?: string[];
  /** TXT records: name -> one value per record (split into 255-octet strings here). */
  txt?: Record<string, string[]>;
  /** PTR records: IP address -> host name (dnsmasq `--ptr-record`; `hosts` entries get theirs already). */
  ptr?: Record<string, string>;
}

/** The reverse-lookup name of an IPv4 address. */
function reverseName(ip: string): string {
  if (!isIPv4(ip)) throw new Error(`PTR records here take IPv4 addresses: ${ip}`);
  return `${ip.split('.').reverse().join('.')}.in-addr.arpa`;
}

export interface DnsServer {
  port: number;
  /** "127.0.0.1:PORT", ready for `Resolver.setServers` or the worker's `dns.servers`. */
  server: string;
  /** dnsmasq's log (queries included), for assertion messages. */
  log(): string;
  stop(): Promise<void>;
}

const host = '127.0.0.1';
const DNSMASQ = '/usr/sbin/dnsmasq';

/** RDATA of `MX 0 .`: preference 0 (two bytes) and the root name (one zero byte). */
const NULL_MX_RDATA = '000000';
const TYPE_MX = 15;
const TYPE_TXT = 16;

/** A UDP stub upstream: answers every query with SERVFAIL, or with nothing at all. */
async function startStubUpstream(mode: 'servfail' | 'silent'): Promise<{ port: number; close(): Promise<void> }> {
  const socket: Socket = createSocket('udp4');
  socket.on('message', (query, peer) => {
    if (mode === 'silent' || query.length < 12) return;
    const reply = Buffer.from(query);
    // Keep id and question; set QR and RA, RCODE 2 (SERVFAIL); no answers.
    reply[2] = 0x80 | (query[2]! & 0x79);
    reply[3] = 0x80 | 0x02;
    reply.writeUInt16BE(0, 6);
    reply.writeUInt16BE(0, 8);
    reply.writeUInt16BE(0, 10);
    socket.send(reply, peer.port, peer.address);
  });
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.bind(0, host, () => resolve());
  });
  return {
    port: socket.address().port,
    close: () => new Promise<void>((resolve) => socket.close(() => resolve())),
  };
}

function dnsmasqArgs(port: number, records: DnsRecords, upstreams: { servfail?: number; silent?: number }): string[] {
  const args = [
    '-k', // foreground
    '-C', '/dev/null',
    '--no-resolv',
    '--no-hosts',
    '--no-poll',
    '--pid-file=',
    '--bind-interfaces',
    `--listen-address=${host}`,
    `--port=${port}`,
    '--log-facility=-',
    '--log-queries',
    '--local=/#/',
    '--cache-size=0',
  ];
  // dnsmasq drops to "nobody" when started as root; that is harmless but needs the user to exist.
  if (process.getuid?.() === 0) args.push('--user=root');
  for (const [domain, exchanges] of Object.entries(records.mx ?? {})) {
    for (const { host: exchange, preference } of exchanges) args.push(`--mx-host=${domain},${exchange},${preference}`);
  }
  for (const [name, addresses] of Object.entries(records.hosts ?? {})) {
    // One --host-record takes at most one IPv4 and one IPv6 address; repeat it for more.
    const v4 = addresses.filter((a) => isIPv4(a));
    const v6 = addresses.filter((a) => isIPv6(a));
    const bad = addresses.filter((a) => !isIPv4(a) && !isIPv6(a));
    if (bad.length) throw new Error(`not IP addresses for ${name}: ${bad.join(', ')}`);
    for (let i = 0; i < Math.max(v4.length, v6.length); i++) {
      args.push(`--host-record=${[name, v4[i], v6[i]].filter(Boolean).join(',')}`);
    }
  }
  for (const domain of records.nullMx ?? []) args.push(`--dns-rr=${domain},${TYPE_MX},${NULL_MX_RDATA}`);
  // TXT as raw RDATA (length-prefixed strings of up to 255 octets): dnsmasq's --txt-record
  // splits its argument at every comma, which records such as TLS-RPT's `rua=a,b` contain.
  for (const [name, values] of Object.entries(records.txt ?? {})) {
    for (const value of values) {
      const bytes = Buffer.from(value, 'utf8');
      const strings: Buffer[] = [];
      for (let i = 0; i < Math.max(bytes.length, 1); i += 255) {
        const part = bytes.subarray(i, i + 255);
        strings.push(Buffer.concat([Buffer.from([part.length]), part]));
      }
      args.push(`--dns-rr=${name},${TYPE_TXT},${Buffer.concat(strings).toString('hex')}`);
    }
  }
  for (const [ip, name] of Object.entries(records.ptr ?? {})) args.push(`--ptr-record=${reverseName(ip)},${name}`);
  for (const domain of records.servfail ?? []) args.push(`--server=/${domain}/${host}#${upstreams.servfail}`);
  for (const domain of records.unanswered ?? []) args.push(`--server=/${domain}/${host}#${upstreams.silent}`);
  return args;
}

/** Starts dnsmasq and resolves once it answers a query. */
export async function startDns(records: DnsRecords = {}): Promise<DnsServer> {
  const servfail = records.servfail?.length ? await startStubUpstream('servfail') : undefined;
  const silent = records.unanswered?.length ? await startStubUpstream('silent') : undefined;
  const closeStubs = async () => {
    await servfail?.close();
    await silent?.close();
  };

  // freePort checks TCP only; dnsmasq also needs the UDP port, so retry on a clash.
  let lastError: unknown;
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort(host);
    try {
      const server = await launch(port, dnsmasqArgs(port, records, { servfail: servfail?.port, silent: silent?.port }));
      return {
        ...server,
        async stop() {
          await server.stop();
          await closeStubs();
        },
      };
    } catch (err) {
      lastError = err;
    }
  }
  await closeStubs();
  throw lastError;
}

async function launch(port: number, args: string[]): Promise<DnsServer> {
  const proc: ChildProcess = spawn(DNSMASQ, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  let running = true;
  const exited = new Promise<void>((resolve) => {
    proc.once('exit', () => {
      running = false;
      resolve();
    });
  });
  proc.once('error', (err) => {
    log += `spawn error: ${err.message}\n`;
  });
  proc.stderr!.on('data', (chunk: Buffer) => {
    log += chunk.toString();
  });

  const stop = async () => {
    if (running) proc.kill('SIGTERM');
    await exited;
  };

  const probe = new dns.Resolver({ timeout: 200, tries: 1 });
  probe.setServers([`${host}:${port}`]);
  try {
    const answered = waitFor(
      async () => {
        try {
          await probe.resolve4('ready.probe.invalid');
          return true;
        } catch (err) {
          // NXDOMAIN is an answer: the server is up.
          return (err as NodeJS.ErrnoException).code === 'ENOTFOUND';
        }
      },
      { timeoutMs: 10_000, intervalMs: 25, what: `dnsmasq on ${host}:${port}` },
    );
    const died = exited.then(() => {
      throw new Error(`dnsmasq exited: ${log.trim()}`);
    });
    await Promise.race([answered, died]);
    died.catch(() => {});
  } catch (err) {
    await stop();
    throw err;
  }
  return { port, server: `${host}:${port}`, log: () => log, stop };
}
