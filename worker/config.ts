import { hostname } from 'node:os';
import { z } from 'zod';
import { ConfigError, hostPortSchema, loadConfig, type ConfigWarning } from '../shared/config.ts';
import type { KeyIssue } from '../shared/secret.ts';
import { TUBE } from '../shared/job.ts';
import { daneSchema } from './dane.ts';
import { storeConfigSchema, suppressionConfigSchema } from '../shared/store/config.ts';
import { dkimSchema, loadDkimKeys, type DkimKeys } from './dkim.ts';
import { headersSchema } from './headers.ts';
import { limitsSchema } from './limits.ts';
import { mtaStsSchema } from './mta-sts.ts';
import { bouncesSchema } from './notices.ts';
import { connectionsSchema } from './pool.ts';
import { dnsSchema, routesSchema } from './route.ts';
import { retrySchema } from './settle.ts';
import { timeoutsSchema } from './smtp-timeouts.ts';
import { sourceSchema } from './source-ip.ts';
import { loadTrustAnchors, tlsSchema } from './tls-policy.ts';
import { tlsRptSchema } from './tls-rpt.ts';
import { webhookConfigFrom, webhookConfigSchema, type WebhookConfig } from './webhook.ts';

/**
 * The worker's configuration: each section's schema lives beside the feature it
 * configures and is only put under its key here. Parsing reads no files; the files the
 * config names (DKIM keys, the TLS trust anchors, the webhook secret) are read once at
 * start-up by `readConfiguredFiles`, which reports every problem at once.
 */
export const workerConfigSchema = z
  .object({
    beanstalk: z
      .object({
        servers: z.array(hostPortSchema(11300)).min(1).prefault(['127.0.0.1:11300']),
        tube: z.string().min(1).max(200).default(TUBE.outbound),
        failedTube: z.string().min(1).max(200).default(TUBE.failed),
      })
      .strict()
      .prefault({}),
    /** Jobs delivered in parallel (one reserve loop each, spread over the servers). */
    concurrency: z.number().int().min(1).max(256).default(4),
    /** The name sent in EHLO; receivers check it against the source address's PTR record. */
    ehloName: z.string().min(1).default(() => hostname()),
    dns: dnsSchema,
    routes: routesSchema,
    smtpPort: z.number().int().min(1).max(65535).default(25),
    /** Never connect to loopback, private or link-local addresses found in DNS unless true. */
    allowPrivateAddresses: z.boolean().default(false),
    timeouts: timeoutsSchema,
    retry: retrySchema,
    bounces: bouncesSchema,
    dkim: dkimSchema,
    headers: headersSchema,
    tls: tlsSchema,
    mtaSts: mtaStsSchema,
    dane: daneSchema,
    tlsRpt: tlsRptSchema,
    /**
     * Where the worker keeps what must survive a restart: fetched MTA-STS policies and the
     * TLS-RPT counts of the current period. Give each worker its own (or share it: the
     * policy file is rewritten whole, the counts are per worker); unwritable means in memory only.
     */
    stateDir: z.string().min(1).default('./data/worker'),
    source: sourceSchema,
    connections: connectionsSchema,
    limits: limitsSchema,
    /** Delivery events to an operator's URL (worker/webhook.ts); off when absent. */
    webhook: webhookConfigSchema.optional(),
    /** The shared store (shared/store/): first-attempt ledger, message state and history, suppression list. */
    store: storeConfigSchema,
    /** Recipients that bounce with a "no such address" reply are suppressed for suppression.ttlSeconds. */
    suppression: suppressionConfigSchema,
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
  .strict();

export type WorkerConfig = z.infer<typeof workerConfigSchema>;

export function loadWorkerConfig(file: string | undefined, env: NodeJS.ProcessEnv = process.env, onWarning?: (warning: ConfigWarning) => void): WorkerConfig {
  return loadConfig(workerConfigSchema, { file, tier: 'worker', env, onWarning });
}

/** What the files named in the config hold, read and checked. */
export interface ConfiguredFiles {
  dkim: DkimKeys;
  tlsCa?: Buffer;
  webhook?: WebhookConfig;
}

/**
 * Reads the files the config names; every problem stops start-up as a config error naming
 * `source` (the config file) and each key at once.
 */
export function readConfiguredFiles(config: WorkerConfig, source: string): ConfiguredFiles {
  const issues: KeyIssue[] = [];
  const dkim = loadDkimKeys(config.dkim);
  if (!dkim.ok) issues.push(...dkim.issues.map((issue) => ({ ...issue, path: ['dkim', ...issue.path] })));
  const ca = config.tls.caFile ? loadTrustAnchors(config.tls.caFile) : undefined;
  if (ca && !ca.ok) issues.push({ path: ['tls', 'caFile'], message: ca.message });
  const webhook = config.webhook ? webhookConfigFrom(config.webhook) : undefined;
  if (webhook && !webhook.ok) issues.push({ ...webhook.issue, path: ['webhook', ...webhook.issue.path] });
  if (issues.length > 0) throw new ConfigError(issues.map((issue) => ({ source, key: issue.path.map(String).join('.'), message: issue.message })));
  return {
    dkim: dkim.ok ? dkim.keys : new Map(),
    ...(ca?.ok ? { tlsCa: ca.ca } : {}),
    ...(webhook?.ok ? { webhook: webhook.config } : {}),
  };
}
