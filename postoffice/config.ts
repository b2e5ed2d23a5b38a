import { z } from 'zod';
import { hostPortSchema, loadConfig, resolveSecret } from '../shared/config.ts';
import { isValidDomain } from '../shared/address.ts';
import { JOB_TTR_SECONDS, TUBE } from '../shared/job.ts';
import { statusConfigSchema } from './status.ts';

export const MIN_KEY_LENGTH = 32;
const DEFAULT_BEANSTALK_PORT = 11300;

const senderDomain = z
  .string()
  .transform((value) => value.toLowerCase())
  .refine((value) => value === '*' || isValidDomain(value), { message: "expected a domain or '*'" });

/**
 * A client host allowed to submit mail. The key is resolved here (inline or from a file,
 * e.g. a Docker secret) so the rest of the post office only ever sees `key`.
 */
const clientSchema = z
  .object({
    key: z.string().optional(),
    keyFile: z.string().optional(),
    senderDomains: z.array(senderDomain).min(1),
  })
  .strict()
  .transform((client, ctx) => {
    const key = resolveSecret({ inline: client.key, file: client.keyFile }, 'key', ctx, { minLength: MIN_KEY_LENGTH });
    if (key === undefined) return z.NEVER;
    return { key, senderDomains: client.senderDomains };
  });

export const postofficeConfigSchema = z
  .object({
    listen: z
      .object({
        host: z.string().min(1).default('127.0.0.1'),
        port: z.number().int().min(0).max(65535).default(8025),
      })
      .strict()
      .prefault({}),
    beanstalk: z
      .object({
        servers: z.array(hostPortSchema(DEFAULT_BEANSTALK_PORT)).min(1).prefault(['127.0.0.1:11300']),
        tube: z.string().min(1).max(200).default(TUBE.outbound),
        ttrSeconds: z.number().int().positive().default(JOB_TTR_SECONDS),
      })
      .strict()
      .prefault({}),
    limits: z
      .object({
        maxMessageBytes: z.number().int().positive().default(10_485_760),
        maxRecipients: z.number().int().positive().default(100),
      })
      .strict()
      .prefault({}),
    signatureWindowSeconds: z.number().int().positive().default(300),
    idempotencyTtlSeconds: z.number().int().positive().default(86_400),
    /** Past this many keys the oldest are forgotten (memory: a few hundred bytes each). */
    idempotencyMaxEntries: z.number().int().positive().default(100_000),
    legacy: z
      .object({
        enabled: z.boolean().default(true),
        path: z.string().startsWith('/').default('/'),
      })
      .strict()
      .prefault({}),
    clients: z
      .record(z.string().min(1), clientSchema)
      .default({})
      .transform((clients, ctx) => {
        // FQDNs are case-insensitive; requests are matched on the lower-cased name.
        const byName: Record<string, z.infer<typeof clientSchema>> = {};
        for (const [fqdn, client] of Object.entries(clients)) {
          const name = fqdn.toLowerCase();
          if (byName[name]) ctx.addIssue({ code: 'custom', message: `duplicate client ${name}`, path: [fqdn] });
          byName[name] = client;
        }
        return byName;
      }),
    tls: z
      .object({ cert: z.string().min(1), key: z.string().min(1) })
      .strict()
      .optional(),
    trustProxy: z.boolean().default(false),
    /** GET /v1/messages/:id (postoffice/status.ts). */
    status: statusConfigSchema,
  })
  .strict();

export type PostofficeConfig = z.infer<typeof postofficeConfigSchema>;
export type ClientPolicy = PostofficeConfig['clients'][string];

export function loadPostofficeConfig(file: string | undefined, env: NodeJS.ProcessEnv = process.env): PostofficeConfig {
  return loadConfig(postofficeConfigSchema, { file, envPrefix: 'POSTOFFICE', env });
}
