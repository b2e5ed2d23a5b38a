import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import type { Logger } from '../shared/logger.ts';
import { writeStateFile } from './state-file.ts';

/**
 * The MTA-STS policies a worker has fetched, kept in one JSON file under the worker's state
 * directory so that a restart does not forget them (RFC 8461 §5.1: the cached policy is what
 * protects the next delivery against a stripped TXT record). A small file rather than the
 * shared store: a policy is per worker knowledge that any worker can fetch again, it is read
 * on every delivery (so it lives in memory anyway) and written only when a policy changes.
 * Writes go through `writeStateFile` (a temporary file renamed over the old one), so a crash
 * leaves either the old or the new file. Several workers may share the directory: the last writer wins,
 * and what each loses is a fetch it can do again.
 */

export interface StoredPolicy {
  domain: string;
  id: string;
  mode: 'enforce' | 'testing' | 'none';
  mx: string[];
  maxAgeSeconds: number;
  fetchedAt: number;
  expiresAt: number;
  /** When the TXT id was last compared with this policy. */
  checkedAt: number;
}

export interface PolicyFileCache {
  get(domain: string): StoredPolicy | undefined;
  put(policy: Omit<StoredPolicy, 'checkedAt'>, checkedAt: number): void;
  touch(domain: string, checkedAt: number): void;
  /** How many policies it holds (metrics). */
  size(): number;
}

const storedPolicy = z.object({
  domain: z.string(),
  id: z.string(),
  mode: z.enum(['enforce', 'testing', 'none']),
  mx: z.array(z.string()),
  maxAgeSeconds: z.number(),
  fetchedAt: z.number(),
  expiresAt: z.number(),
  checkedAt: z.number(),
});
const cacheFile = z.object({ v: z.literal(1), policies: z.array(storedPolicy) });

const MAX_POLICIES = 10_000;
const FILE = 'mta-sts-policies.json';

/** `dir` undefined: memory only. A file that cannot be read or written is logged once and the cache lives on in memory. */
export function createPolicyFileCache(dir: string | undefined, logger: Logger, now: () => number = Date.now): PolicyFileCache {
  const policies = new Map<string, StoredPolicy>();
  const file = dir ? join(dir, FILE) : undefined;
  let writable = file !== undefined;

  if (file) {
    try {
      const parsed = cacheFile.parse(JSON.parse(readFileSync(file, 'utf8')));
      for (const policy of parsed.policies) if (policy.expiresAt > now()) policies.set(policy.domain, policy);
      logger.info({ event: 'mta_sts_cache_loaded', file, policies: policies.size }, 'MTA-STS policies loaded');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT') logger.warn({ event: 'mta_sts_cache_unreadable', file, reason: code ?? (err as Error).message }, 'MTA-STS policy cache ignored');
    }
  }

  function save(): void {
    if (!file || !writable) return;
    try {
      writeStateFile(dir!, file, JSON.stringify({ v: 1, policies: [...policies.values()] }));
    } catch (err) {
      writable = false;
      logger.warn({ event: 'mta_sts_cache_unwritable', file, reason: (err as NodeJS.ErrnoException).code ?? (err as Error).message }, 'MTA-STS policies are kept in memory only');
    }
  }

  return {
    get: (domain) => policies.get(domain),
    put(policy, checkedAt) {
      if (!policies.has(policy.domain) && policies.size >= MAX_POLICIES) {
        // Forget the policy checked longest ago: it belongs to a domain mail rarely goes to.
        const oldest = [...policies.values()].reduce((a, b) => (a.checkedAt <= b.checkedAt ? a : b));
        policies.delete(oldest.domain);
      }
      policies.set(policy.domain, { ...policy, checkedAt });
      save();
    },
    touch(domain, checkedAt) {
      const policy = policies.get(domain);
      if (policy) policy.checkedAt = checkedAt;
    },
    size: () => policies.size,
  };
}
