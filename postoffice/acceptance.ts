import { randomUUID } from 'node:crypto';
import { errorCode, errorMessage } from '../shared/errors.ts';
import { encodeJob, type OutboundJob } from '../shared/job.ts';
import type { Logger } from '../shared/logger.ts';
import type { StoreHealth } from '../shared/store/health.ts';
import type { QueuedRecord, Store, SuppressionEntry } from '../shared/store/store.ts';
import { checkAuthorDomains, completeAddressFields } from './address-fields.ts';
import type { AuthenticatedClient } from './auth.ts';
import type { PostofficeConfig } from './config.ts';
import { IdempotencyStore, type Accepted } from './idempotency.ts';
import type { PostofficeMetrics } from './metrics.ts';
import type { JobQueue } from './queue.ts';
import { QueuedRecords } from './queued-records.ts';
import { ok, rejection, type OrRejection } from './rejection.ts';
import { createSubmissionParser, senderAllowed, submissionFingerprint, type Submission } from './submission.ts';
import { suppressedAmong } from './suppression.ts';

/**
 * What happens to a submission from an authenticated host, on either route: validation,
 * sender policy, the address fields (postoffice/address-fields.ts), suppression,
 * idempotency, and the put into beanstalkd. The answer is the message id only once
 * beanstalkd has the job.
 */

export type Route = 'v1' | 'legacy';

export type Accept = (route: Route, client: AuthenticatedClient, body: unknown, idempotencyKey: string | undefined) => Promise<OrRejection<Accepted>>;

export interface AcceptanceDeps {
  logger: Logger;
  queue: JobQueue;
  metrics: PostofficeMetrics;
  now: () => number;
  /** Told about every job put, after the put (the store's record of the message, postoffice/queued-records.ts). */
  onQueued?: (record: QueuedRecord) => void;
  /** The shared store: idempotency keys across post offices and restarts, the suppression list. */
  store?: Store;
  storeHealth?: StoreHealth;
  /** This process, as its idempotency claims record it. */
  owner?: string;
  /** How long a claim may stay pending before another post office takes it over. */
  claimStaleMs?: number;
  /** Refused recipients: the `suppressed` log line is written here, the webhook event queued by this. */
  onSuppressed?: (context: { messageId: string | null; fqdn: string; mailfrom: string }, suppressed: ReadonlyMap<string, SuppressionEntry>) => void;
}

/** A claim pending longer than this was left by a post office that died or froze (longer than a put with failover takes). */
export const DEFAULT_CLAIM_STALE_MS = 30_000;

/**
 * A message id as a flat string. randomUUID() builds its result from about thirty
 * concatenated pieces, which V8 keeps as a tree of about 490 bytes; the id lives on in
 * the idempotency and status tables (up to 100,000 entries each), so copy it once.
 */
function newMessageId(): string {
  return Buffer.from(randomUUID(), 'latin1').toString('latin1');
}

/** `{id}`, and the recipients left out because they are suppressed when there are any. */
export function acceptedBody(accepted: Accepted): { id: string; suppressed?: string[] } {
  return accepted.suppressed.length > 0 ? { id: accepted.id, suppressed: accepted.suppressed } : { id: accepted.id };
}

const QUEUE_UNAVAILABLE = () => rejection(503, 'queue_unavailable', 'the queue is unavailable, retry later');

export interface Acceptance {
  accept: Accept;
  /** Gives the records still buffered for the store until `deadline` to reach it. */
  drain(deadline: number): Promise<void>;
}

export function createAcceptance(config: PostofficeConfig, deps: AcceptanceDeps): Acceptance {
  const { logger, metrics, now } = deps;
  const parseSubmission = createSubmissionParser(config.limits);
  const idempotencyOwner = deps.owner ?? `postoffice-${process.pid}-${randomUUID()}`;
  const idempotency = new IdempotencyStore({
    ttlSeconds: config.idempotencyTtlSeconds,
    maxEntries: config.idempotencyMaxEntries,
    ...(deps.store ? { store: deps.store } : {}),
    owner: idempotencyOwner,
    staleMs: deps.claimStaleMs ?? DEFAULT_CLAIM_STALE_MS,
    newMessageId,
    onStoreError: (err) => deps.storeHealth?.failed('idempotency_claim', err),
    suppressedOf: async (messageId) => (await deps.store?.getMessage(messageId))?.recipients.filter((r) => r.state === 'suppressed').map((r) => r.recipient) ?? [],
  });
  // The store's record of each queued message, written behind the request; keys whose record
  // reached the store are answered from there and leave memory.
  const records =
    deps.store && deps.storeHealth
      ? new QueuedRecords({
          store: deps.store,
          health: deps.storeHealth,
          logger,
          maxBuffered: config.storeBufferMaxEntries,
          onWritten: (written) => {
            for (const record of written) if (record.key) idempotency.forget(record.key.fqdn, record.key.key);
          },
          onDropped: (count) => metrics.storeRecordsDropped.inc(count),
        })
      : undefined;
  const onQueued = (record: QueuedRecord) => {
    records?.add(record);
    deps.onQueued?.(record);
  };

  async function enqueue(
    route: Route,
    client: AuthenticatedClient,
    submission: Submission,
    identity: { messageId: string; receivedAt: number; takenOver: boolean; key?: { fqdn: string; key: string } },
    suppressed: readonly string[],
  ): Promise<OrRejection<Accepted>> {
    const rcpttos = submission.rcpttos.filter((r) => !suppressed.includes(r));
    const job: OutboundJob = {
      v: 1,
      id: identity.messageId,
      fqdn: client.fqdn,
      mailfrom: submission.mailfrom,
      rcpttos,
      data: submission.data.toString('base64'),
      receivedAt: identity.receivedAt,
      attempts: 0,
      // The worker signs within what this host may use (shared/job.ts).
      senderDomains: client.policy.senderDomains,
    };
    try {
      const queued = await deps.queue.put(encodeJob(job));
      onQueued({
        id: job.id,
        fqdn: job.fqdn,
        mailfrom: job.mailfrom,
        rcpttos,
        receivedAt: job.receivedAt,
        size: submission.data.length,
        ref: { server: queued.server, jobId: queued.jobId },
        ...(identity.key ? { key: identity.key } : {}),
        ...(suppressed.length > 0 ? { suppressed } : {}),
      });
      metrics.accepted.inc({ route });
      logger.info({
        event: 'queued',
        route,
        messageId: job.id,
        fqdn: client.fqdn,
        mailfrom: job.mailfrom,
        rcpttos: job.rcpttos,
        rcptCount: job.rcpttos.length,
        size: submission.data.length,
        jobId: queued.jobId,
        server: queued.server,
        ...(suppressed.length > 0 ? { suppressed } : {}),
        // A claim taken over from a post office that died or froze mid-put: the worker delivers one copy.
        ...(identity.takenOver ? { takenOver: true } : {}),
      });
      return ok({ id: job.id, suppressed: [...suppressed] });
    } catch (err) {
      logger.error({ event: 'queue_failed', route, fqdn: client.fqdn, messageId: job.id, code: errorCode(err), error: errorMessage(err) });
      return QUEUE_UNAVAILABLE();
    }
  }

  async function accept(route: Route, client: AuthenticatedClient, body: unknown, idempotencyKey: string | undefined): Promise<OrRejection<Accepted>> {
    const parsed = parseSubmission(body);
    if (!parsed.ok) return parsed;
    const submission = parsed.value;
    if (!senderAllowed(submission.mailfrom, client.policy.senderDomains)) {
      return rejection(403, 'sender_domain_not_allowed', 'this client may not send from the domain of mailfrom', 'mailfrom');
    }
    const completed = completeAddressFields(submission.data, { mailfrom: submission.mailfrom, fqdn: client.fqdn, senderDomains: client.policy.senderDomains });
    if (client.policy.checkFromHeader) {
      const authors = checkAuthorDomains(completed.fields, client.policy.senderDomains);
      if (!authors.ok) return authors;
    }
    // The idempotency fingerprint stays that of the message as sent; the queue gets the completed one.
    const toQueue = { ...submission, data: completed.data };
    const found = await suppressedAmong(submission.rcpttos, { fqdn: client.fqdn, mailfrom: submission.mailfrom, now: now() }, { store: deps.store, config: config.suppression, health: deps.storeHealth });
    const suppressed = submission.rcpttos.filter((r) => found.has(r));
    if (suppressed.length > 0 && suppressed.length === submission.rcpttos.length) {
      deps.onSuppressed?.({ messageId: null, fqdn: client.fqdn, mailfrom: submission.mailfrom }, found);
      metrics.suppressed.inc(suppressed.length);
      return {
        ok: false,
        rejection: { status: 422, code: 'recipients_suppressed', message: `every recipient is on the suppression list (${suppressed.join(', ')}); nothing was queued`, field: 'rcpttos', suppressed },
      };
    }
    const tellSuppressed = (messageId: string) => {
      if (found.size === 0) return;
      metrics.suppressed.inc(suppressed.length);
      deps.onSuppressed?.({ messageId, fqdn: client.fqdn, mailfrom: submission.mailfrom }, found);
    };
    if (idempotencyKey === undefined) {
      const queued = await enqueue(route, client, toQueue, { messageId: newMessageId(), receivedAt: now(), takenOver: false }, suppressed);
      if (queued.ok) tellSuppressed(queued.value.id);
      return queued;
    }

    const claim = await idempotency.claim(client.fqdn, idempotencyKey, submissionFingerprint(submission), now());
    if (claim.status === 'mismatch') {
      return rejection(422, 'idempotency_key_reused', 'idempotency-key was already used for a different message', 'idempotency-key');
    }
    if (claim.status === 'busy') {
      return rejection(503, 'in_progress', 'another post office is queuing the message with this idempotency-key; retry later');
    }
    if (claim.status === 'duplicate') {
      try {
        const answer = await claim.answer;
        metrics.duplicates.inc({ route });
        logger.info({ event: 'duplicate', route, messageId: answer.id, fqdn: client.fqdn });
        return ok(answer);
      } catch {
        return QUEUE_UNAVAILABLE();
      }
    }
    const key = { fqdn: client.fqdn, key: idempotencyKey };
    const queued = await enqueue(route, client, toQueue, { messageId: claim.messageId, receivedAt: claim.receivedAt, takenOver: claim.takenOver, key }, suppressed);
    if (queued.ok) {
      claim.complete(queued.value);
      tellSuppressed(queued.value.id);
    } else {
      claim.fail(queued.rejection);
      // Whether the put landed is unknown: the next request with this key puts the same job again.
      if (deps.store) {
        await deps.store.openKey(key.fqdn, key.key, idempotencyOwner).catch((err: unknown) => deps.storeHealth?.failed('idempotency_open', err));
      }
    }
    return queued;
  }

  return { accept, drain: async (deadline) => records?.drain(deadline) };
}
