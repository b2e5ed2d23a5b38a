import type { FastifyRequest } from 'fastify';
import type { SignedBody } from '../shared/signing.ts';
import { authenticateLegacyCredentials, checkSignedHeaders, verifySignedBody, type AuthenticatedClient, type ClientPolicy, type SignedCaller, type SignedHeaders } from './auth.ts';
import type { AuthThrottle } from './auth-throttle.ts';
import type { OrRejection, Rejection } from './rejection.ts';

/**
 * Where every request is authenticated (postoffice/auth.ts checks, postoffice/auth-throttle.ts
 * counts): each failure is counted for the client's address (and the fqdn it named), a
 * throttled client is answered 429 before any work, a success clears its count. Failures are
 * logged by the throttle, aggregated; the routes do not log them one by one.
 */
export interface Gate {
  /** Before the body of a signed request: throttle, headers, enrolled fqdn, timestamp. */
  signedHeaders(request: FastifyRequest): OrRejection<SignedHeaders>;
  /** After its body: the signature. */
  signedBody(request: FastifyRequest, headers: SignedHeaders, body: SignedBody): OrRejection<SignedCaller>;
  /** Both, for a request without a body (GET /v1/messages/:id). */
  signedRequest(request: FastifyRequest): OrRejection<SignedCaller>;
  /** Before the body of a form request: only the throttle of its address. */
  address(request: FastifyRequest): OrRejection<void>;
  /** The form route's credentials, as soon as they are read. */
  legacy(request: FastifyRequest, fqdn: string | undefined, key: string | undefined): OrRejection<AuthenticatedClient>;
  /** A 401 decided elsewhere (a replayed signature): counted like the others. */
  refused(request: FastifyRequest, fqdn: string, r: Rejection): void;
}

function throttled(seconds: number): { ok: false; rejection: Rejection } {
  return { ok: false, rejection: { status: 429, code: 'too_many_auth_failures', message: 'too many authentication failures from this address; retry later', retryAfterSeconds: seconds } };
}

/** Whether a rejection is the gate's own (counted and logged by the throttle, not per request). */
export function isAuthRejection(r: Rejection): boolean {
  return r.status === 401 || r.code === 'too_many_auth_failures';
}

export function createGate(options: { clients: Readonly<Record<string, ClientPolicy>>; windowSeconds: number; throttle: AuthThrottle; now: () => number }): Gate {
  const { clients, throttle } = options;
  const timing = () => ({ nowMs: options.now(), windowSeconds: options.windowSeconds });
  const sentFqdn = (request: FastifyRequest) => (typeof request.headers['x-hedwig-fqdn'] === 'string' ? request.headers['x-hedwig-fqdn'] : undefined);

  function counted<T extends { fqdn: string }>(request: FastifyRequest, fqdn: string | undefined, result: OrRejection<T>): OrRejection<T> {
    if (result.ok) throttle.succeeded(request.ip, result.value.fqdn);
    else if (result.rejection.status === 401) throttle.failed(request.ip, fqdn, result.rejection.detail ?? result.rejection.code);
    return result;
  }

  const gate: Gate = {
    signedHeaders(request) {
      const fqdn = sentFqdn(request);
      const wait = throttle.retryAfter(request.ip, fqdn);
      if (wait !== undefined) return throttled(wait);
      const headers = checkSignedHeaders(clients, request.headers, timing());
      if (!headers.ok) throttle.failed(request.ip, fqdn, headers.rejection.detail ?? headers.rejection.code);
      return headers;
    },
    signedBody(request, headers, body) {
      return counted(request, headers.fqdn, verifySignedBody(headers, { method: request.method, url: request.raw.url ?? request.url, ...body }, timing()));
    },
    signedRequest(request) {
      const headers = gate.signedHeaders(request);
      return headers.ok ? gate.signedBody(request, headers.value, { body: Buffer.alloc(0) }) : headers;
    },
    address(request) {
      const wait = throttle.retryAfter(request.ip);
      return wait === undefined ? { ok: true, value: undefined } : throttled(wait);
    },
    refused(request, fqdn, r) {
      throttle.failed(request.ip, fqdn, r.detail ?? r.code);
    },
    legacy(request, fqdn, key) {
      const wait = throttle.retryAfter(request.ip, fqdn);
      if (wait !== undefined) return throttled(wait);
      return counted(request, fqdn, authenticateLegacyCredentials(clients, fqdn, key));
    },
  };
  return gate;
}
