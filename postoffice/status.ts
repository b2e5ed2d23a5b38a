import { z } from 'zod';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { BeanstalkClient, type BeanstalkAddress } from '../shared/beanstalk.ts';
import { errorCode } from '../shared/errors.ts';
import type { Logger } from '../shared/logger.ts';
import { decodeStatusUpdate, STATUS_TUBE } from '../shared/message-status.ts';
import { runReserveLoop } from '../shared/reserve-loop.ts';
import type { SuppressionConfig } from '../shared/store/config.ts';
import type { StoreHealth } from '../shared/store/health.ts';
import type { JobRef, MessageRecord, Store } from '../shared/store/store.ts';
import type { SignedCaller } from './auth.ts';
import { errorBody, type OrRejection, type Rejection } from './rejection.ts';

/**
 * `GET /v1/messages/:id`: the state and history of a message, from the shared store
 * (shared/store/store.ts): the record the post office wrote when it queued the message, and
 * what workers reported after each attempt. Every post office answers for every message,
 * also after restarts, while queued and for `store.historySeconds` after it left the queue
 * (delivered, bounced, expired, deleted). The live state of a message still queued (waiting,
 * being delivered right now, waiting for its retry) comes from `stats-job` on the job that
 * carries it.
 *
 * Workers write their reports straight into the store; when the store does not answer they
 * put them into the status tube instead (shared/message-status.ts), and the consumer below,
 * in every post office, writes them into the store once it answers again.
 */

export const statusConfigSchema = z
  .object({
    enabled: z.boolean().default(true),
    tube: z.string().min(1).max(200).default(STATUS_TUBE),
  })
  .strict()
  .prefault({});
export type StatusConfig = z.infer<typeof statusConfigSchema>;

const STORE_RETRY_DELAY_SECONDS = 5;

/**
 * Consumes the status tube of one beanstalkd server into the store until `stopping` is
 * aborted. A report the store cannot take now goes back into the tube (released with a
 * delay), never lost.
 */
export async function runStatusConsumer(
  address: BeanstalkAddress,
  options: { tube: string; store: Store; health: StoreHealth; suppression: SuppressionConfig; logger: Logger; stopping: AbortSignal; now?: () => number },
): Promise<void> {
  const { logger, stopping, store, health } = options;
  const now = options.now ?? Date.now;
  const client = new BeanstalkClient(address);
  stopping.addEventListener('abort', () => void client.close(), { once: true });
  // beanstalkd down: the put clients log that; the loop waits and tries again.
  await runReserveLoop(client, {
    tube: options.tube,
    stopping,
    handle: async (reserved) => {
      let update;
      try {
        update = decodeStatusUpdate(reserved.payload);
      } catch {
        logger.warn({ event: 'status_update_undecodable', jobId: reserved.id, server: reserved.server }, 'not a status update; deleted');
        await reserved.delete();
        return;
      }
      try {
        const applied = await store.applyStatus(update, now(), options.suppression);
        health.worked();
        for (const entry of applied.suppressed) logger.info({ event: 'suppression_added', address: entry.address, messageId: update.messageId, enhancedCode: entry.enhancedCode, responseCode: entry.responseCode, until: entry.expiresAt });
      } catch (err) {
        health.failed('apply_status', err);
        await reserved.release({ delaySeconds: STORE_RETRY_DELAY_SECONDS });
        return;
      }
      await reserved.delete();
    },
  });
  await client.close();
}

export type LiveJobState = 'ready' | 'delayed' | 'reserved' | 'buried' | 'gone' | 'unknown';

export interface StatusRouteDeps {
  /** The signed-request check of postoffice/gate.ts (throttled like the send API). */
  authenticate(request: FastifyRequest): OrRejection<SignedCaller>;
  store: Store;
  health: StoreHealth;
  /** `stats-job` on the named server: where the job is now. */
  jobState(ref: JobRef): Promise<LiveJobState>;
  now: () => number;
}

const MESSAGE_ID = /^[A-Za-z0-9._-]{1,200}$/;
const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

/**
 * queued (waiting for a worker), delivering (a worker holds it now), deferred (waiting for
 * its retry), held (`hedwig queue hold`), buried, done (nothing left in the queue), deleted
 * (`hedwig queue delete`).
 */
function describeState(record: MessageRecord, live: LiveJobState): string {
  if (record.state === 'done' || record.state === 'deleted') return record.state;
  if (record.held && live !== 'reserved') return 'held';
  switch (live) {
    case 'ready':
      return 'queued';
    case 'reserved':
      return 'delivering';
    case 'delayed':
      return 'deferred';
    case 'buried':
      return 'buried';
    default:
      return record.state;
  }
}

export function statusBody(record: MessageRecord, live: LiveJobState) {
  return {
    id: record.id,
    state: describeState(record, live),
    receivedAt: iso(record.receivedAt),
    attempts: record.attempts,
    lastAttemptAt: iso(record.lastAttemptAt),
    nextAttemptAt: record.state === 'deferred' ? iso(record.nextAttemptAt) : null,
    recipients: record.recipients.map((r) => ({
      recipient: r.recipient,
      state: r.state,
      responseCode: r.responseCode,
      enhancedCode: r.enhancedCode,
      lastResponse: r.response,
      mx: r.mx,
      lastAttemptAt: iso(r.at),
    })),
  };
}

export function registerStatusRoute(app: FastifyInstance, deps: StatusRouteDeps): void {
  const fail = (reply: FastifyReply, r: Rejection) => {
    if (r.retryAfterSeconds !== undefined) reply.header('retry-after', String(r.retryAfterSeconds));
    return reply.code(r.status).send(errorBody(r));
  };
  app.get<{ Params: { id: string } }>('/v1/messages/:id', async (request, reply) => {
    const auth = deps.authenticate(request);
    if (!auth.ok) return fail(reply, auth.rejection);
    const notQueued: Rejection = { status: 404, code: 'not_queued', message: 'no such message: unknown, or it left the queue longer ago than the history keeps' };
    const id = request.params.id;
    if (!MESSAGE_ID.test(id)) return fail(reply, notQueued);
    let record: MessageRecord | undefined;
    try {
      record = await deps.store.getMessage(id);
      deps.health.worked();
    } catch (err) {
      deps.health.failed('get_message', err);
      return fail(reply, { status: 503, code: 'store_unavailable', message: 'the message store is unavailable, retry later', retryAfterSeconds: 5 });
    }
    // Another host's message is answered exactly like an unknown one; so is one past its history.
    if (!record || record.fqdn !== auth.value.fqdn || (record.expiresAt !== null && record.expiresAt <= deps.now())) return fail(reply, notQueued);
    const active = record.state === 'queued' || record.state === 'deferred';
    const live = record.job && active ? await deps.jobState(record.job) : 'unknown';
    return reply.code(200).send(statusBody(record, live));
  });
}

/** stats-job through whichever client talks to that server. */
export function jobStateVia(clients: BeanstalkClient[]): (ref: JobRef) => Promise<LiveJobState> {
  return async (ref) => {
    const client = clients.find((c) => c.server === ref.server);
    if (!client) return 'unknown';
    try {
      const state = String((await client.statsJob(ref.jobId)).state ?? '');
      return state === 'ready' || state === 'delayed' || state === 'reserved' || state === 'buried' ? state : 'unknown';
    } catch (err) {
      return errorCode(err) === 'NOT_FOUND' ? 'gone' : 'unknown';
    }
  };
}
