import { z } from 'zod';
import { resolveSecret } from '../secret.ts';

/**
 * The `store` block, the same in the post office's and the worker's config (and given to the
 * CLI as --store): where the shared state lives (idempotency keys, message state and history,
 * the suppression list). See shared/store/store.ts.
 *
 *   sqlite:PATH             the embedded default (node:sqlite, a file on this host; every
 *                           process on the host that names the same file shares it)
 *   sqlite::memory:         per process, gone at exit (tests)
 *   postgres://user@host:5432/db   PostgreSQL for production (several hosts share it)
 */
export const DEFAULT_STORE_URL = 'sqlite:data/hedwig.db';

export const storeConfigSchema = z
  .object({
    url: z
      .string()
      .min(1)
      .default(DEFAULT_STORE_URL)
      .refine((url) => /^sqlite:./.test(url) || /^postgres(ql)?:\/\/./.test(url), { message: 'expected sqlite:PATH, sqlite::memory: or postgres://user@host:port/database' }),
    /** The PostgreSQL password as a file (e.g. a Docker secret) instead of inside `url`. */
    passwordFile: z.string().min(1).optional(),
    /** A store operation slower than this counts as the store being unavailable (the relay goes on without it). */
    timeoutMs: z.number().int().positive().default(2000),
    /** How long delivered, bounced and deleted messages stay answerable (GET /v1/messages/:id, hedwig status). */
    historySeconds: z.number().int().positive().default(604_800),
  })
  .strict()
  .transform((store, ctx) => {
    if (store.passwordFile === undefined) return { ...store, password: undefined as string | undefined };
    if (!store.url.startsWith('postgres')) {
      ctx.addIssue({ code: 'custom', path: ['passwordFile'], message: 'only a postgres:// store takes a password' });
      return z.NEVER;
    }
    const password = resolveSecret({ inline: undefined, file: store.passwordFile }, 'password', ctx);
    if (password === undefined) return z.NEVER;
    return { ...store, password };
  })
  .prefault({});
export type StoreConfig = z.infer<typeof storeConfigSchema>;

/** A URL fit for logs and error messages: the password, if any, replaced. */
export function redactedUrl(url: string): string {
  return url.replace(/^(postgres(?:ql)?:\/\/[^:@/]*):[^@/]*@/, '$1:***@');
}

/**
 * The `suppression` block (post office and worker): recipients whose delivery failed
 * permanently because the address does not exist (shared/store/suppression-rules.ts) are not
 * sent to again for `ttlSeconds`. The worker adds entries; the post office checks every
 * submission against them, except for the hosts and sender domains listed as exempt.
 */
export const suppressionConfigSchema = z
  .object({
    enabled: z.boolean().default(true),
    ttlSeconds: z.number().int().positive().default(2_592_000),
    /** Post office: submissions from these hosts (fqdn) are never checked. */
    exemptHosts: z.array(z.string().min(1).transform((fqdn) => fqdn.toLowerCase())).default([]),
    /** Post office: submissions with a mailfrom in these domains are never checked. */
    exemptSenderDomains: z.array(z.string().min(1).transform((domain) => domain.toLowerCase())).default([]),
    /** Post office: where a refused recipient's `suppressed` webhook event goes (the workers' webhook tube). */
    webhookTube: z.string().min(1).max(200).default('hedwig-events'),
  })
  .strict()
  .prefault({});
export type SuppressionConfig = z.infer<typeof suppressionConfigSchema>;
