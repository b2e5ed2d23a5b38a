import { HedwigError } from './errors.ts';

/**
 * `host:port` as hedwig writes and reads it everywhere (config values, log fields, metric
 * labels, job references): an IPv6 literal in brackets, `[::1]:11300`, as in URLs (RFC 3986),
 * so the last colon always separates the port.
 */
export interface HostPort {
  host: string;
  port: number;
}

export function formatHostPort(address: HostPort): string {
  return address.host.includes(':') ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
}

/** `host`, `host:port`, `[v6]` or `[v6]:port`; the port is not range-checked here (hostPortSchema does). */
export function parseHostPort(value: string, defaultPort: number): HostPort {
  const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(value) ?? /^([^:]+)(?::(\d+))?$/.exec(value);
  if (!m) throw new HedwigError('BAD_HOSTPORT', `not a host[:port]: ${value}`);
  return { host: m[1]!, port: m[2] ? Number(m[2]) : defaultPort };
}
