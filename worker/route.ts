import { promises as dns, type MxRecord } from 'node:dns';
import { isIP } from 'node:net';
import { z } from 'zod';
import { isValidDomain } from '../shared/address.ts';
import { errorCode } from '../shared/errors.ts';
import { parseHostPort } from '../shared/host-port.ts';
import { ownVerdict, type Verdict } from './classify.ts';
import { isPrivateAddress } from './private-address.ts';

/**
 * The first step of a delivery: where mail for a domain goes. A static route, else its MX
 * hosts (RFC 5321 §5.1), else the domain's own address records (implicit MX). Host names
 * are resolved through the same configured resolver, so the SMTP client only ever gets IP
 * addresses and never falls back to the system resolver.
 */

const DEFAULT_DNS_PORT = 53;

/** DNS servers are IP literals ('ip', 'ip:port', '[v6]:port'): a resolver cannot look up its own server. */
function isDnsServer(value: string): boolean {
  if (isIP(value) !== 0) return true;
  try {
    return isIP(parseHostPort(value, DEFAULT_DNS_PORT).host) !== 0;
  } catch {
    return false;
  }
}

/** `dns`: the resolver. */
export const dnsSchema = z
  .object({
    /** Empty: the system resolver's servers. */
    servers: z.array(z.string().refine(isDnsServer, { message: "expected 'ip' or 'ip:port'" })).default([]),
    timeoutMs: z.number().int().positive().default(5000),
    /** Upper bound for caching a route, whatever the records' TTL; 0 disables the cache. */
    cacheMaxSeconds: z.number().int().nonnegative().default(300),
  })
  .strict()
  .prefault({});

function isRoute(value: string): boolean {
  try {
    const { port } = parseHostPort(value, 25);
    return Number.isInteger(port) && port >= 1 && port <= 65535;
  } catch {
    return false;
  }
}

/** `routes`: domain -> 'host[:port]', like Postfix transport maps; bypasses MX (and the private-address rule). */
export const routesSchema = z
  .record(
    z.string().min(1),
    z.string().min(1).refine(isRoute, { error: (issue) => `not a host[:port]: ${String(issue.input)}` }),
  )
  .default({})
  .transform((routes) => Object.fromEntries(Object.entries(routes).map(([domain, route]) => [domain.toLowerCase(), route])));

export interface MxHost {
  /** MX host name (or the route's host, or the domain itself for an implicit MX). */
  name: string;
  preference: number;
  /** IPv4 first, then IPv6: many hosts (containers especially) have no working IPv6 route. */
  addresses: string[];
  port: number;
  /**
   * Where the host came from: the domain's MX records, the domain itself (implicit MX), or a
   * static route. MTA-STS and DANE apply to the first two only (transport-security.ts).
   */
  origin?: 'mx' | 'implicit' | 'route';
}

/** The route to a domain: its MX hosts in the order to try them, or why there is none. */
export type Route = { ok: true; hosts: MxHost[] } | { ok: false; verdict: Verdict };

export interface RouteSettings {
  /** 'ip' or 'ip:port'; empty means the system's resolvers. */
  servers: string[];
  timeoutMs: number;
  /** domain (lower case) -> 'host:port' */
  routes: Record<string, string>;
  smtpPort: number;
  allowPrivateAddresses: boolean;
  /** Upper bound for caching a route; 0 (the default) disables the cache. */
  cacheMaxSeconds?: number;
  /** For tests: the tie-breaking shuffle of equal preferences. */
  random?: () => number;
  now?: () => number;
}

export interface RouteResolver {
  routeFor(domain: string): Promise<Route>;
}

const MAX_CACHED_DOMAINS = 10_000;

type LookupFailure = 'nxdomain' | 'nodata' | 'badname' | 'temporary';

interface AddressLookup {
  addresses: string[];
  /** Smallest TTL among the answers, seconds. */
  ttl: number;
  failure?: { kind: LookupFailure; code: string };
}

function failureKind(err: unknown): LookupFailure {
  const code = errorCode(err);
  if (code === dns.NOTFOUND) return 'nxdomain';
  if (code === dns.NODATA) return 'nodata';
  // The resolver refused the name itself: asking again in an hour gives the same answer.
  if (code === dns.BADNAME) return 'badname';
  // SERVFAIL, TIMEOUT, REFUSED, CONNREFUSED, bad responses: someone else's outage, try later.
  return 'temporary';
}

const fail = {
  temporary: (message: string): Route => ({ ok: false, verdict: ownVerdict('deferred', message, { code: 451, enhanced: '4.4.3' }) }),
  noSuchDomain: (message: string): Route => ({ ok: false, verdict: ownVerdict('bounced', message, { code: 550, enhanced: '5.1.2' }) }),
  nullMx: (domain: string): Route => ({
    ok: false,
    verdict: ownVerdict('bounced', `${domain} does not accept mail (null MX, RFC 7505)`, { code: 556, enhanced: '5.1.10' }),
  }),
  unroutable: (message: string): Route => ({ ok: false, verdict: ownVerdict('bounced', message, { code: 554, enhanced: '5.4.4' }) }),
};

function shuffleEqualPreferences<T extends { preference: number }>(records: T[], random: () => number): T[] {
  const shuffled = [...records];
  for (let i = shuffled.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [shuffled[i], shuffled[j]] = [shuffled[j]!, shuffled[i]!];
  }
  // Array.prototype.sort is stable: the shuffle survives among equal preferences.
  return shuffled.sort((a, b) => a.preference - b.preference);
}

export function createRouteResolver(options: RouteSettings): RouteResolver {
  // c-ares doubles the timeout on each try: two tries of t and 2t fit in timeoutMs.
  const resolver = new dns.Resolver({ timeout: Math.max(50, Math.floor(options.timeoutMs / 3)), tries: 2 });
  if (options.servers.length > 0) resolver.setServers(options.servers);
  const random = options.random ?? Math.random;
  const now = options.now ?? Date.now;
  const cacheMaxMs = (options.cacheMaxSeconds ?? 0) * 1000;
  const cache = new Map<string, { route: Route; expiresAt: number }>();

  async function lookupAddresses(name: string): Promise<AddressLookup> {
    const [v4, v6] = await Promise.allSettled([resolver.resolve4(name, { ttl: true }), resolver.resolve6(name, { ttl: true })]);
    const answers = [...(v4.status === 'fulfilled' ? v4.value : []), ...(v6.status === 'fulfilled' ? v6.value : [])];
    if (answers.length > 0) {
      return { addresses: answers.map((a) => a.address), ttl: Math.min(...answers.map((a) => a.ttl)) };
    }
    const kinds = [v4, v6].map((r) => (r.status === 'rejected' ? { kind: failureKind(r.reason), code: errorCode(r.reason) ?? 'EUNKNOWN' } : undefined));
    const failure = kinds.find((k) => k?.kind === 'temporary') ?? kinds.find((k) => k?.kind === 'nxdomain') ?? { kind: 'nodata' as const, code: dns.NODATA };
    return { addresses: [], ttl: 0, failure: failure! };
  }

  /** Drops addresses the private-address rule forbids; fails when nothing is left. */
  function publicOnly(hosts: MxHost[], domain: string): Route {
    if (options.allowPrivateAddresses) return { ok: true, hosts };
    const allowed = hosts
      .map((host) => ({ ...host, addresses: host.addresses.filter((address) => !isPrivateAddress(address)) }))
      .filter((host) => host.addresses.length > 0);
    if (allowed.length === 0) return fail.unroutable(`refusing private address for ${domain} (${hosts.map((h) => h.addresses.join(' ')).join(', ')})`);
    return { ok: true, hosts: allowed };
  }

  async function viaStaticRoute(domain: string, route: string): Promise<Route> {
    const { host, port } = parseHostPort(route, options.smtpPort);
    // An operator-configured route may point at an internal relay: the private-address rule
    // guards against what DNS says, not against the configuration.
    if (isIP(host) !== 0) return { ok: true, hosts: [{ name: host, preference: 0, addresses: [host], port, origin: 'route' }] };
    const found = await lookupAddresses(host);
    if (found.failure) {
      if (found.failure.kind === 'temporary') return fail.temporary(`route for ${domain}: lookup of ${host} failed (${found.failure.code})`);
      return fail.unroutable(`route for ${domain}: ${host} has no address`);
    }
    return { ok: true, hosts: [{ name: host, preference: 0, addresses: found.addresses, port, origin: 'route' }] };
  }

  async function viaDns(domain: string): Promise<{ route: Route; ttl: number }> {
    let records: MxRecord[];
    try {
      records = await resolver.resolveMx(domain);
    } catch (err) {
      const kind = failureKind(err);
      if (kind === 'nxdomain') return { route: fail.noSuchDomain(`${domain}: no such domain (NXDOMAIN)`), ttl: 0 };
      if (kind === 'badname') return { route: fail.noSuchDomain(`${domain} is not a name DNS can look up (${errorCode(err)})`), ttl: 0 };
      if (kind === 'temporary') return { route: fail.temporary(`MX lookup for ${domain} failed (${errorCode(err)})`), ttl: 0 };
      // No MX records: the domain itself is the mail host (RFC 5321 §5.1 implicit MX).
      const implicit = await lookupAddresses(domain);
      if (implicit.failure?.kind === 'temporary') {
        return { route: fail.temporary(`address lookup for ${domain} failed (${implicit.failure.code})`), ttl: 0 };
      }
      if (implicit.failure) return { route: fail.noSuchDomain(`${domain} has neither MX nor address records`), ttl: 0 };
      const host: MxHost = { name: domain, preference: 0, addresses: implicit.addresses, port: options.smtpPort, origin: 'implicit' };
      return { route: publicOnly([host], domain), ttl: implicit.ttl };
    }

    if (records.some((r) => r.exchange === '' || r.exchange === '.')) return { route: fail.nullMx(domain), ttl: 0 };

    const ordered = shuffleEqualPreferences(
      records.map((r) => ({ name: r.exchange.toLowerCase(), preference: r.priority })),
      random,
    );
    const lookups = await Promise.all(ordered.map((mx) => lookupAddresses(mx.name)));
    const hosts: MxHost[] = [];
    const failures: string[] = [];
    let temporaryFailure = false;
    for (const [i, mx] of ordered.entries()) {
      const found = lookups[i]!;
      if (found.failure) {
        failures.push(`${mx.name}: ${found.failure.code}`);
        temporaryFailure ||= found.failure.kind === 'temporary';
      } else {
        hosts.push({ ...mx, addresses: found.addresses, port: options.smtpPort, origin: 'mx' });
      }
    }
    if (hosts.length === 0) {
      const detail = `no address for any MX host of ${domain} (${failures.join(', ')})`;
      return { route: temporaryFailure ? fail.temporary(detail) : fail.unroutable(detail), ttl: 0 };
    }
    const ttl = Math.min(...lookups.filter((l) => !l.failure).map((l) => l.ttl));
    return { route: publicOnly(hosts, domain), ttl };
  }

  return {
    async routeFor(rawDomain: string): Promise<Route> {
      const domain = rawDomain.toLowerCase();
      const staticRoute = options.routes[domain];
      if (staticRoute !== undefined) return viaStaticRoute(domain, staticRoute);
      // An address literal (user@[192.0.2.1]) or a name that is no domain can never resolve: bounce
      // at once rather than retry for days. The post office refuses literals at submission; jobs
      // queued before that still hold them.
      if (domain.startsWith('[')) return fail.noSuchDomain(`${domain}: hedwig does not deliver to address literals`);
      if (!isValidDomain(domain)) return fail.noSuchDomain(`${domain} is not a name DNS can look up`);

      const cached = cache.get(domain);
      if (cached && cached.expiresAt > now()) {
        const { route } = cached;
        // Re-shuffle so equal-preference hosts share the load while the answer is cached.
        return route.ok ? { ok: true, hosts: shuffleEqualPreferences(route.hosts, random) } : route;
      }
      cache.delete(domain);

      const { route, ttl } = await viaDns(domain);
      const keepMs = Math.min(ttl * 1000, cacheMaxMs);
      if (cache.size >= MAX_CACHED_DOMAINS) cache.clear();
      if (route.ok && keepMs > 0) cache.set(domain, { route, expiresAt: now() + keepMs });
      return route;
    },
  };
}
