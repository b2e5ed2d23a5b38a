import { z } from 'zod';
import type { FastifyInstance } from 'fastify';
import { BeanstalkClient, type BeanstalkAddress } from '../shared/beanstalk.ts';
import { errorCode } from '../shared/errors.ts';
import type { OutboundJob } from '../shared/job.ts';
import type { Logger } from '../shared/logger.ts';
import { decodeStatusUpdate, STATUS_TUBE, type RecipientStatus, type StatusUpdate } from '../shared/message-status.ts';
import { authenticateSignedRequest, type ClientPolicy } from './auth.ts';
import { errorBody, type Rejection } from './rejection.ts';
import { runReserveLoop } from '../shared/reserve-loop.ts';

/**
 * `GET /v1/messages/:id`: the state of a message that is still queued.
 *
 * What the post office knows: the job it put (server and job id, kept from the put), and
 * the status updates workers send for messages that were deferred or failed (see
 * shared/message-status.ts), consumed from the status tube into the table below. The
 * live state (queued / being delivered / waiting for its retry) comes from `stats-job` on
 * the job that currently carries the message.
 *
 * Limits, by design: the table is in this process's memory (like the idempotency keys),
 * so after a restart a message is known again from its next delivery attempt on; with
 * several post offices, each consumes a share of the updates: run the status route on one
 * (`status.enabled` on that one only). A message delivered at its first attempt leaves the
 * queue without an update and is answered 404 `not_queued`.
 */

export const statusConfigSchema = z
  .object({
    enabled: z.boolean().default(true),
    tube: z.string().min(1).max(200).default(STATUS_TUBE),
    /** How long a message stays in the table after its last news (or its next attempt, if later). */
    retainSeconds: z.number().int().positive().default(86_400),
    maxEntries: z.number().int().positive().default(100_000),
  })
  .strict()
  .prefault({});
export type StatusConfig = z.infer<typeof statusConfigSchema>;

interface JobRef {
  server: string;
  jobId: string;
}

interface QueuedRecipient {
  recipient: string;
  state: 'queued';
}

interface MessageRecord {
  messageId: string;
  fqdn: string;
  receivedAt: number;
  attempts: number;
  state: 'queued' | StatusUpdate['state'];
  nextAttemptAt?: number;
  lastAttemptAt?: number;
  /** The job carrying the message now (the first put, then the latest retry). */
  job?: JobRef;
  /**
   * Until the first status update, the recipients as put (no attempt yet); then their
   * latest status. A queued record is kept small: the table holds up to 100,000.
   */
  recipients: readonly string[] | Map<string, RecipientStatus | QueuedRecipient>;
  expiresAt: number;
}

/**
 * A message nobody has tried yet, packed into one tab-separated string (a fraction of
 * the object form with its recipient map): the table holds up to `maxEntries` of these,
 * one per queued message. Tabs cannot occur in any field (addresses refuse control
 * characters, fqdns and server names have none).
 */
type PackedQueued = string;

function recipientStatuses(record: MessageRecord | undefined): Array<RecipientStatus | QueuedRecipient> {
  if (!record) return [];
  if (record.recipients instanceof Map) return [...record.recipients.values()];
  return record.recipients.map((recipient) => ({ recipient, state: 'queued' }));
}

function packQueued(job: OutboundJob, ref: JobRef, expiresAt: number): PackedQueued {
  return [expiresAt, job.receivedAt, job.fqdn, ref.server, ref.jobId, ...job.rcpttos].join('\t');
}

function unpackQueued(messageId: string, packed: PackedQueued): MessageRecord {
  const [expiresAt, receivedAt, fqdn, server, jobId, ...rcpttos] = packed.split('\t') as [string, string, string, string, string, ...string[]];
  return { messageId, fqdn, receivedAt: Number(receivedAt), attempts: 0, state: 'queued', job: { server, jobId }, recipients: rcpttos, expiresAt: Number(expiresAt) };
}

export class StatusTable {
  readonly #records = new Map<string, MessageRecord | PackedQueued>();
  readonly #retainMs: number;
  readonly #maxEntries: number;

  constructor(options: { retainSeconds: number; maxEntries: number }) {
    this.#retainMs = options.retainSeconds * 1000;
    this.#maxEntries = options.maxEntries;
  }

  get size(): number {
    return this.#records.size;
  }

  queued(job: OutboundJob, ref: JobRef, now: number): void {
    this.#set(job.id, packQueued(job, ref, now + this.#retainMs));
  }

  apply(update: StatusUpdate, now: number): void {
    const existing = this.#record(update.messageId);
    // Updates of one message can arrive out of order (several workers, several servers).
    if (existing?.lastAttemptAt !== undefined && existing.lastAttemptAt > update.at) return;
    const recipients = existing?.recipients instanceof Map ? existing.recipients : new Map(recipientStatuses(existing).map((r) => [r.recipient, r]));
    for (const r of update.recipients) recipients.set(r.recipient, r);
    this.#set(update.messageId, {
      messageId: update.messageId,
      fqdn: update.fqdn,
      receivedAt: update.receivedAt,
      attempts: update.attempts,
      state: update.state,
      ...(update.nextAttemptAt !== undefined ? { nextAttemptAt: update.nextAttemptAt } : {}),
      lastAttemptAt: update.at,
      ...(update.retry ? { job: update.retry } : {}),
      recipients,
      expiresAt: Math.max(now, update.nextAttemptAt ?? now) + this.#retainMs,
    });
  }

  get(messageId: string, now: number): MessageRecord | undefined {
    const record = this.#record(messageId);
    if (record && record.expiresAt <= now) {
      this.#records.delete(messageId);
      return undefined;
    }
    return record;
  }

  #record(messageId: string): MessageRecord | undefined {
    const stored = this.#records.get(messageId);
    return typeof stored === 'string' ? unpackQueued(messageId, stored) : stored;
  }

  #set(messageId: string, record: MessageRecord | PackedQueued): void {
    this.#records.delete(messageId);
    this.#records.set(messageId, record);
    while (this.#records.size > this.#maxEntries) this.#records.delete(this.#records.keys().next().value!);
  }
}

/** Consumes the status tube of one beanstalkd server into the table (shared/reserve-loop.ts) until `stopping` is aborted. */
export async function runStatusConsumer(address: BeanstalkAddress, tube: string, table: StatusTable, logger: Logger, stopping: AbortSignal, now: () => number = Date.now): Promise<void> {
  const client = new BeanstalkClient(address);
  stopping.addEventListener('abort', () => void client.close(), { once: true });
  // beanstalkd down: the put clients log that; the loop waits and tries again.
  await runReserveLoop(client, {
    tube,
    stopping,
    handle: async (reserved) => {
      try {
        table.apply(decodeStatusUpdate(reserved.payload), now());
      } catch {
        logger.warn({ event: 'status_update_undecodable', jobId: reserved.id, server: reserved.server }, 'not a status update; deleted');
      }
      await reserved.delete();
    },
  });
  await client.close();
}

export type LiveJobState = 'ready' | 'delayed' | 'reserved' | 'buried' | 'gone' | 'unknown';

export interface StatusRouteDeps {
  clients: Readonly<Record<string, ClientPolicy>>;
  windowSeconds: number;
  table: StatusTable;
  /** `stats-job` on the named server: where the job is now. */
  jobState(ref: JobRef): Promise<LiveJobState>;
  now: () => number;
}

const MESSAGE_ID = /^[A-Za-z0-9._-]{1,200}$/;
const iso = (ms: number | undefined) => (ms === undefined ? null : new Date(ms).toISOString());

function describeState(record: MessageRecord, live: LiveJobState): string {
  if (record.state === 'done') return 'done';
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
    id: record.messageId,
    state: describeState(record, live),
    receivedAt: iso(record.receivedAt),
    attempts: record.attempts,
    lastAttemptAt: iso(record.lastAttemptAt),
    nextAttemptAt: record.state === 'deferred' ? iso(record.nextAttemptAt) : null,
    recipients: recipientStatuses(record).map((r) =>
      'response' in r
        ? {
            recipient: r.recipient,
            state: r.state,
            responseCode: r.responseCode ?? null,
            enhancedCode: r.enhancedCode ?? null,
            lastResponse: r.response,
            mx: r.mx ?? null,
            lastAttemptAt: iso(r.at),
          }
        : { recipient: r.recipient, state: r.state, responseCode: null, enhancedCode: null, lastResponse: null, mx: null, lastAttemptAt: null },
    ),
  };
}

export function registerStatusRoute(app: FastifyInstance, deps: StatusRouteDeps): void {
  const fail = (reply: { code(status: number): { send(body: unknown): unknown } }, r: Rejection) => reply.code(r.status).send(errorBody(r));
  app.get<{ Params: { id: string } }>('/v1/messages/:id', async (request, reply) => {
    const auth = authenticateSignedRequest(
      deps.clients,
      { method: request.method, url: request.raw.url ?? request.url, headers: request.headers, body: Buffer.alloc(0) },
      { nowMs: deps.now(), windowSeconds: deps.windowSeconds },
    );
    if (!auth.ok) return fail(reply, auth.rejection);
    const notQueued: Rejection = { status: 404, code: 'not_queued', message: 'no such message in the queue: unknown, delivered, or failed (see the failed tube)' };
    const id = request.params.id;
    if (!MESSAGE_ID.test(id)) return fail(reply, notQueued);
    const record = deps.table.get(id, deps.now());
    // Another host's message is answered exactly like an unknown one.
    if (!record || record.fqdn !== auth.value.fqdn) return fail(reply, notQueued);
    const live = record.job && record.state !== 'done' ? await deps.jobState(record.job) : 'unknown';
    // Put but gone without any update: it left the queue at its first attempt.
    if (record.state === 'queued' && live === 'gone') return fail(reply, notQueued);
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
