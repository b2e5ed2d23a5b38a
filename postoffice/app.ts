import fastify, { LogController, type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Registry } from 'prom-client';
import type { Logger } from '../shared/logger.ts';
import { createAcceptance, DEFAULT_CLAIM_STALE_MS, type AcceptanceDeps } from './acceptance.ts';
import { AuthThrottle } from './auth-throttle.ts';
import type { PostofficeConfig } from './config.ts';
import { createGate, isAuthRejection } from './gate.ts';
import { registerLegacyRoute } from './legacy-route.ts';
import { lingerBeforeClose } from './linger.ts';
import { MESSAGES_PATH, registerMessagesRoute, type RouteContext } from './messages-route.ts';
import { createPostofficeMetrics } from './metrics.ts';
import type { JobQueue } from './queue.ts';
import { errorBody, RejectionError, type Rejection } from './rejection.ts';
import { registerStatusRoute, type StatusRouteDeps } from './status.ts';
import { UploadBudget } from './upload.ts';

export { DEFAULT_CLAIM_STALE_MS, MESSAGES_PATH };

export interface PostofficeDeps extends Omit<AcceptanceDeps, 'metrics' | 'now'> {
  logger: Logger;
  queue: JobQueue;
  registry: Registry;
  /** PEM certificate and key: serve HTTPS instead of HTTP. */
  https?: { cert: Buffer | string; key: Buffer | string };
  /** Clock in milliseconds, for tests of the signature window. */
  now?: () => number;
  /** Serve GET /v1/messages/:id from the store (postoffice/status.ts). */
  status?: Omit<StatusRouteDeps, 'authenticate' | 'now'>;
}

export const RETRY_AFTER_SECONDS = 5;
const HEADROOM_BYTES = 64 * 1024;
const MAX_LOGGED_FQDN = 255;
/** Node's default time for a request's headers; the whole request gets that plus the body's time. */
const HEADERS_TIMEOUT_MS = 60_000;
const STORE_DRAIN_MS = 5000;

/** Largest JSON body worth reading: a base64-encoded maximal message plus the envelope. */
export function bodyLimitFor(maxMessageBytes: number): number {
  return Math.ceil((maxMessageBytes * 4) / 3) + HEADROOM_BYTES;
}

/** The form route carries the message JSON-escaped and then percent-encoded: allow more. */
export function legacyBodyLimitFor(maxMessageBytes: number): number {
  return maxMessageBytes * 3 + HEADROOM_BYTES;
}

/** Bytes of unauthenticated bodies held at most, by default: four of the largest JSON body. */
export function defaultPendingBodyBytes(maxMessageBytes: number): number {
  return 4 * bodyLimitFor(maxMessageBytes);
}

function rejectionForFastifyError(err: FastifyError): Rejection {
  if (err instanceof RejectionError) return err.rejection;
  switch (err.code) {
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return { status: 415, code: 'unsupported_media_type', message: 'unsupported content type' };
    default:
      if (err.statusCode && err.statusCode >= 400 && err.statusCode < 500) {
        return { status: err.statusCode, code: 'bad_request', message: 'malformed request' };
      }
      return { status: 500, code: 'internal_error', message: 'internal error' };
  }
}

export function buildApp(config: PostofficeConfig, deps: PostofficeDeps): FastifyInstance {
  const { logger, queue } = deps;
  const now = deps.now ?? Date.now;
  const metrics = createPostofficeMetrics(deps.registry);
  const throttle = new AuthThrottle(config.authFailures, { logger, now, onFailure: (reason) => metrics.authFailures.inc({ reason }) });
  const gate = createGate({ clients: config.clients, windowSeconds: config.signatureWindowSeconds, throttle, now });
  const uploads = { ...config.uploads, maxPendingBodyBytes: config.uploads.maxPendingBodyBytes ?? defaultPendingBodyBytes(config.limits.maxMessageBytes) };
  const budget = new UploadBudget(uploads);
  metrics.observeUploads(budget);

  // The https variant of fastify has a different server type parameter; nothing here
  // touches the raw server, so one instance type serves both.
  const app = fastify({
    loggerInstance: logger,
    // Our own lines (queued / rejected) replace fastify's per-request log lines.
    logController: new LogController({ disableRequestLogging: true }),
    trustProxy: config.trustProxy,
    // A backstop for every route (Node checks it every 30 s); the bodies we read have their own deadline.
    requestTimeout: HEADERS_TIMEOUT_MS + uploads.bodyTimeoutMs,
    ...(deps.https ? { https: deps.https } : {}),
  }) as unknown as FastifyInstance;
  app.addHook('onClose', async () => throttle.close());

  function reject(request: FastifyRequest, reply: FastifyReply, route: string, r: Rejection, fqdn?: string): FastifyReply {
    metrics.rejected.inc({ reason: r.code });
    // Authentication failures are logged by the throttle, one line per client and interval.
    if (!isAuthRejection(r)) {
      const entry = { event: 'rejected', route, reason: r.code, status: r.status, field: r.field, fqdn: fqdn?.slice(0, MAX_LOGGED_FQDN), ip: request.ip };
      if (r.status >= 500) logger.warn(entry);
      else logger.info(entry);
    }
    const retryAfter = r.retryAfterSeconds ?? (r.status === 503 ? RETRY_AFTER_SECONDS : undefined);
    if (retryAfter !== undefined) reply.header('retry-after', String(retryAfter));
    // Answered before its body was read in full: close the connection rather than read the rest.
    if (!request.raw.complete) {
      reply.header('connection', 'close');
      lingerBeforeClose(request.raw);
    }
    return reply.code(r.status).send(errorBody(r));
  }

  const { https: _https, registry: _registry, status: _status, now: _now, ...acceptanceDeps } = deps;
  const acceptance = createAcceptance(config, { ...acceptanceDeps, metrics, now });
  const ctx: RouteContext = {
    gate,
    budget,
    accept: acceptance.accept,
    reject,
    now,
    bodyTimeoutMs: uploads.bodyTimeoutMs,
  };

  // Bodies are read by the routes' own parsers only (postoffice/upload.ts, legacy-form.ts).
  app.removeAllContentTypeParsers();

  app.setErrorHandler((err: FastifyError, request, reply) => {
    const r = rejectionForFastifyError(err);
    if (r.status >= 500 && !(err instanceof RejectionError)) logger.error({ event: 'internal_error', err }, 'unhandled error in request');
    return reject(request, reply, request.routeOptions.url ?? 'unmatched', r);
  });
  const notFound: Rejection = { status: 404, code: 'not_found', message: 'no such route' };
  app.setNotFoundHandler((request, reply) => reject(request, reply, 'unmatched', notFound));
  // A request for no route is answered before its body (if any) is read.
  app.addHook('onRequest', async (request, reply) => {
    if (request.is404) return reject(request, reply, 'unmatched', notFound);
    return undefined;
  });

  // app.close() only closes connections idle at that moment; a keep-alive connection
  // whose request was still in flight would hold close() for the keep-alive timeout.
  let closing = false;
  app.addHook('preClose', async () => {
    closing = true;
  });
  // After the last request: what is still buffered for the store gets a few seconds to reach it.
  app.addHook('onClose', async () => {
    await acceptance.drain(Date.now() + STORE_DRAIN_MS);
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

  registerMessagesRoute(app, ctx, { bodyLimit: bodyLimitFor(config.limits.maxMessageBytes), windowSeconds: config.signatureWindowSeconds });
  if (config.legacy.enabled) registerLegacyRoute(app, ctx, { path: config.legacy.path, bodyLimit: legacyBodyLimitFor(config.limits.maxMessageBytes) });
  if (deps.status) registerStatusRoute(app, { ...deps.status, authenticate: (request) => gate.signedRequest(request), now });

  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_request, reply) => {
    const ready = queue.isReady();
    return reply.code(ready ? 200 : 503).send({ status: ready ? 'ready' : 'not_ready' });
  });
  app.get('/metrics', async (_request, reply) => reply.type(deps.registry.contentType).send(await deps.registry.metrics()));

  return app;
}
