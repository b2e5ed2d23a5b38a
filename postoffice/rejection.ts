/**
 * Every error the post office answers with. `code` is the stable `error` field of the
 * JSON body; `field` names the offending input when there is one.
 */
export interface Rejection {
  status: number;
  code: string;
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

export function rejection(status: number, code: string, message: string, field?: string): { ok: false; rejection: Rejection } {
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
