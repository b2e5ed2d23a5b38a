import { hostname as osHostname } from 'node:os';
import { z } from 'zod';
import { loadConfig, type ConfigWarning } from '../shared/config.ts';
import { resolveSecret } from '../shared/secret.ts';
import { isCidr } from './networks.ts';
import { smtpAuthConfigSchema } from './smtp-auth.ts';

const positiveInt = z.number().int().positive();
const port = z.number().int().min(0).max(65535);

/**
 * The file/environment shape. `postoffice.key` or `postoffice.keyFile` (a Docker
 * secret) carries the host's signing key; the parse resolves it, so the typed result
 * always holds `postoffice.key` and never `keyFile`.
 */
export const mailmanConfigSchema = z
  .object({
    // In Docker the operator sets 0.0.0.0 and publishes the port on the docker0 address only.
    listen: z.object({ host: z.string().min(1).default('127.0.0.1'), port: port.default(2525) }).strict().prefault({}),
    // Who may hand us mail: mailman must never become an open relay.
    allowedNetworks: z.array(z.string().refine(isCidr, { message: 'not a CIDR network' })).default(['127.0.0.0/8', '::1/128', '172.17.0.0/16']),
    hostname: z.string().min(1).default(() => osHostname()),
    maxMessageBytes: positiveInt.default(10_485_760),
    maxRecipients: positiveInt.default(100),
    maxClients: positiveInt.default(100),
    // Every program of an app host usually connects from 127.0.0.1 (each container from its own
    // docker0 address): a fifth of maxClients keeps one stuck program from locking out the rest.
    maxClientsPerAddress: positiveInt.default(20),
    socketTimeoutMs: positiveInt.default(60_000),
    // Whole-message deadline from DATA to the final dot (RFC 5321 §4.5.3.2 gives 3 minutes per
    // data block and 10 for the reply): socketTimeoutMs alone never cuts a client that trickles.
    dataTimeoutMs: positiveInt.default(300_000),
    // STARTTLS only with the operator's own certificate: smtp-server's built-in one has a published private key.
    tls: z
      .object({ cert: z.string().min(1).optional(), key: z.string().min(1).optional() })
      .strict()
      .prefault({})
      .refine((tls) => Boolean(tls.cert) === Boolean(tls.key), { message: 'set both tls.cert and tls.key, or neither' }),
    // SMTP AUTH (PLAIN, LOGIN), off unless users are listed: offered to loopback clients, to
    // others only after STARTTLS; with it, clients outside allowedNetworks may send once authenticated.
    auth: smtpAuthConfigSchema.optional(),
    postoffice: z
      .object({
        url: z.url({ protocol: /^https?$/, error: 'expected an http(s) URL' }),
        fqdn: z.string().min(1),
        key: z.string().min(1).optional(),
        keyFile: z.string().min(1).optional(),
        caFile: z.string().min(1).optional(),
        timeoutMs: positiveInt.default(10_000),
      })
      .strict(),
    spool: z.object({ dir: z.string().min(1).default('./data/spool') }).strict().prefault({}),
    forwarder: z
      .object({
        minBackoffMs: positiveInt.default(1_000),
        maxBackoffMs: positiveInt.default(60_000),
        maxProbeIntervalMs: positiveInt.default(1_000),
        concurrency: positiveInt.default(16),
        // About four minutes of retries with the default backoff before a message the post office
        // keeps failing on (500, timeouts while others get through) goes to failed/.
        maxAttempts: positiveInt.default(10),
        // RFC 5321 §4.5.4.1: give up after 4-5 days; Postfix's maximal_queue_lifetime is 5d.
        maxAgeSeconds: positiveInt.default(432_000),
      })
      .strict()
      .prefault({})
      .refine((f) => f.minBackoffMs <= f.maxBackoffMs, { message: 'minBackoffMs must not exceed maxBackoffMs' }),
    ops: z.object({ host: z.string().min(1).default('127.0.0.1'), port: port.default(9102) }).strict().prefault({}),
  })
  .strict()
  .transform((parsed, ctx) => {
    const { key, keyFile, ...postoffice } = parsed.postoffice;
    const resolvedKey = resolveSecret({ inline: key, file: keyFile }, 'key', ctx, { at: ['postoffice'] });
    if (resolvedKey === undefined) return z.NEVER;
    return { ...parsed, postoffice: { ...postoffice, key: resolvedKey } };
  });

export type MailmanConfig = z.output<typeof mailmanConfigSchema>;

/** Parses, validates and resolves secrets once; the result is what every other module works with. */
export function loadMailmanConfig(file: string | undefined, env: NodeJS.ProcessEnv = process.env, onWarning?: (warning: ConfigWarning) => void): MailmanConfig {
  return loadConfig(mailmanConfigSchema, { file, tier: 'mailman', env, onWarning });
}
