import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { z } from 'zod';
import { domainOf, isValidDomain } from '../shared/address.ts';
import { hostPortSchema } from '../shared/config.ts';
import type { WorkerConfig } from './config.ts';
import { loadDkimPrivateKey, type DkimKey } from './dkim.ts';
import type { LimitSettings } from './limits.ts';
import type { OutgoingSettings } from './outgoing.ts';
import type { PoolSettings } from './pool.ts';
import type { SourceSettings } from './source-ip.ts';
import { TLS_MODES, type TlsPolicySettings } from './tls-policy.ts';

/**
 * Config schemas for the worker's sending identity and traffic shaping (DKIM, headers,
 * TLS policy, source addresses, connection reuse, per-destination limits). worker/config.ts
 * puts them under their keys; they live here to keep that file about the whole.
 */

const domainKey = z
  .string()
  .transform((value) => value.toLowerCase())
  .refine(isValidDomain, { message: 'not a domain' });

const selector = z.string().regex(/^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$/, {
  message: 'a DKIM selector: letters, digits, hyphens (dot-separated labels)',
});

/**
 * `dkim.<domain>: {selector, keyFile}` (what `key-generator.ts --dkim` prints), or a list of
 * two such entries, an RSA and an Ed25519 key (RFC 8463 §4 asks signers to sign with both
 * while verifiers catch up). Keys are read and checked here, so a missing, broken or
 * unsupported key stops start-up with the config error naming the key.
 */
const dkimEntry = z.object({ selector, keyFile: z.string().min(1) }).strict();

export const dkimSchema = z
  .record(domainKey, z.union([dkimEntry.transform((entry) => [entry]), z.array(dkimEntry).min(1).max(2)]))
  .default({})
  .transform((entries, ctx): Map<string, DkimKey[]> => {
    const keys = new Map<string, DkimKey[]>();
    for (const [domain, list] of Object.entries(entries)) {
      const loadedKeys: DkimKey[] = [];
      for (const [i, entry] of list.entries()) {
        const path = list.length > 1 ? [domain, i, 'keyFile'] : [domain, 'keyFile'];
        const loaded = loadDkimPrivateKey(entry.keyFile);
        if (!loaded.ok) {
          ctx.addIssue({ code: 'custom', path, message: loaded.message });
          continue;
        }
        if (loadedKeys.some((k) => k.algorithm === loaded.algorithm)) {
          ctx.addIssue({ code: 'custom', path, message: `a second ${loaded.algorithm} key for ${domain}; give one RSA and one Ed25519 key at most` });
          continue;
        }
        if (loadedKeys.some((k) => k.selector === entry.selector)) {
          ctx.addIssue({ code: 'custom', path: path.slice(0, -1).concat('selector'), message: `selector ${entry.selector} is used twice for ${domain}` });
          continue;
        }
        loadedKeys.push({ domain, selector: entry.selector, algorithm: loaded.algorithm, privateKey: loaded.key });
      }
      keys.set(domain, loadedKeys);
    }
    return keys;
  });

export const headersSchema = z
  .object({
    /** Add a Received trace field (it names the submitting host's fqdn). */
    received: z.boolean().default(false),
  })
  .strict()
  .prefault({});

/** The deliverer's identity settings from the validated config (server.ts spreads them into createDeliverer). */
export function outgoingSettingsFrom(config: Pick<WorkerConfig, 'ehloName' | 'dkim' | 'headers' | 'bounces'>): OutgoingSettings {
  const noticesFrom = config.bounces.from ?? `MAILER-DAEMON@${config.ehloName}`;
  return { hostname: config.ehloName, dkim: config.dkim, nullSenderDomain: domainOf(noticesFrom), received: config.headers.received };
}

const ipLiteral = z.string().refine((value) => isIP(value) !== 0, { message: 'expected an IP address' });
const hostName = z.string().regex(/^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/, {
  message: 'expected a host name',
});

/** TLS towards receiving servers (worker/tls-policy.ts). */
export const tlsSchema = z
  .object({
    policy: z.enum(TLS_MODES).default('may'),
    /** Recipient domain -> none | may | encrypt | verify. */
    domains: z.record(domainKey, z.enum(TLS_MODES)).default({}),
    /** PEM trust anchors for `verify`; default: Node's bundled Mozilla CA list. */
    caFile: z.string().min(1).optional(),
    brokenHostMemorySeconds: z.number().int().nonnegative().default(3600),
  })
  .strict()
  .transform((tls, ctx) => {
    let ca: Buffer | undefined;
    if (tls.caFile) {
      try {
        ca = readFileSync(tls.caFile);
      } catch (err) {
        ctx.addIssue({ code: 'custom', path: ['caFile'], message: `cannot read ${tls.caFile}: ${(err as NodeJS.ErrnoException).code ?? String(err)}` });
        return z.NEVER;
      }
      if (!ca.includes('-----BEGIN CERTIFICATE-----')) {
        ctx.addIssue({ code: 'custom', path: ['caFile'], message: `${tls.caFile} holds no PEM certificate` });
        return z.NEVER;
      }
    }
    return { ...tls, ca };
  })
  .prefault({});

/** Local addresses to send from, each with its EHLO name (worker/source-ip.ts). */
export const sourceSchema = z
  .object({
    addresses: z.array(z.object({ address: ipLiteral, ehloName: hostName, weight: z.number().int().min(1).max(1000).default(1) }).strict()).default([]),
    selection: z.enum(['round-robin', 'weighted']).default('round-robin'),
    /** Sender domain -> the pool addresses its mail leaves from. */
    senderDomains: z.record(domainKey, z.array(ipLiteral).min(1)).default({}),
  })
  .strict()
  .superRefine((source, ctx) => {
    const pool = new Set<string>();
    for (const [i, entry] of source.addresses.entries()) {
      if (pool.has(entry.address)) ctx.addIssue({ code: 'custom', path: ['addresses', i, 'address'], message: `${entry.address} is listed twice` });
      pool.add(entry.address);
    }
    for (const [domain, addresses] of Object.entries(source.senderDomains)) {
      for (const [i, address] of addresses.entries()) {
        if (!pool.has(address)) ctx.addIssue({ code: 'custom', path: ['senderDomains', domain, i], message: `${address} is not in source.addresses` });
      }
    }
  })
  .prefault({});

/** Connection reuse (worker/pool.ts). */
export const connectionsSchema = z
  .object({
    maxMessagesPerConnection: z.number().int().min(1).default(100),
    /** How long a connection waits unused for the next message; 0 disables reuse. Postfix's smtp_connection_cache_time_limit is 2 s. */
    idleTimeoutMs: z.number().int().nonnegative().default(2000),
  })
  .strict()
  .prefault({});

const destinationLimit = z
  .object({
    maxConnections: z.number().int().min(1).optional(),
    messagesPerMinute: z.number().int().min(1).optional(),
  })
  .strict();

/** Per-destination limits shared by all workers through beanstalkd (worker/limits.ts). */
export const limitsSchema = z
  .object({
    /** beanstalkd that holds the shared counters, `host[:port]`; default: the first of beanstalk.servers. Every worker must use the same one. */
    server: hostPortSchema(11300).optional(),
    /** Applies to every destination domain without its own entry or group. */
    default: destinationLimit.prefault({}),
    domains: z.record(domainKey, destinationLimit).default({}),
    groups: z
      .record(
        z.string().regex(/^[A-Za-z0-9_.-]{1,100}$/, { message: 'a group name: letters, digits, _ . -' }),
        destinationLimit.extend({ domains: z.array(domainKey).default([]), mxSuffixes: z.array(z.string().min(1)).default([]) }),
      )
      .default({}),
    windowSeconds: z.number().int().min(1).max(3600).default(60),
    maxWaitMs: z.number().int().nonnegative().default(10_000),
    backoffSeconds: z.number().int().nonnegative().default(60),
  })
  .strict()
  .prefault({});

type ShapingConfig = Pick<WorkerConfig, 'ehloName' | 'tls' | 'source' | 'connections' | 'limits' | 'beanstalk'>;

/** The deliverer's TLS, source address and reuse settings from the validated config. */
export function shapingSettingsFrom(config: ShapingConfig): { tls: TlsPolicySettings; source: SourceSettings; connections: PoolSettings } {
  return {
    tls: { policy: config.tls.policy, domains: config.tls.domains, ...(config.tls.ca ? { ca: config.tls.ca } : {}), brokenHostMemoryMs: config.tls.brokenHostMemorySeconds * 1000 },
    source: config.source,
    connections: config.connections,
  };
}

export function limitSettingsFrom(config: ShapingConfig): LimitSettings {
  const { server, ...rest } = config.limits;
  return { ...rest, server: server ?? config.beanstalk.servers[0] };
}
