import { request } from 'node:https';
import type { LookupFunction } from 'node:net';
import { z } from 'zod';
import { parsePolicy, resolvePolicy, validateMx } from 'mailauth/lib/mta-sts.js';
import type { Logger } from '../shared/logger.ts';
import type { PolicyFileCache, StoredPolicy } from './mta-sts-cache.ts';

/**
 * MTA-STS (RFC 8461): a recipient domain's `_mta-sts` TXT record names a policy id; the
 * policy itself is served at https://mta-sts.<domain>/.well-known/mta-sts.txt and says
 * which MX hosts are real (`mx:` patterns) and whether senders must insist on a verified
 * certificate (`mode: enforce`) or only report (`testing`).
 *
 * Parsing and MX matching are mailauth's (its lax mode, as receivers publish them), so the
 * RFC's grammar is not written again here. The HTTPS fetch is ours: mailauth's fetcher
 * always uses port 443 and Node's bundled CAs and resolves the policy host through the
 * system resolver, while the worker must use its configured resolver (and refuse private
 * addresses like for MX hosts), its trust anchors (`tls.caFile`) and, for tests, a port.
 *
 * Caching (RFC 8461 §5.1): a policy is used until `max_age` after it was fetched; a policy
 * used after `refreshSeconds` is re-checked in the background (TXT id, and refetched when
 * the id changed or the policy nears its end); fetched policies are kept in a file
 * (mta-sts-cache.ts), so a restarted worker does not forget an `enforce` policy, which is
 * what protects against an attacker who strips the TXT record. A TXT record whose policy
 * cannot be fetched, with no cached policy, means delivering as if there were no policy
 * (RFC 8461 §5.1) and reporting it (TLS-RPT `sts-policy-fetch-error`).
 */

/** `mtaSts`: MTA-STS towards recipient domains (the cache lives under `stateDir`). */
export const mtaStsSchema = z
  .object({
    enabled: z.boolean().default(true),
    /** 443 as RFC 8461 §3.3 says; another port for tests only. */
    port: z.number().int().min(1).max(65535).default(443),
    /** The whole policy fetch (RFC 8461 §3.3 suggests a minute at most). */
    fetchTimeoutMs: z.number().int().positive().default(10_000),
    /** A policy used after this long is re-checked in the background (TXT id, then the policy). */
    refreshSeconds: z.number().int().positive().default(86_400),
    /** How long a domain without a policy, or whose policy could not be fetched, is not asked again. */
    negativeCacheSeconds: z.number().int().nonnegative().default(3600),
  })
  .strict()
  .prefault({});
export type MtaStsConfig = z.infer<typeof mtaStsSchema>;

export type StsMode = 'enforce' | 'testing' | 'none';

export interface StsPolicy {
  domain: string;
  id: string;
  mode: StsMode;
  /** MX patterns, lower case (`mx.example.org`, `*.example.org`). */
  mx: string[];
  maxAgeSeconds: number;
  fetchedAt: number;
  expiresAt: number;
}

export type StsFailureType = 'sts-policy-fetch-error' | 'sts-policy-invalid' | 'sts-webpki-invalid';

export type StsLookup =
  | { kind: 'none' }
  | { kind: 'policy'; policy: StsPolicy }
  /** A TXT record, but no policy could be had (and none is cached): deliver as without MTA-STS, and report. */
  | { kind: 'failed'; resultType: StsFailureType; message: string };

export interface MtaStsOptions {
  /** TXT lookups (like dns.promises.Resolver#resolve(name, 'TXT')) through the worker's resolver. */
  resolveTxt: (name: string) => Promise<string[][]>;
  /** Address lookup of the policy host through the worker's resolver (refusing private addresses unless allowed). */
  lookup: LookupFunction;
  /** Trust anchors for the policy host's certificate; default Node's bundled CAs. */
  ca?: Buffer;
  /** 443 (RFC 8461 §3.3); another port only for tests. */
  port: number;
  fetchTimeoutMs: number;
  refreshSeconds: number;
  /** How long a domain without a policy (or whose policy could not be fetched) is not asked again. */
  negativeCacheSeconds: number;
  cache: PolicyFileCache;
  logger: Logger;
  now?: () => number;
}

export interface MtaSts {
  policyFor(domain: string): Promise<StsLookup>;
  /** Whether `mxName` is one of the policy's MX hosts (RFC 8461 §4.1). */
  mxMatches(policy: StsPolicy, mxName: string): boolean;
  /** Background refreshes still running (shutdown waits for them briefly). */
  idle(): Promise<void>;
}

/** RFC 8461 §3.3: policy bodies are small; refuse anything larger than 64 KiB. */
const MAX_POLICY_BYTES = 64 * 1024;
const MAX_NEGATIVE_ENTRIES = 10_000;

type FetchResult = { ok: true; body: string } | { ok: false; resultType: StsFailureType; message: string };

type FetchOptions = Pick<MtaStsOptions, 'lookup' | 'ca' | 'port' | 'fetchTimeoutMs'>;

function fetchPolicyBody(domain: string, options: FetchOptions): Promise<FetchResult> {
  const host = `mta-sts.${domain}`;
  return new Promise((resolve) => {
    let settled = false;
    const done = (result: FetchResult) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      req.destroy();
      resolve(result);
    };
    const req = request(
      {
        host,
        port: options.port,
        path: '/.well-known/mta-sts.txt',
        method: 'GET',
        servername: host,
        rejectUnauthorized: true,
        ...(options.ca ? { ca: options.ca } : {}),
        lookup: options.lookup,
        // A fresh connection each time: a kept one could have been verified for another name.
        agent: false,
        headers: { 'user-agent': 'hedwig (MTA-STS)' },
      },
      (res) => {
        // RFC 8461 §3.3: only 200, no redirects; the media type must be text/plain.
        if (res.statusCode !== 200) return done({ ok: false, resultType: 'sts-policy-fetch-error', message: `https://${host}/.well-known/mta-sts.txt answered HTTP ${res.statusCode}` });
        const type = (res.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
        if (type !== 'text/plain') return done({ ok: false, resultType: 'sts-policy-invalid', message: `the policy of ${domain} is served as ${type || 'no media type'}, not text/plain` });
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (chunk: Buffer) => {
          size += chunk.length;
          if (size > MAX_POLICY_BYTES) done({ ok: false, resultType: 'sts-policy-invalid', message: `the policy of ${domain} is larger than ${MAX_POLICY_BYTES} bytes` });
          else chunks.push(chunk);
        });
        res.on('end', () => done({ ok: true, body: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', (err) => done({ ok: false, resultType: 'sts-policy-fetch-error', message: err.message }));
      },
    );
    const timer = setTimeout(() => done({ ok: false, resultType: 'sts-policy-fetch-error', message: `no policy from ${host} within ${options.fetchTimeoutMs} ms` }), options.fetchTimeoutMs);
    req.on('error', (err: NodeJS.ErrnoException) => {
      // A certificate the trust anchors do not vouch for, or that does not name the policy host.
      const webpki = /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ALTNAME|unable to verify|certificate/i.test(`${err.code ?? ''} ${err.message}`);
      done({ ok: false, resultType: webpki ? 'sts-webpki-invalid' : 'sts-policy-fetch-error', message: `fetching the policy of ${domain} from ${host}: ${err.message}` });
    });
    req.end();
  });
}

/** Fetches and parses the policy of `domain` (whose TXT record named `id`); also used by `hedwig dns check`. */
export async function fetchStsPolicy(domain: string, id: string, options: FetchOptions, fetchedAt: number): Promise<{ ok: true; policy: StsPolicy } | { ok: false; resultType: StsFailureType; message: string }> {
  const fetched = await fetchPolicyBody(domain, options);
  if (!fetched.ok) return fetched;
  let parsed;
  try {
    parsed = parsePolicy(fetched.body);
  } catch (err) {
    return { ok: false, resultType: 'sts-policy-invalid', message: `the policy of ${domain} is invalid: ${(err as Error).message}` };
  }
  const maxAgeSeconds = Number(parsed.maxAge);
  return {
    ok: true,
    policy: { domain, id, mode: parsed.mode as StsMode, mx: (parsed.mx ?? []).map((m: string) => m.toLowerCase()), maxAgeSeconds, fetchedAt, expiresAt: fetchedAt + maxAgeSeconds * 1000 },
  };
}

/** The policy id of `domain`'s `_mta-sts` TXT record (mailauth's parser), false when there is none (or more than one). */
export async function stsPolicyId(domain: string, resolveTxt: (name: string) => Promise<string[][]>): Promise<{ ok: true; id: string | false } | { ok: false; message: string }> {
  try {
    const id = await resolvePolicy(domain, { resolver: async (name: string) => resolveTxt(name) });
    return { ok: true, id };
  } catch (err) {
    // RFC 8461 §3.1: more than one record means no policy.
    if ((err as { code?: unknown }).code === 'multi_sts_records') return { ok: true, id: false };
    return { ok: false, message: `TXT lookup of _mta-sts.${domain} failed: ${(err as Error).message}` };
  }
}

/** RFC 8461 §4.1 MX matching (mailauth's). */
export function stsMxMatches(policy: Pick<StsPolicy, 'mode' | 'mx'>, mxName: string): boolean {
  return validateMx(mxName, { mode: policy.mode, mx: policy.mx }).valid === true;
}

export function createMtaSts(options: MtaStsOptions): MtaSts {
  const now = options.now ?? Date.now;
  const log = options.logger.child({ component: 'mta-sts' });
  /** Domains with no policy (or an unfetchable one) until the given time. */
  const negative = new Map<string, { until: number; lookup: StsLookup }>();
  const inFlight = new Map<string, Promise<StsLookup>>();
  const refreshing = new Set<Promise<void>>();

  const toPolicy = (stored: StoredPolicy): StsPolicy => ({ ...stored });

  const txtId = (domain: string) => stsPolicyId(domain, options.resolveTxt);

  async function fetchAndStore(domain: string, id: string): Promise<StsLookup> {
    const fetched = await fetchStsPolicy(domain, id, options, now());
    if (!fetched.ok) return { kind: 'failed', resultType: fetched.resultType, message: fetched.message };
    const policy = fetched.policy;
    options.cache.put(policy, policy.fetchedAt);
    log.info({ event: 'mta_sts_policy', domain, id, mode: policy.mode, mx: policy.mx, maxAgeSeconds: policy.maxAgeSeconds }, 'MTA-STS policy fetched');
    return { kind: 'policy', policy };
  }

  /** First contact, or the cached policy expired: the delivery waits for the answer. */
  async function discover(domain: string): Promise<StsLookup> {
    const txt = await txtId(domain);
    let lookup: StsLookup;
    if (!txt.ok || txt.id === false) lookup = { kind: 'none' };
    else lookup = await fetchAndStore(domain, txt.id);
    if (lookup.kind === 'failed') log.warn({ event: 'mta_sts_fetch_failed', domain, resultType: lookup.resultType, reason: lookup.message }, 'MTA-STS policy not available; delivering without it');
    if (lookup.kind !== 'policy') {
      if (negative.size >= MAX_NEGATIVE_ENTRIES) negative.clear();
      negative.set(domain, { until: now() + options.negativeCacheSeconds * 1000, lookup });
    }
    return lookup;
  }

  /** A used policy older than refreshSeconds: check the TXT id and refetch when it changed or the policy nears its end. */
  async function refresh(stored: StoredPolicy): Promise<void> {
    options.cache.touch(stored.domain, now());
    const txt = await txtId(stored.domain);
    // No record, or DNS trouble: keep the cached policy until it expires (RFC 8461 §5.1; removal goes through mode none).
    if (!txt.ok || txt.id === false) return;
    const nearEnd = stored.expiresAt - now() < options.refreshSeconds * 2000;
    if (txt.id === stored.id && !nearEnd) return;
    const lookup = await fetchAndStore(stored.domain, txt.id);
    if (lookup.kind === 'failed') log.warn({ event: 'mta_sts_refresh_failed', domain: stored.domain, resultType: lookup.resultType, reason: lookup.message }, 'keeping the cached MTA-STS policy');
  }

  return {
    async policyFor(rawDomain) {
      const domain = rawDomain.toLowerCase();
      const stored = options.cache.get(domain);
      if (stored && stored.expiresAt > now()) {
        if (now() - stored.checkedAt > options.refreshSeconds * 1000) {
          const running = refresh(stored)
            .catch((err: unknown) => log.warn({ event: 'mta_sts_refresh_failed', domain, reason: (err as Error).message }))
            .finally(() => refreshing.delete(running));
          refreshing.add(running);
        }
        return stored.mode === 'none' ? { kind: 'none' } : { kind: 'policy', policy: toPolicy(stored) };
      }
      const known = negative.get(domain);
      if (known && known.until > now()) return known.lookup;
      negative.delete(domain);
      let pending = inFlight.get(domain);
      if (!pending) {
        pending = discover(domain).finally(() => inFlight.delete(domain));
        inFlight.set(domain, pending);
      }
      const lookup = await pending;
      return lookup.kind === 'policy' && lookup.policy.mode === 'none' ? { kind: 'none' } : lookup;
    },

    mxMatches: stsMxMatches,

    async idle() {
      await Promise.allSettled([...refreshing, ...inFlight.values()]);
    },
  };
}

/** RFC 8460 §4.4 `policy-string` of an STS policy: its lines, as published. */
export function stsPolicyStrings(policy: StsPolicy): string[] {
  return ['version: STSv1', `mode: ${policy.mode}`, ...policy.mx.map((mx) => `mx: ${mx}`), `max_age: ${policy.maxAgeSeconds}`];
}
