import { randomInt } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { getServers } from 'node:dns';
import { connect } from 'node:net';
import dnsPacket, { type Answer, type DecodedPacket, type RecordType } from 'dns-packet';
import type { Failed } from '../shared/errors.ts';
import { parseHostPort } from '../shared/host-port.ts';

/**
 * DNS queries that say whether the answer was DNSSEC-validated: the AD bit of a validating
 * resolver (RFC 4035 §3.2.3, RFC 6840 §5.7), which DANE needs (RFC 7672 §2.1) and which
 * Postfix trusts in the same way. Node's dns module (c-ares) does not expose the header
 * flags of an answer, so this sends its own queries: dns-packet (a small, widely used
 * codec) builds and parses the packets, node:dgram and node:net carry them (UDP first,
 * TCP when the answer is truncated). The AD bit is only as trustworthy as the path to the
 * resolver: use a validating resolver on the worker's own host (127.0.0.1), as Postfix's
 * DANE documentation asks.
 */

export type Rcode = 'NOERROR' | 'NXDOMAIN' | 'SERVFAIL' | 'REFUSED' | 'FORMERR' | 'NOTIMP' | string;

export interface SecureAnswer {
  rcode: Rcode;
  /** The resolver validated the answer (AD set). */
  authenticated: boolean;
  /** Answers of the asked type (CNAMEs and RRSIGs left out). */
  records: Answer[];
  /** Smallest TTL among the answers (seconds), 0 without answers. */
  ttl: number;
}

export type SecureQueryResult = { ok: true; answer: SecureAnswer } | Failed<'DNS_TIMEOUT' | 'DNS_ERROR'>;

export interface SecureResolverOptions {
  /** 'ip' or 'ip:port'; empty: the system's resolvers (resolv.conf). */
  servers: string[];
  timeoutMs: number;
}

export interface SecureResolver {
  query(name: string, type: RecordType): Promise<SecureQueryResult>;
}

const EDNS_PAYLOAD = 1232;

function encodeQuery(id: number, name: string, type: RecordType): dnsPacket.Packet {
  return {
    type: 'query',
    id,
    // AD in a query asks for the AD bit in the answer (RFC 6840 §5.7); DO for DNSSEC records.
    flags: dnsPacket.RECURSION_DESIRED | dnsPacket.AUTHENTIC_DATA,
    questions: [{ type, name, class: 'IN' }],
    additionals: [{ type: 'OPT', name: '.', udpPayloadSize: EDNS_PAYLOAD, flags: dnsPacket.DNSSEC_OK } as unknown as Answer],
  };
}

function overUdp(server: { host: string; port: number }, query: Buffer, id: number, timeoutMs: number): Promise<DecodedPacket> {
  return new Promise((resolve, reject) => {
    const socket = createSocket(server.host.includes(':') ? 'udp6' : 'udp4');
    const timer = setTimeout(() => finish(Object.assign(new Error(`no answer from ${server.host}:${server.port} within ${timeoutMs} ms`), { code: 'DNS_TIMEOUT' })), timeoutMs);
    function finish(err: Error | null, packet?: DecodedPacket) {
      clearTimeout(timer);
      socket.close();
      if (err) reject(err);
      else resolve(packet!);
    }
    socket.on('error', (err) => finish(err));
    socket.on('message', (message) => {
      let packet: DecodedPacket;
      try {
        packet = dnsPacket.decode(message);
      } catch {
        return; // not a DNS answer: keep waiting for the real one
      }
      if (packet.id === id && packet.type === 'response') finish(null, packet);
    });
    socket.send(query, server.port, server.host);
  });
}

function overTcp(server: { host: string; port: number }, packet: dnsPacket.Packet, timeoutMs: number): Promise<DecodedPacket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: server.host, port: server.port });
    const chunks: Buffer[] = [];
    socket.setTimeout(timeoutMs, () => socket.destroy(Object.assign(new Error(`no TCP answer from ${server.host}:${server.port} within ${timeoutMs} ms`), { code: 'DNS_TIMEOUT' })));
    socket.on('connect', () => socket.end(dnsPacket.streamEncode(packet)));
    socket.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      const all = Buffer.concat(chunks);
      if (all.length >= 2 && all.length >= 2 + all.readUInt16BE(0)) {
        socket.destroy();
        try {
          resolve(dnsPacket.decode(all.subarray(2, 2 + all.readUInt16BE(0))));
        } catch (err) {
          reject(err);
        }
      }
    });
    socket.on('error', reject);
    socket.on('close', () => reject(Object.assign(new Error(`TCP connection to ${server.host}:${server.port} closed without an answer`), { code: 'DNS_ERROR' })));
  });
}

function toAnswer(packet: DecodedPacket, type: RecordType): SecureAnswer {
  const records = (packet.answers ?? []).filter((a) => a.type === type);
  const ttls = records.map((r) => ('ttl' in r && typeof r.ttl === 'number' ? r.ttl : 0));
  return { rcode: (packet as DecodedPacket & { rcode?: string }).rcode ?? 'NOERROR', authenticated: packet.flag_ad, records, ttl: ttls.length ? Math.min(...ttls) : 0 };
}

export function createSecureResolver(options: SecureResolverOptions): SecureResolver {
  const configured = options.servers.length > 0 ? options.servers : getServers();
  const servers = configured.map((s) => parseHostPort(s, 53));
  return {
    async query(name, type) {
      let lastError: unknown;
      for (const server of servers) {
        const id = randomInt(0, 65536);
        const packet = encodeQuery(id, name, type);
        try {
          let answer = await overUdp(server, dnsPacket.encode(packet), id, options.timeoutMs);
          if (answer.flag_tc) answer = await overTcp(server, packet, options.timeoutMs);
          return { ok: true, answer: toAnswer(answer, type) };
        } catch (err) {
          lastError = err;
        }
      }
      const code = (lastError as { code?: unknown })?.code === 'DNS_TIMEOUT' ? 'DNS_TIMEOUT' : 'DNS_ERROR';
      return { ok: false, code, message: `${type} lookup of ${name} failed: ${(lastError as Error)?.message ?? 'no DNS server'}` };
    },
  };
}
