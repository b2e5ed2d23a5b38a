import { z } from 'zod';
import { hostPortSchema, loadConfig, type ConfigWarning } from '../shared/config.ts';
import { JOB_TTR_SECONDS, TUBE } from '../shared/job.ts';
import { storeConfigSchema, suppressionConfigSchema } from '../shared/store/config.ts';
import { clientsConfigSchema } from './auth.ts';
import { authFailuresConfigSchema } from './auth-throttle.ts';
import { statusConfigSchema } from './status.ts';
import { uploadsConfigSchema } from './upload.ts';

const DEFAULT_BEANSTALK_PORT = 11300;

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
    /** Bounds on request bodies read before their sender is authenticated (postoffice/upload.ts). */
    uploads: uploadsConfigSchema,
    /** Throttling of authentication failures (postoffice/auth-throttle.ts). */
    authFailures: authFailuresConfigSchema,
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
    /** The enrolled hosts and what each may do (postoffice/auth.ts). */
    clients: clientsConfigSchema,
    tls: z
      .object({ cert: z.string().min(1), key: z.string().min(1) })
      .strict()
      .optional(),
    trustProxy: z.boolean().default(false),
    /** GET /v1/messages/:id (postoffice/status.ts). */
    status: statusConfigSchema,
    /** The shared store: idempotency keys, message state and history, suppression list (shared/store/). */
    store: storeConfigSchema,
    /** Queued records held in memory while the store is unavailable, at most. */
    storeBufferMaxEntries: z.number().int().positive().default(100_000),
    suppression: suppressionConfigSchema,
  })
  .strict();

export type PostofficeConfig = z.infer<typeof postofficeConfigSchema>;

export function loadPostofficeConfig(file: string | undefined, env: NodeJS.ProcessEnv = process.env, onWarning?: (warning: ConfigWarning) => void): PostofficeConfig {
  return loadConfig(postofficeConfigSchema, { file, tier: 'postoffice', env, onWarning });
}
