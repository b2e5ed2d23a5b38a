/**
 * Every `error` code the post office answers with, in one table (the HTTP counterpart of
 * shared/errors.ts's ERROR_CODES; snake_case, part of the API): the compiler refuses a code
 * not declared here, and the README's answers table is checked against it
 * (test/unit/postoffice-rejection.test.ts).
 */
export const REJECTION_CODES = {
  invalid_json: 'the body (or the form route\'s email field) is not JSON',
  invalid_request: 'a field is missing, mistyped or invalid; `field` names it',
  invalid_utf8: 'the JSON body is not UTF-8; `field` names where',
  bad_request: 'the request is malformed HTTP the app still saw (e.g. a body shorter than its content-length)',
  missing_signature: 'x-hedwig-fqdn, x-hedwig-timestamp or x-hedwig-signature is missing',
  bad_timestamp: 'x-hedwig-timestamp is not Unix seconds',
  stale_timestamp: 'x-hedwig-timestamp is outside the signature window',
  bad_signature: 'the signature does not match, or the fqdn is not enrolled',
  replayed: 'this exact signed request was already received',
  bad_credentials: 'the form route: unknown fqdn or wrong key',
  sender_domain_not_allowed: 'mailfrom is not in the host\'s senderDomains',
  from_domain_not_allowed: 'a From: or Sender: domain is not in the host\'s senderDomains',
  not_found: 'no such route',
  not_queued: 'GET /v1/messages/:id: no such message (for this host)',
  body_timeout: 'the body did not arrive within uploads.bodyTimeoutMs',
  message_too_large: 'over limits.maxMessageBytes',
  unsupported_media_type: 'not JSON / form',
  idempotency_key_reused: 'the same idempotency key with a different message',
  recipients_suppressed: 'every recipient is on the suppression list',
  too_many_auth_failures: 'this address failed to authenticate too often (authFailures)',
  internal_error: 'an unexpected error (logged as internal_error)',
  queue_unavailable: 'no beanstalkd can take the job',
  in_progress: 'another post office is queuing the message with this idempotency key',
  busy: 'too many unauthenticated bodies in progress (uploads)',
  store_unavailable: 'GET /v1/messages/:id: the store does not answer',
} as const satisfies Record<string, string>;

export type RejectionCode = keyof typeof REJECTION_CODES;

/**
 * Every error the post office answers with. `code` is the stable `error` field of the
 * JSON body; `field` names the offending input when there is one.
 */
export interface Rejection {
  status: number;
  code: RejectionCode;
  message: string;
  field?: string;
  /** For the server's log only, never sent: what `code` deliberately does not tell (e.g. `unknown_fqdn`). */
  detail?: string;
  /** recipients_suppressed: the recipients on the suppression list. */
  suppressed?: string[];
  /** Sent as Retry-After (429, 503). */
  retryAfterSeconds?: number;
}

/** A rejection raised where fastify wants an Error (a content-type parser); the error handler answers it. */
export class RejectionError extends Error {
  readonly rejection: Rejection;
  readonly statusCode: number;
  constructor(rejection: Rejection) {
    super(rejection.message);
    this.name = 'RejectionError';
    this.rejection = rejection;
    this.statusCode = rejection.status;
  }
}

/** What a check of a request gives: the checked value, or the rejection to answer with. */
export type OrRejection<T> = { ok: true; value: T } | { ok: false; rejection: Rejection };

export function rejection(status: number, code: RejectionCode, message: string, field?: string): { ok: false; rejection: Rejection } {
  return { ok: false, rejection: field === undefined ? { status, code, message } : { status, code, message, field } };
}

export function ok<T>(value: T): { ok: true; value: T } {
  return { ok: true, value };
}

/** The flat JSON body sent to clients: never a stack trace, never the input echoed back. */
export function errorBody(r: Rejection): { error: string; message: string; field?: string; suppressed?: string[] } {
  return {
    error: r.code,
    message: r.message,
    ...(r.field !== undefined ? { field: r.field } : {}),
    ...(r.suppressed !== undefined ? { suppressed: r.suppressed } : {}),
  };
}
