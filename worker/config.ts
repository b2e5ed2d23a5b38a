import { hostname } from 'node:os';
import { isIP } from 'node:net';
import { z } from 'zod';
import { hostPortSchema, loadConfig } from '../shared/config.ts';
import { parseHostPort } from '../shared/host-port.ts';
import { webhookConfigSchema } from './webhook.ts';
import { mailbox, TUBE } from '../shared/job.ts';
import { connectionsSchema, dkimSchema, headersSchema, limitsSchema, sourceSchema, tlsSchema } from './identity-config.ts';

const DEFAULT_BEANSTALK_PORT = 11300;
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

export const workerConfigSchema = z
  .object({
    beanstalk: z
      .object({
        servers: z.array(hostPortSchema(DEFAULT_BEANSTALK_PORT)).min(1).prefault(['127.0.0.1:11300']),
        tube: z.string().min(1).max(200).default(TUBE.outbound),
        failedTube: z.string().min(1).max(200).default(TUBE.failed),
      })
      .strict()
      .prefault({}),
    /** Jobs delivered in parallel (one reserve loop each, spread over the servers). */
    concurrency: z.number().int().min(1).max(256).default(4),
    /** The name sent in EHLO; receivers check it against the source address's PTR record. */
    ehloName: z.string().min(1).default(() => hostname()),
    dns: z
      .object({
        /** Empty: the system resolver's servers. */
        servers: z.array(z.string().refine(isDnsServer, { message: "expected 'ip' or 'ip:port'" })).default([]),
        timeoutMs: z.number().int().positive().default(5000),
        /** Upper bound for caching a destination, whatever the records' TTL; 0 disables the cache. */
        cacheMaxSeconds: z.number().int().nonnegative().default(300),
      })
      .strict()
      .prefault({}),
    /** Domain -> 'host:port', like Postfix transport maps; bypasses MX (and the private-address rule). */
    routes: z
      .record(z.string().min(1), z.string().min(1))
      .default({})
      .transform((routes) => Object.fromEntries(Object.entries(routes).map(([domain, route]) => [domain.toLowerCase(), route]))),
    smtpPort: z.number().int().min(1).max(65535).default(25),
    /** Never connect to loopback, private or link-local addresses found in DNS unless true. */
    allowPrivateAddresses: z.boolean().default(false),
    timeouts: z
      .object({
        connectMs: z.number().int().positive().default(30_000),
        greetingMs: z.number().int().positive().default(30_000),
        socketMs: z.number().int().positive().default(300_000),
      })
      .strict()
      .prefault({}),
    retry: z
      .object({
        /**
         * Delay before attempt n+1 after attempt n failed temporarily; the last value repeats.
         * RFC 5321 §4.5.4.1: a first retry within minutes, then 30 minutes or more apart.
         */
        delaysSeconds: z.array(z.number().int().positive()).min(1).default([300, 1800, 3600, 7200, 14400]),
        /** RFC 5321 §4.5.4.1: give up after 4-5 days. */
        maxLifetimeSeconds: z.number().int().positive().default(432_000),
      })
      .strict()
      .prefault({}),
    /** Delivery status notifications (RFC 3464) to the envelope sender. */
    bounces: z
      .object({
        /** Report bounced and expired recipients to the sender (never to a null sender `<>`). */
        enabled: z.boolean().default(true),
        /** From: of notices; unset means MAILER-DAEMON@<ehloName>. */
        from: mailbox.optional(),
        /** Warn the sender once when a message is still undelivered this long after arrival; 0 disables. */
        delayWarningSeconds: z.number().int().nonnegative().default(14_400),
      })
      .strict()
      .prefault({}),
    /** DKIM keys per signing domain; see worker/identity-config.ts. */
    dkim: dkimSchema,
    headers: headersSchema,
    /** TLS policy, source addresses, connection reuse, per-destination limits; see worker/identity-config.ts. */
    tls: tlsSchema,
    source: sourceSchema,
    connections: connectionsSchema,
    limits: limitsSchema,
    /** Delivery events to an operator's URL (worker/webhook.ts); off when absent. */
    webhook: webhookConfigSchema.optional(),
    ops: z
      .object({
        host: z.string().min(1).default('127.0.0.1'),
        port: z.number().int().min(0).max(65535).default(9103),
      })
      .strict()
      .prefault({}),
    /** On stop, how long in-flight deliveries may run before they are cut off (their jobs return to the queue). */
    shutdownGraceMs: z.number().int().nonnegative().default(20_000),
  })
  .strict()
  .superRefine((config, ctx) => {
    for (const [domain, route] of Object.entries(config.routes)) {
      try {
        const { port } = parseHostPort(route, config.smtpPort);
        if (port < 1 || port > 65535) throw new Error('port out of range');
      } catch {
        ctx.addIssue({ code: 'custom', path: ['routes', domain], message: `not a host[:port]: ${route}` });
      }
    }
  });

export type WorkerConfig = z.infer<typeof workerConfigSchema>;

export function loadWorkerConfig(file: string | undefined, env: NodeJS.ProcessEnv = process.env): WorkerConfig {
  return loadConfig(workerConfigSchema, { file, envPrefix: 'WORKER', env });
}
