import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { acceptedBody, type Accept } from './acceptance.ts';
import type { Accepted } from './idempotency.ts';
import type { SignedHeaders } from './auth.ts';
import type { Gate } from './gate.ts';
import { parseJsonBody } from './json-body.ts';
import { RejectionError, type OrRejection, type Rejection } from './rejection.ts';
import { ReplayGuard } from './replay-guard.ts';
import { BUSY, readBody, tooLarge, type UploadBudget, type UploadSlot } from './upload.ts';

/**
 * `POST /v1/messages`, the signed JSON API. The headers are checked before the body is
 * read (throttle, enrolled fqdn, timestamp: postoffice/gate.ts); the body is then read
 * under the bounds of postoffice/upload.ts and hashed as it arrives, and the signature
 * is checked against that digest before the body is parsed at all.
 */

export const MESSAGES_PATH = '/v1/messages';
const IDEMPOTENCY_KEY = /^[\x21-\x7e]{1,200}$/;

export interface RouteContext {
  gate: Gate;
  budget: UploadBudget;
  accept: Accept;
  reject(request: FastifyRequest, reply: FastifyReply, route: string, r: Rejection, fqdn?: string): FastifyReply;
  now(): number;
  bodyTimeoutMs: number;
}

/** A body admitted to be read: for whom, its share of the budget, and by when it must be in. */
export interface Admitted<T> {
  caller: T;
  slot: UploadSlot;
  deadlineMs: number;
}

/**
 * Takes an upload slot for the request, released once the request is authenticated, or
 * when its response is done (or its connection gone): 413 when it announces more than `limit`, 503 busy when no slot is free.
 */
export function admit(ctx: RouteContext, request: FastifyRequest, reply: FastifyReply, limit: number): OrRejection<UploadSlot> {
  const declared = declaredLength(request);
  if (declared !== undefined && declared > limit) return { ok: false, rejection: tooLarge(limit) };
  const slot = ctx.budget.admit(request.ip, declared !== undefined && Number.isFinite(declared) ? declared : 0);
  if (!slot) return { ok: false, rejection: BUSY };
  reply.raw.once('close', slot.release);
  return { ok: true, value: slot };
}

function declaredLength(request: FastifyRequest): number | undefined {
  const value = request.headers['content-length'];
  return value === undefined ? undefined : Number(value);
}

export function registerMessagesRoute(app: FastifyInstance, ctx: RouteContext, options: { bodyLimit: number; windowSeconds: number }): void {
  const replayGuard = new ReplayGuard();
  const admitted = new WeakMap<FastifyRequest, Admitted<SignedHeaders>>();

  void app.register(async (scope) => {
    scope.addContentTypeParser('application/json', (request, payload, done) => {
      const upload = admitted.get(request);
      if (!upload) return done(new RejectionError(BUSY), undefined);
      void readBody(payload, { slot: upload.slot, limit: options.bodyLimit, deadlineMs: upload.deadlineMs, timeoutMs: ctx.bodyTimeoutMs, declaredLength: declaredLength(request) }).then((result) =>
        result.ok ? done(null, result) : done(new RejectionError(result.rejection), undefined),
      );
    });

    scope.post(
      MESSAGES_PATH,
      {
        onRequest: async (request, reply) => {
          const headers = ctx.gate.signedHeaders(request);
          if (!headers.ok) return ctx.reject(request, reply, 'v1', headers.rejection, typeof request.headers['x-hedwig-fqdn'] === 'string' ? request.headers['x-hedwig-fqdn'] : undefined);
          const slot = admit(ctx, request, reply, options.bodyLimit);
          if (!slot.ok) return ctx.reject(request, reply, 'v1', slot.rejection, headers.value.fqdn);
          admitted.set(request, { caller: headers.value, slot: slot.value, deadlineMs: Date.now() + ctx.bodyTimeoutMs });
          return undefined;
        },
      },
      async (request, reply) => {
        const upload = admitted.get(request)!;
        // No body at all (no content-type, length 0): the empty body is what was signed.
        const read = (request.body ?? { body: Buffer.alloc(0), sha256: undefined }) as { body: Buffer; sha256: string | undefined };
        const auth = ctx.gate.signedBody(request, upload.caller, read.sha256 === undefined ? { body: read.body } : { bodySha256: read.sha256 });
        if (!auth.ok) return ctx.reject(request, reply, 'v1', auth.rejection, upload.caller.fqdn);
        // The budget bounds bodies nobody has vouched for yet; an enrolled host's signed request
        // no longer counts against it while it waits on beanstalkd, or a mailman forwarding more
        // than maxPendingBodiesPerAddress messages at once would be answered 503 busy.
        upload.slot.release();
        const caller = auth.value;
        if (caller.idempotencyKey !== undefined && !IDEMPOTENCY_KEY.test(caller.idempotencyKey)) {
          return ctx.reject(request, reply, 'v1', { status: 400, code: 'invalid_request', message: 'idempotency-key must be 1-200 printable ASCII characters', field: 'idempotency-key' }, caller.fqdn);
        }
        // A request with an idempotency key cannot queue twice, so an identical resend is
        // answered like any retry (same id). Without one, an exact resend is a replay.
        const nowMs = ctx.now();
        const replayGuarded = caller.idempotencyKey === undefined;
        if (replayGuarded && !replayGuard.claim(caller.signature, (caller.timestamp + options.windowSeconds) * 1000, nowMs)) {
          const replayed: Rejection = { status: 401, code: 'replayed', message: 'this exact request was already received' };
          ctx.gate.refused(request, caller.fqdn, replayed);
          return ctx.reject(request, reply, 'v1', replayed, caller.fqdn);
        }
        let outcome: OrRejection<Accepted> | undefined;
        try {
          const json = parseJsonBody(read.body);
          outcome = json.ok ? await ctx.accept('v1', caller, json.value, caller.idempotencyKey) : json;
        } finally {
          // Only an accepted request stays "seen": the client may resend a failed one as is.
          if (replayGuarded && !outcome?.ok) replayGuard.release(caller.signature);
        }
        if (!outcome.ok) return ctx.reject(request, reply, 'v1', outcome.rejection, caller.fqdn);
        return reply.code(202).send(acceptedBody(outcome.value));
      },
    );
  });
}
