import { z } from 'zod';
import type { BeanstalkClient, ReservedJob } from '../shared/beanstalk.ts';
import { readSecret, type KeyIssue } from '../shared/secret.ts';
import { errorCode, errorMessage } from '../shared/errors.ts';
import type { Logger } from '../shared/logger.ts';
import { recipientHash, webhookSignature, WEBHOOK_SIGNATURE_HEADER } from '../shared/webhook-signature.ts';
import type { WorkerMetrics } from './metrics.ts';
import { runReserveLoop } from '../shared/reserve-loop.ts';

/**
 * Delivery events to an operator's webhook. The worker puts each event into its own
 * beanstalkd tube while it records a delivery outcome (worker/outcomes.ts); this
 * dispatcher, with its own connection, takes events from that tube and POSTs them one by
 * one. A failed POST releases the event with a growing delay (the delay is chosen from the
 * job's release count, which beanstalkd keeps), so a slow or broken receiver never holds
 * up deliveries, and an event survives worker restarts. After `maxAgeSeconds` it is buried
 * (kept for an operator, `hedwig queue stats` shows it) and logged.
 */

export const WEBHOOK_TUBE = 'hedwig-events';
/** `suppressed`: the post office left a recipient out of a submission because it is on the suppression list (postoffice/suppression.ts). */
export const EVENT_TYPES = ['delivered', 'deferred', 'bounced', 'expired', 'suppressed'] as const;
export type EventType = (typeof EVENT_TYPES)[number];
const MIN_SECRET_LENGTH = 32;

export const webhookConfigSchema = z
  .object({
    url: z.url({ protocol: /^https?$/ }),
    secret: z.string().optional(),
    secretFile: z.string().optional(),
    /** Send an HMAC of the recipient (keyed with the secret) instead of the address. */
    hashRecipients: z.boolean().default(false),
    events: z.array(z.enum(EVENT_TYPES)).min(1).default([...EVENT_TYPES]),
    tube: z.string().min(1).max(200).default(WEBHOOK_TUBE),
    timeoutMs: z.number().int().positive().default(10_000),
    /** Delay before each retry of a failed POST; the last value repeats. */
    retryDelaysSeconds: z.array(z.number().int().positive()).min(1).default([10, 30, 60, 120, 300, 600, 1200, 1800]),
    /** How long an event is retried before it is buried; at least an hour. */
    maxAgeSeconds: z.number().int().min(3600).default(86_400),
  })
  .strict();
export type WebhookSection = z.infer<typeof webhookConfigSchema>;

/** The webhook settings with the secret read (inline, or `secretFile` at start-up). */
export type WebhookConfig = Omit<WebhookSection, 'secret' | 'secretFile'> & { secret: string };

export function webhookConfigFrom(section: WebhookSection): { ok: true; config: WebhookConfig } | { ok: false; issue: KeyIssue } {
  const read = readSecret({ inline: section.secret, file: section.secretFile }, 'secret', { minLength: MIN_SECRET_LENGTH });
  if (!read.ok) return read;
  const { secretFile: _file, secret: _inline, ...rest } = section;
  return { ok: true, config: { ...rest, secret: read.secret } };
}

/** What the receiver gets: one JSON object per request. */
export interface DeliveryEvent {
  /** The same on every retry of this event: receivers drop duplicates by it. */
  id: string;
  type: EventType;
  occurredAt: string;
  messageId: string;
  fqdn: string;
  mailfrom: string;
  /** Absent when hashRecipients is on; then recipientHash is set. */
  recipient?: string;
  recipientHash?: string;
  responseCode?: number;
  enhancedCode?: string;
  response: string;
  mx?: string;
  attempts: number;
  /** deferred only. */
  nextAttemptAt?: string;
  /** suppressed only: when the entry expires (null: until removed). */
  suppressedUntil?: string | null;
}

/** An event as queued in the webhook tube. */
export interface QueuedEvent {
  v: 1;
  createdAt: number;
  event: DeliveryEvent;
}

function decodeQueuedEvent(payload: Buffer): QueuedEvent | undefined {
  try {
    const value = JSON.parse(payload.toString('utf8')) as Partial<QueuedEvent>;
    return value?.v === 1 && typeof value.createdAt === 'number' && value.event && typeof value.event.id === 'string' ? (value as QueuedEvent) : undefined;
  } catch {
    return undefined;
  }
}

export interface WebhookDeps {
  config: WebhookConfig;
  logger: Logger;
  metrics: WorkerMetrics;
  now?: () => number;
}

type PostResult = { ok: true; status: number } | { ok: false; reason: string };

async function post(config: WebhookConfig, event: DeliveryEvent, nowMs: number): Promise<PostResult> {
  const body = JSON.stringify(event);
  try {
    const response = await fetch(config.url, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        'user-agent': 'hedwig-webhook/1',
        'x-hedwig-event-id': event.id,
        'x-hedwig-event-type': event.type,
        [WEBHOOK_SIGNATURE_HEADER]: webhookSignature(config.secret, Math.floor(nowMs / 1000), body),
      },
      body,
      redirect: 'error',
      signal: AbortSignal.timeout(config.timeoutMs),
    });
    // The body is not needed; reading it lets the connection be reused.
    await response.arrayBuffer().catch(() => undefined);
    return response.ok ? { ok: true, status: response.status } : { ok: false, reason: `http ${response.status}` };
  } catch (err) {
    const cause = (err as { cause?: unknown }).cause;
    return { ok: false, reason: `${errorCode(cause) ?? (err as Error).name}: ${errorMessage(cause ?? err)}` };
  }
}

/** Delivers one reserved event: delete on 2xx, release with backoff on failure, bury when too old. */
export async function dispatchEvent(client: BeanstalkClient, reserved: ReservedJob, deps: WebhookDeps): Promise<void> {
  const { config, logger, metrics } = deps;
  const now = deps.now ?? Date.now;
  const queued = decodeQueuedEvent(reserved.payload);
  if (!queued) {
    logger.error({ event: 'webhook_undecodable', jobId: reserved.id, server: reserved.server }, 'not a webhook event; buried');
    await reserved.bury();
    return;
  }
  // Events queued by the post office (suppressed) come unfiltered and with the address in clear:
  // this webhook's own settings decide.
  if (!config.events.includes(queued.event.type)) {
    await reserved.delete();
    return;
  }
  const event: DeliveryEvent =
    config.hashRecipients && queued.event.recipient !== undefined
      ? (({ recipient, ...rest }) => ({ ...rest, recipientHash: recipientHash(config.secret, recipient!) }))(queued.event)
      : queued.event;
  const fields = { eventId: event.id, type: event.type, messageId: event.messageId, jobId: reserved.id };
  const result = await post(config, event, now());
  if (result.ok) {
    await reserved.delete();
    metrics.webhookDeliveries.inc({ result: 'delivered' });
    logger.info({ event: 'webhook_delivered', ...fields, status: result.status });
    return;
  }
  const ageSeconds = (now() - queued.createdAt) / 1000;
  if (ageSeconds >= config.maxAgeSeconds) {
    await reserved.bury();
    metrics.webhookDeliveries.inc({ result: 'gave_up' });
    logger.error({ event: 'webhook_gave_up', ...fields, reason: result.reason, ageSeconds: Math.round(ageSeconds) }, 'webhook event not accepted within maxAgeSeconds; buried');
    return;
  }
  const releases = Number((await client.statsJob(reserved.id).catch(() => ({}) as Record<string, unknown>)).releases ?? 0) || 0;
  const delays = config.retryDelaysSeconds;
  const delaySeconds = Math.min(delays[Math.min(releases, delays.length - 1)]!, Math.max(1, Math.ceil(config.maxAgeSeconds - ageSeconds)));
  await reserved.release({ delaySeconds });
  metrics.webhookDeliveries.inc({ result: 'failed' });
  logger.warn({ event: 'webhook_failed', ...fields, reason: result.reason, attempt: releases + 1, retryInSeconds: delaySeconds });
}

/** Reserves events from the webhook tube on its own connection (shared/reserve-loop.ts) until `stopping` is aborted. */
export function runWebhookLoop(client: BeanstalkClient, deps: WebhookDeps, stopping: AbortSignal): Promise<void> {
  return runReserveLoop(client, {
    tube: deps.config.tube,
    stopping,
    handle: (reserved) => dispatchEvent(client, reserved, deps),
    onUnavailable: (err) => deps.logger.debug({ event: 'webhook_reserve_failed', code: errorCode(err) }),
  });
}
