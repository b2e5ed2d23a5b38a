import type { FastifyInstance, FastifyRequest } from 'fastify';
import { acceptedBody } from './acceptance.ts';
import type { AuthenticatedClient } from './auth.ts';
import { parseJsonBody } from './json-body.ts';
import { readLegacyForm, type LegacyForm } from './legacy-form.ts';
import { admit, type Admitted, type RouteContext } from './messages-route.ts';
import { RejectionError } from './rejection.ts';
import { BUSY } from './upload.ts';

/**
 * The hedwig-compatible form route (`legacy.path`): fqdn, key and email in an
 * `application/x-www-form-urlencoded` body, answered 200. The key is checked as soon as it
 * has been read (postoffice/legacy-form.ts); the message only after that.
 */
export function registerLegacyRoute(app: FastifyInstance, ctx: RouteContext, options: { path: string; bodyLimit: number }): void {
  const admitted = new WeakMap<FastifyRequest, Admitted<undefined>>();

  void app.register(async (scope) => {
    scope.addContentTypeParser('application/x-www-form-urlencoded', (request, payload, done) => {
      const upload = admitted.get(request);
      if (!upload) return done(new RejectionError(BUSY), undefined);
      const length = request.headers['content-length'];
      void readLegacyForm(payload, {
        slot: upload.slot,
        limit: options.bodyLimit,
        deadlineMs: upload.deadlineMs,
        timeoutMs: ctx.bodyTimeoutMs,
        ...(length === undefined ? {} : { declaredLength: Number(length) }),
        authenticate: (fqdn, key) => ctx.gate.legacy(request, fqdn, key),
      }).then((result) => (result.ok ? done(null, result.value) : done(new RejectionError(result.rejection), undefined)));
    });

    scope.post(
      options.path,
      {
        onRequest: async (request, reply) => {
          const allowed = ctx.gate.address(request);
          if (!allowed.ok) return ctx.reject(request, reply, 'legacy', allowed.rejection);
          const slot = admit(ctx, request, reply, options.bodyLimit);
          if (!slot.ok) return ctx.reject(request, reply, 'legacy', slot.rejection);
          admitted.set(request, { caller: undefined, slot: slot.value, deadlineMs: Date.now() + ctx.bodyTimeoutMs });
          return undefined;
        },
      },
      async (request, reply) => {
        // No body at all: nothing to authenticate with.
        let form = request.body as LegacyForm<AuthenticatedClient> | undefined;
        if (form === undefined) {
          const auth = ctx.gate.legacy(request, undefined, undefined);
          if (!auth.ok) return ctx.reject(request, reply, 'legacy', auth.rejection);
          form = { client: auth.value, email: undefined };
        }
        // Authenticated by now (the key is in the form): see messages-route.ts on the budget.
        admitted.get(request)?.slot.release();
        const { client, email } = form;
        if (email === undefined) {
          return ctx.reject(request, reply, 'legacy', { status: 400, code: 'invalid_request', message: 'email is required', field: 'email' }, client.fqdn);
        }
        const json = parseJsonBody(email, 'email');
        const outcome = json.ok ? await ctx.accept('legacy', client, json.value, undefined) : json;
        if (!outcome.ok) return ctx.reject(request, reply, 'legacy', outcome.rejection, client.fqdn);
        return reply.code(200).send(acceptedBody(outcome.value));
      },
    );
  });
}
