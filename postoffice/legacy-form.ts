import type { Readable } from 'node:stream';
import { ABORTED, bodyTimeout, BUSY, tooLarge, type UploadSlot } from './upload.ts';
import type { OrRejection, Rejection } from './rejection.ts';

/**
 * The hedwig form route's body (`application/x-www-form-urlencoded`: fqdn, key, email),
 * read as it streams in, so the key is checked as soon as it has arrived: a wrong key in
 * front of a 29 MB form costs a few hundred bytes of reading, not the whole body (issue
 * 12.6). `curl --data-urlencode` and the old clients send fqdn and key first; a form that
 * sends `email` first is still read, under the bounds of postoffice/upload.ts.
 *
 * Written by hand: @fastify/formbody (and querystring/URLSearchParams under it) parse a
 * complete body, which is exactly what must not happen before the key is checked. Decoding
 * is WHATWG's: `+` is a space, `%XX` a byte, a `%` not followed by two hex digits stays.
 */

/** fqdn and key are short; anything longer is not a credential and is not buffered. */
const MAX_CREDENTIAL_BYTES = 1024;
const MAX_NAME_BYTES = 64;
/** The email field is collected in blocks of this size, each counted against the budget. */
const BLOCK_BYTES = 65_536;

export interface LegacyForm<C> {
  client: C;
  /** The email field's bytes, percent-decoded (still to be checked as UTF-8 JSON). */
  email: Buffer | undefined;
}

type Field = 'fqdn' | 'key' | 'email' | 'other';

function hex(byte: number): number {
  if (byte >= 0x30 && byte <= 0x39) return byte - 0x30;
  const lower = byte | 0x20;
  return lower >= 0x61 && lower <= 0x66 ? lower - 0x61 + 10 : -1;
}

/**
 * Reads the form. `authenticate(fqdn, key)` is called once, as soon as both are complete
 * (or at the end of the body when one never came; with nothing when one came twice or
 * too long); a rejection stops the reading there.
 */
export function readLegacyForm<C>(
  payload: Readable,
  options: {
    slot: UploadSlot;
    limit: number;
    deadlineMs: number;
    timeoutMs: number;
    declaredLength?: number;
    authenticate: (fqdn: string | undefined, key: string | undefined) => OrRejection<C>;
  },
): Promise<OrRejection<LegacyForm<C>>> {
  if (options.declaredLength !== undefined && options.declaredLength > options.limit) return Promise.resolve({ ok: false, rejection: tooLarge(options.limit) });
  return new Promise((resolve) => {
    let received = 0;
    let done = false;
    // The field being read: its name until '=', then its value (decoded into `block`).
    let inValue = false;
    let name = '';
    let field: Field = 'other';
    let block = Buffer.allocUnsafe(BLOCK_BYTES);
    let blockLength = 0;
    let valueTooLong = false;
    // A '%' seen (1), or '%' and one hex digit (2, `high` holds that digit's byte).
    let escape = 0;
    let high = 0;
    let emailBlocks: Buffer[] | undefined;
    let emailTwice = false;
    let unusable = false;
    const credentials: { fqdn?: string; key?: string } = {};
    let client: C | undefined;

    const finish = (result: OrRejection<LegacyForm<C>>) => {
      done = true;
      clearTimeout(timer);
      payload.off('data', onData);
      payload.off('end', onEnd);
      payload.off('error', onAborted);
      payload.off('close', onClose);
      if (!result.ok) payload.pause();
      resolve(result);
    };
    const fail = (rejection: Rejection) => finish({ ok: false, rejection });

    /** Checks the credentials once both are in (or when `final`); false when reading must stop. */
    const tryAuthenticate = (final: boolean): boolean => {
      if (client !== undefined) return true;
      if (!final && !unusable && (credentials.fqdn === undefined || credentials.key === undefined)) return true;
      const result = unusable ? options.authenticate(undefined, undefined) : options.authenticate(credentials.fqdn, credentials.key);
      if (!result.ok) {
        fail(result.rejection);
        return false;
      }
      client = result.value;
      return true;
    };

    const put = (byte: number): boolean => {
      if (!inValue) {
        if (name.length < MAX_NAME_BYTES) name += String.fromCharCode(byte);
        return true;
      }
      if (field === 'other') return true;
      if (field !== 'email' && blockLength >= MAX_CREDENTIAL_BYTES) {
        valueTooLong = true;
        return true;
      }
      block[blockLength++] = byte;
      if (blockLength === BLOCK_BYTES) {
        if (!options.slot.take(BLOCK_BYTES)) return false;
        emailBlocks!.push(block);
        block = Buffer.allocUnsafe(BLOCK_BYTES);
        blockLength = 0;
      }
      return true;
    };

    const startValue = () => {
      inValue = true;
      field = name === 'fqdn' || name === 'key' || name === 'email' ? name : 'other';
      if (field === 'email') {
        if (emailBlocks !== undefined) emailTwice = true;
        emailBlocks = [];
      }
    };

    /** A '%' that did not start an escape stands for itself (and so does the digit after it). */
    const flushEscape = (): boolean => {
      const pending = escape;
      escape = 0;
      if (pending === 0) return true;
      return put(0x25) && (pending === 1 || put(high));
    };

    const endField = (): boolean => {
      if (!flushEscape()) return false;
      if (!inValue) startValue();
      if (field === 'fqdn' || field === 'key') {
        if (credentials[field] !== undefined || valueTooLong) unusable = true;
        credentials[field] = block.toString('utf8', 0, blockLength);
      } else if (field === 'email' && blockLength > 0) {
        if (!options.slot.take(blockLength)) return false;
        emailBlocks!.push(Buffer.from(block.subarray(0, blockLength)));
      }
      inValue = false;
      name = '';
      field = 'other';
      blockLength = 0;
      valueTooLong = false;
      return true;
    };

    /** One byte outside an escape; false when reading must stop. */
    const plain = (byte: number): boolean => {
      if (byte === 0x26 /* & */) {
        if (!endField()) {
          fail(BUSY);
          return false;
        }
        return tryAuthenticate(false);
      }
      if (byte === 0x3d /* = */ && !inValue) {
        startValue();
        return true;
      }
      if (byte === 0x25 /* % */) {
        escape = 1;
        return true;
      }
      if (put(byte === 0x2b /* + */ ? 0x20 : byte)) return true;
      fail(BUSY);
      return false;
    };

    const onData = (chunk: Buffer) => {
      received += chunk.length;
      if (received > options.limit) return fail(tooLarge(options.limit));
      for (let i = 0; i < chunk.length && !done; i++) {
        const byte = chunk[i]!;
        if (escape === 1 && hex(byte) >= 0) {
          escape = 2;
          high = byte;
        } else if (escape === 2 && hex(byte) >= 0) {
          escape = 0;
          if (!put(hex(high) * 16 + hex(byte))) return fail(BUSY);
        } else {
          if (!flushEscape()) return fail(BUSY);
          if (!plain(byte)) return;
        }
      }
    };

    const onEnd = () => {
      if (name.length > 0 || inValue || escape !== 0) {
        if (!endField()) return fail(BUSY);
      }
      if (!tryAuthenticate(true)) return;
      if (emailTwice) return fail({ status: 400, code: 'invalid_request', message: 'email is given more than once', field: 'email' });
      finish({ ok: true, value: { client: client!, email: emailBlocks ? Buffer.concat(emailBlocks) : undefined } });
    };
    const onAborted = () => fail(ABORTED);
    const onClose = () => {
      if (!payload.readableEnded) onAborted();
    };
    const timer = setTimeout(() => fail(bodyTimeout(options.timeoutMs)), Math.max(0, options.deadlineMs - Date.now()));
    payload.on('data', onData);
    payload.on('end', onEnd);
    payload.on('error', onAborted);
    payload.on('close', onClose);
    payload.resume();
  });
}
