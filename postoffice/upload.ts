import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { z } from 'zod';
import { sourceOf } from './auth-throttle.ts';
import type { Rejection } from './rejection.ts';

/**
 * Request bodies that are read before their sender is authenticated, and their bounds
 * (issue 12.6: 40 stalled uploads took the post office from 109 to 571 MB, and a body
 * trickled one byte every 5 s was never cut).
 *
 * What can be checked from the headers is checked before any body byte is read (see
 * postoffice/gate.ts); what cannot (the signature covers the body, the form route's key is
 * in it) is read under three bounds:
 * - time: the whole body within `bodyTimeoutMs` of the request's headers, else 408 and the
 *   connection is closed;
 * - count: at most `maxPendingBodies` such bodies at once, `maxPendingBodiesPerAddress`
 *   from one client address (IPv6: per /64), else 503 `busy` with Retry-After;
 * - memory: the bytes they hold together stay under `maxPendingBodyBytes`, else the body
 *   that would cross it gets 503 `busy`.
 * A slot is held until the request is authenticated (or answered, or its connection gone):
 * the bounds are for bodies nobody has vouched for; an enrolled host's requests waiting on
 * beanstalkd do not count against its address.
 */

export const uploadsConfigSchema = z
  .object({
    bodyTimeoutMs: z.number().int().positive().default(60_000),
    maxPendingBodies: z.number().int().positive().default(64),
    maxPendingBodiesPerAddress: z.number().int().positive().default(8),
    /** Default: four bodies of the largest size (postoffice/config.ts). */
    maxPendingBodyBytes: z.number().int().positive().optional(),
  })
  .strict()
  .prefault({});
export type UploadsConfig = z.infer<typeof uploadsConfigSchema>;

export const BUSY_RETRY_AFTER_SECONDS = 5;

/** A body being read: what it holds of the shared budget, until `release`. */
export interface UploadSlot {
  /** Counts `bytes` more against the budget; false (nothing counted) when that would cross it. */
  take(bytes: number): boolean;
  release(): void;
}

export class UploadBudget {
  readonly #limits: Required<UploadsConfig>;
  #pending = 0;
  #bytes = 0;
  readonly #perSource = new Map<string, number>();

  constructor(limits: Required<UploadsConfig>) {
    this.#limits = limits;
  }

  get pendingBodies(): number {
    return this.#pending;
  }

  get pendingBytes(): number {
    return this.#bytes;
  }

  /**
   * A slot for one more body from `ip`, or undefined when there are too many already, or
   * when the `declaredBytes` it announces (content-length) would not fit what is left: such
   * a body is refused before any of it is read.
   */
  admit(ip: string, declaredBytes = 0): UploadSlot | undefined {
    const source = sourceOf(ip);
    const fromSource = this.#perSource.get(source) ?? 0;
    if (this.#pending >= this.#limits.maxPendingBodies || fromSource >= this.#limits.maxPendingBodiesPerAddress) return undefined;
    if (this.#bytes + declaredBytes > this.#limits.maxPendingBodyBytes) return undefined;
    this.#pending++;
    this.#perSource.set(source, fromSource + 1);
    let held = 0;
    let released = false;
    return {
      take: (bytes) => {
        if (released || this.#bytes + bytes > this.#limits.maxPendingBodyBytes) return false;
        this.#bytes += bytes;
        held += bytes;
        return true;
      },
      release: () => {
        if (released) return;
        released = true;
        this.#bytes -= held;
        this.#pending--;
        const left = (this.#perSource.get(source) ?? 1) - 1;
        if (left > 0) this.#perSource.set(source, left);
        else this.#perSource.delete(source);
      },
    };
  }
}

export const BUSY: Rejection = { status: 503, code: 'busy', message: 'too many request bodies in progress, retry later', retryAfterSeconds: BUSY_RETRY_AFTER_SECONDS };

export function bodyTimeout(timeoutMs: number): Rejection {
  return { status: 408, code: 'body_timeout', message: `the request body did not arrive within ${timeoutMs} ms` };
}

export function tooLarge(limit: number): Rejection {
  return { status: 413, code: 'message_too_large', message: `request body over ${limit} bytes` };
}

export const ABORTED: Rejection = { status: 400, code: 'bad_request', message: 'the request body ended early' };

export type BodyResult = { ok: true; body: Buffer; sha256: string } | { ok: false; rejection: Rejection };

/**
 * Reads a request body into memory under the bounds above, hashing it on the way in (the
 * signature is checked against the digest; the body is never read twice). Stops reading
 * at the first bound crossed; the caller answers and closes the connection.
 */
export function readBody(payload: Readable, options: { slot: UploadSlot; limit: number; deadlineMs: number; timeoutMs: number; declaredLength?: number }): Promise<BodyResult> {
  if (options.declaredLength !== undefined && options.declaredLength > options.limit) return Promise.resolve({ ok: false, rejection: tooLarge(options.limit) });
  return new Promise((resolve) => {
    const hash = createHash('sha256');
    const chunks: Buffer[] = [];
    let received = 0;
    const finish = (result: BodyResult) => {
      clearTimeout(timer);
      payload.off('data', onData);
      payload.off('end', onEnd);
      payload.off('error', onAborted);
      payload.off('close', onClose);
      if (!result.ok) {
        payload.pause();
        chunks.length = 0;
      }
      resolve(result);
    };
    const onData = (chunk: Buffer) => {
      received += chunk.length;
      if (received > options.limit) return finish({ ok: false, rejection: tooLarge(options.limit) });
      if (!options.slot.take(chunk.length)) return finish({ ok: false, rejection: BUSY });
      hash.update(chunk);
      chunks.push(chunk);
    };
    const onEnd = () => finish({ ok: true, body: chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, received), sha256: hash.digest('hex') });
    const onAborted = () => finish({ ok: false, rejection: ABORTED });
    const onClose = () => {
      if (!payload.readableEnded) onAborted();
    };
    const timer = setTimeout(() => finish({ ok: false, rejection: bodyTimeout(options.timeoutMs) }), Math.max(0, options.deadlineMs - Date.now()));
    payload.on('data', onData);
    payload.on('end', onEnd);
    payload.on('error', onAborted);
    payload.on('close', onClose);
    payload.resume();
  });
}
