import { randomUUID } from 'node:crypto';
import formbody from '@fastify/formbody';
import fastify, { LogController, type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Registry } from 'prom-client';
import { errorCode, errorMessage } from '../shared/errors.ts';
import { encodeJob, type OutboundJob } from '../shared/job.ts';
import type { Logger } from '../shared/logger.ts';
import { authenticateLegacyCredentials, authenticateSignedRequest, type AuthenticatedClient } from './auth.ts';
import type { PostofficeConfig } from './config.ts';
import { checkAuthorDomains, completeAddressFields } from './address-fields.ts';
import type { StoreHealth } from '../shared/store/health.ts';
import type { QueuedRecord, Store, SuppressionEntry } from '../shared/store/store.ts';
import { IdempotencyStore, type Accepted } from './idempotency.ts';
import { QueuedRecords } from './queued-records.ts';
import { parseJsonBody } from './json-body.ts';
import { createPostofficeMetrics, type PostofficeMetrics } from './metrics.ts';
import type { JobQueue, QueuedJob } from './queue.ts';
import { errorBody, ok, rejection, type OrRejection, type Rejection } from './rejection.ts';
import { ReplayGuard } from './replay-guard.ts';
import { createSubmissionParser, senderAllowed, submissionFingerprint, type Submission } from './submission.ts';
import { suppressedAmong } from './suppression.ts';

export interface PostofficeDeps {
  logger: Logger;
  queue: JobQueue;
  registry: Registry;
  /** PEM certificate and key: serve HTTPS instead of HTTP. */
  https?: { cert: Buffer | string; key: Buffer | string };
  /** Clock in milliseconds, for tests of the signature window. */
  now?: () => number;
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

type Route = 'v1' | 'legacy';

export const MESSAGES_PATH = '/v1/messages';
/** A claim pending longer than this was left by a post office that died or froze (longer than a put with failover takes). */
export const DEFAULT_CLAIM_STALE_MS = 30_000;
const STORE_DRAIN_MS = 5000;
export const RETRY_AFTER_SECONDS = 5;
const HEADROOM_BYTES = 64 * 1024;
const IDEMPOTENCY_KEY = /^[\x21-\x7e]{1,200}$/;
const MAX_LOGGED_FQDN = 255;

/**
 * A message id as a flat string. randomUUID() builds its result from about thirty
 * concatenated pieces, which V8 keeps as a tree of about 490 bytes; the id lives on in
 * the idempotency and status tables (up to 100,000 entries each), so copy it once.
 */
function newMessageId(): string {
  return Buffer.from(randomUUID(), 'latin1').toString('latin1');
}

/** Largest JSON body worth reading: a base64-encoded maximal message plus the envelope. */
export function bodyLimitFor(maxMessageBytes: number): number {
  return Math.ceil((maxMessageBytes * 4) / 3) + HEADROOM_BYTES;
}

/** The form route carries the message JSON-escaped and then percent-encoded: allow more. */
export function legacyBodyLimitFor(maxMessageBytes: number): number {
  return maxMessageBytes * 3 + HEADROOM_BYTES;
}

function rejectionForFastifyError(err: FastifyError, maxMessageBytes: number): Rejection {
  switch (err.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return { status: 413, code: 'message_too_large', message: `request body too large for a message of at most ${maxMessageBytes} bytes` };
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return { status: 415, code: 'unsupported_media_type', message: 'unsupported content type' };
    default:
      if (err.statusCode && err.statusCode >= 400 && err.statusCode < 500) {
        return { status: err.statusCode, code: 'bad_request', message: 'malformed request' };
      }
      return { status: 500, code: 'internal_error', message: 'internal error' };
  }
}

/** `{id}`, and the recipients left out because they are suppressed when there are any. */
function acceptedBody(accepted: Accepted): { id: string; suppressed?: string[] } {
  return accepted.suppressed.length > 0 ? { id: accepted.id, suppressed: accepted.suppressed } : { id: accepted.id };
}

function formField(form: Record<string, unknown>, name: string): string | undefined {
  const value = form[name];
  return typeof value === 'string' ? value : undefined;
}

/**
 * The HTTP API of the post office. Pure wiring: no sockets are opened until the caller
 * listens, so tests drive it with `app.inject`.
 */
export function buildApp(config: PostofficeConfig, deps: PostofficeDeps): FastifyInstance {
  const { logger, queue } = deps;
  const now = deps.now ?? Date.now;
  const metrics: PostofficeMetrics = createPostofficeMetrics(deps.registry);
  const parseSubmission = createSubmissionParser(config.limits);
  const replayGuard = new ReplayGuard();
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
  const windowSeconds = config.signatureWindowSeconds;

  // The https variant of fastify has a different server type parameter; nothing here
  // touches the raw server, so one instance type serves both.
  const app = fastify({
    loggerInstance: logger,
    // Our own lines (queued / rejected) replace fastify's per-request log lines.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: bodyLimitFor(config.limits.maxMessageBytes),
    trustProxy: config.trustProxy,
    ...(deps.https ? { https: deps.https } : {}),
  }) as unknown as FastifyInstance;

  function reject(request: FastifyRequest, reply: FastifyReply, route: string, r: Rejection, fqdn?: string): FastifyReply {
    metrics.rejected.inc({ reason: r.code });
    const entry = { event: 'rejected', route, reason: r.code, detail: r.detail, status: r.status, field: r.field, fqdn: fqdn?.slice(0, MAX_LOGGED_FQDN), ip: request.ip };
    if (r.status >= 500) logger.warn(entry);
    else logger.info(entry);
    if (r.status === 503) reply.header('retry-after', String(RETRY_AFTER_SECONDS));
    return reply.code(r.status).send(errorBody(r));
  }

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
      const queued = await queue.put(encodeJob(job));
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
      return rejection(503, 'queue_unavailable', 'the queue is unavailable, retry later');
    }
  }

  /** Validation, policy, suppression, idempotency and the put: shared by both routes. */
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
        return rejection(503, 'queue_unavailable', 'the queue is unavailable, retry later');
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

  // Signed requests need the exact body bytes for the digest: keep JSON as a Buffer
  // and parse it only after the signature checked out.
  app.removeContentTypeParser(['application/json', 'text/plain']);
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (_request, body, done) => done(null, body));

  app.setErrorHandler((err: FastifyError, request, reply) => {
    const r = rejectionForFastifyError(err, config.limits.maxMessageBytes);
    if (r.status >= 500) logger.error({ event: 'internal_error', err }, 'unhandled error in request');
    return reject(request, reply, request.routeOptions.url ?? 'unmatched', r);
  });
  app.setNotFoundHandler((request, reply) => reject(request, reply, 'unmatched', { status: 404, code: 'not_found', message: 'no such route' }));

  // app.close() only closes connections idle at that moment; a keep-alive connection
  // whose request was still in flight would hold close() for the keep-alive timeout.
  let closing = false;
  app.addHook('preClose', async () => {
    closing = true;
  });
  // After the last request: what is still buffered for the store gets a few seconds to reach it.
  app.addHook('onClose', async () => {
    await records?.drain(Date.now() + STORE_DRAIN_MS);
  });
  app.addHook('onSend', async (_request, reply) => {
    if (closing) reply.header('connection', 'close');
  });

  app.addHook('onResponse', async (request, reply) => {
    metrics.requestDuration.observe(
      { route: request.routeOptions.url ?? 'unmatched', method: request.method, status: String(reply.statusCode) },
      reply.elapsedTime / 1000,
    );
  });

  app.post(MESSAGES_PATH, async (request, reply) => {
    const raw = request.body === undefined || request.body === null ? Buffer.alloc(0) : request.body;
    if (!Buffer.isBuffer(raw)) return reject(request, reply, 'v1', { status: 415, code: 'unsupported_media_type', message: 'send application/json' });
    const sentFqdn = typeof request.headers['x-hedwig-fqdn'] === 'string' ? request.headers['x-hedwig-fqdn'] : undefined;
    const nowMs = now();
    const auth = authenticateSignedRequest(
      config.clients,
      { method: request.method, url: request.raw.url ?? request.url, headers: request.headers, body: raw },
      { nowMs, windowSeconds },
    );
    if (!auth.ok) return reject(request, reply, 'v1', auth.rejection, sentFqdn);
    const caller = auth.value;
    if (caller.idempotencyKey !== undefined && !IDEMPOTENCY_KEY.test(caller.idempotencyKey)) {
      return reject(request, reply, 'v1', { status: 400, code: 'invalid_request', message: 'idempotency-key must be 1-200 printable ASCII characters', field: 'idempotency-key' }, caller.fqdn);
    }
    // A request with an idempotency key cannot queue twice, so an identical resend is
    // answered like any retry (same id). Without one, an exact resend is a replay.
    const replayGuarded = caller.idempotencyKey === undefined;
    if (replayGuarded && !replayGuard.claim(caller.signature, (caller.timestamp + windowSeconds) * 1000, nowMs)) {
      return reject(request, reply, 'v1', { status: 401, code: 'replayed', message: 'this exact request was already received' }, caller.fqdn);
    }
    let outcome: OrRejection<Accepted> | undefined;
    try {
      const json = parseJsonBody(raw);
      outcome = json.ok ? await accept('v1', caller, json.value, caller.idempotencyKey) : json;
    } finally {
      // Only an accepted request stays "seen": the client may resend a failed one as is.
      if (replayGuarded && !outcome?.ok) replayGuard.release(caller.signature);
    }
    if (!outcome.ok) return reject(request, reply, 'v1', outcome.rejection, caller.fqdn);
    return reply.code(202).send(acceptedBody(outcome.value));
  });

  if (config.legacy.enabled) {
    // Encapsulated so that form bodies are parsed for the legacy route only.
    void app.register(async (scope) => {
      await scope.register(formbody);
      scope.post(config.legacy.path, { bodyLimit: legacyBodyLimitFor(config.limits.maxMessageBytes) }, async (request, reply) => {
        const form = request.body;
        if (form === null || typeof form !== 'object' || Buffer.isBuffer(form)) {
          return reject(request, reply, 'legacy', { status: 415, code: 'unsupported_media_type', message: 'send application/x-www-form-urlencoded' });
        }
        const fields = form as Record<string, unknown>;
        const sentFqdn = formField(fields, 'fqdn');
        const auth = authenticateLegacyCredentials(config.clients, sentFqdn, formField(fields, 'key'));
        if (!auth.ok) return reject(request, reply, 'legacy', auth.rejection, sentFqdn);
        const email = formField(fields, 'email');
        if (email === undefined) {
          return reject(request, reply, 'legacy', { status: 400, code: 'invalid_request', message: 'email is required', field: 'email' }, auth.value.fqdn);
        }
        const json = parseJsonBody(Buffer.from(email, 'utf8'), 'email');
        const outcome = json.ok ? await accept('legacy', auth.value, json.value, undefined) : json;
        if (!outcome.ok) return reject(request, reply, 'legacy', outcome.rejection, auth.value.fqdn);
        return reply.code(200).send(acceptedBody(outcome.value));
      });
    });
  }

  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_request, reply) => {
    const ready = queue.isReady();
    return reply.code(ready ? 200 : 503).send({ status: ready ? 'ready' : 'not_ready' });
  });
  app.get('/metrics', async (_request, reply) => reply.type(deps.registry.contentType).send(await deps.registry.metrics()));

  return app;
}
