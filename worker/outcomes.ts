import { randomUUID } from 'node:crypto';
import type { BeanstalkClient } from '../shared/beanstalk.ts';
import { errorCode } from '../shared/errors.ts';
import type { OutboundJob } from '../shared/job.ts';
import type { Logger } from '../shared/logger.ts';
import { STATUS_TUBE, type RecipientStatus, type StatusUpdate } from '../shared/message-status.ts';
import { recipientHash } from '../shared/webhook-signature.ts';
import type { RecipientResult } from './classify.ts';
import type { WorkerMetrics } from './metrics.ts';
import type { Settlement } from './settle.ts';
import type { DeliveryEvent, EventType, QueuedEvent, WebhookConfig } from './webhook.ts';

/**
 * What else happens when an attempt is settled, besides the jobs that carry the
 * recipients on: the latency of each delivery, webhook events and the status update for
 * the post office. Called after the settlement's own jobs were put and before the old job
 * is deleted, on the reserving connection, so events are as durable as the outcome they
 * describe. A crash before the delete repeats the delivery, and with it its events (under
 * new event ids): at-least-once, like the mail itself.
 *
 * It never throws and never holds a delivery up for long: a failing put is logged and
 * counted, and the job is deleted all the same.
 */
export interface OutcomeRecorder {
  record(client: BeanstalkClient, job: OutboundJob, settlement: Settlement, context: { now: number; retryJobId?: string }): Promise<void>;
}

export interface OutcomeOptions {
  logger: Logger;
  metrics: WorkerMetrics;
  webhook?: Pick<WebhookConfig, 'tube' | 'events' | 'hashRecipients' | 'secret'>;
  statusTube?: string;
  /**
   * Writes a status report straight into the shared store; false when the store did not take
   * it (the report then goes through the status tube, for a post office to write later).
   * With a store every settled attempt is reported (the history of delivered messages too).
   */
  report?: (update: StatusUpdate) => Promise<boolean>;
  /** How long "does a post office watch the status tube?" is remembered per connection. */
  watcherCacheMs?: number;
  ttrSeconds?: number;
}

const WATCHER_CACHE_MS = 10_000;
const EVENT_TTR_SECONDS = 120;

function iso(ms: number): string {
  return new Date(ms).toISOString();
}

export function deliveryEvents(job: OutboundJob, settlement: Settlement, options: { now: number; webhook: NonNullable<OutcomeOptions['webhook']> }): DeliveryEvent[] {
  const { now, webhook } = options;
  const wanted = new Set<EventType>(webhook.events);
  const attempts = job.attempts + 1;
  const nextAttemptAt = settlement.retry ? iso(now + settlement.retry.delaySeconds * 1000) : undefined;
  const event = (type: EventType, r: RecipientResult): DeliveryEvent => ({
    id: randomUUID(),
    type,
    occurredAt: iso(now),
    messageId: job.id,
    fqdn: job.fqdn,
    mailfrom: job.mailfrom,
    ...(webhook.hashRecipients ? { recipientHash: recipientHash(webhook.secret, r.recipient) } : { recipient: r.recipient }),
    ...(r.responseCode !== undefined ? { responseCode: r.responseCode } : {}),
    ...(r.enhancedCode !== undefined ? { enhancedCode: r.enhancedCode } : {}),
    response: r.response,
    ...(r.mx !== undefined ? { mx: r.mx } : {}),
    attempts,
    ...(type === 'deferred' && nextAttemptAt ? { nextAttemptAt } : {}),
  });
  const groups: Array<[EventType, RecipientResult[]]> = [
    ['delivered', settlement.delivered],
    ['deferred', settlement.retry?.recipients ?? []],
    ['bounced', settlement.bounced],
    ['expired', settlement.expired],
  ];
  return groups.filter(([type]) => wanted.has(type)).flatMap(([type, results]) => results.map((r) => event(type, r)));
}

export function statusUpdate(job: OutboundJob, settlement: Settlement, context: { now: number; server: string; retryJobId?: string }): StatusUpdate {
  const status = (state: RecipientStatus['state'], r: RecipientResult): RecipientStatus => ({
    recipient: r.recipient,
    state,
    ...(r.responseCode !== undefined ? { responseCode: r.responseCode } : {}),
    ...(r.enhancedCode !== undefined ? { enhancedCode: r.enhancedCode } : {}),
    response: r.response,
    ...(r.mx !== undefined ? { mx: r.mx } : {}),
    at: context.now,
  });
  return {
    v: 1,
    messageId: job.id,
    fqdn: job.fqdn,
    mailfrom: job.mailfrom,
    receivedAt: job.receivedAt,
    attempts: job.attempts + 1,
    state: settlement.retry ? 'deferred' : 'done',
    ...(settlement.retry ? { nextAttemptAt: context.now + settlement.retry.delaySeconds * 1000 } : {}),
    ...(settlement.retry && context.retryJobId ? { retry: { server: context.server, jobId: context.retryJobId } } : {}),
    recipients: [
      ...settlement.delivered.map((r) => status('delivered', r)),
      ...(settlement.retry?.recipients ?? []).map((r) => status('deferred', r)),
      ...settlement.bounced.map((r) => status('bounced', r)),
      ...settlement.expired.map((r) => status('expired', r)),
    ],
    at: context.now,
  };
}

/**
 * A message needs a status update when the post office cannot know its state by itself:
 * it is (still) deferred, it was deferred before, or some recipient failed. A message
 * delivered at its first attempt simply leaves the queue.
 */
function needsStatusUpdate(job: OutboundJob, settlement: Settlement): boolean {
  return settlement.retry !== null || job.attempts > 0 || settlement.failedJob !== null;
}

export function createOutcomeRecorder(options: OutcomeOptions): OutcomeRecorder {
  const { logger, metrics } = options;
  const statusTube = options.statusTube ?? STATUS_TUBE;
  const watcherCacheMs = options.watcherCacheMs ?? WATCHER_CACHE_MS;
  const ttrSeconds = options.ttrSeconds ?? EVENT_TTR_SECONDS;
  const watched = new WeakMap<BeanstalkClient, { watched: boolean; until: number }>();

  async function statusWatched(client: BeanstalkClient, now: number): Promise<boolean> {
    const cached = watched.get(client);
    if (cached && cached.until > now) return cached.watched;
    let isWatched = false;
    try {
      isWatched = Number((await client.statsTube(statusTube))['current-watching'] ?? 0) > 0;
    } catch (err) {
      if (errorCode(err) !== 'NOT_FOUND') throw err;
    }
    watched.set(client, { watched: isWatched, until: now + watcherCacheMs });
    return isWatched;
  }

  return {
    async record(client, job, settlement, { now, retryJobId }) {
      for (const _ of settlement.delivered) metrics.deliveryLatency.observe(Math.max(0, (now - job.receivedAt) / 1000));

      if (options.webhook) {
        const events = deliveryEvents(job, settlement, { now, webhook: options.webhook });
        let queued = 0;
        try {
          for (const event of events) {
            const entry: QueuedEvent = { v: 1, createdAt: now, event };
            await client.putTo(options.webhook.tube, Buffer.from(JSON.stringify(entry)), { ttrSeconds });
            metrics.webhookEvents.inc({ type: event.type });
            queued++;
          }
        } catch (err) {
          logger.warn({ event: 'webhook_queue_failed', messageId: job.id, code: errorCode(err), lost: events.length - queued }, 'could not queue webhook events');
        }
      }

      if (options.report) {
        const update = statusUpdate(job, settlement, { now, server: client.server, ...(retryJobId ? { retryJobId } : {}) });
        if (await options.report(update)) {
          metrics.statusUpdates.inc({ result: 'stored' });
          return;
        }
      }
      if (options.report || needsStatusUpdate(job, settlement)) {
        try {
          if (await statusWatched(client, now)) {
            const update = statusUpdate(job, settlement, { now, server: client.server, ...(retryJobId ? { retryJobId } : {}) });
            await client.putTo(statusTube, Buffer.from(JSON.stringify(update)), { ttrSeconds });
            metrics.statusUpdates.inc({ result: 'sent' });
          } else {
            metrics.statusUpdates.inc({ result: 'skipped' });
          }
        } catch (err) {
          metrics.statusUpdates.inc({ result: 'failed' });
          logger.warn({ event: 'status_update_failed', messageId: job.id, code: errorCode(err) }, 'could not send the status update');
        }
      }
    },
  };
}
