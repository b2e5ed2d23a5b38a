import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { errorCode, errorMessage } from '../shared/errors.ts';
import { signRequest } from '../shared/signing.ts';

/** What mailman hands the post office for one message (its JSON body plus the idempotency key). */
export interface MailmanSubmission {
  /** mailman sends its spool id: a retried request is then never queued twice. */
  idempotencyKey: string;
  mailfrom: string;
  rcpttos: string[];
  data: Buffer;
}

/**
 * Why a forward may succeed later, which decides what mailman does next:
 * - `unavailable`: the post office is not taking anything (no connection, 502/503/504, 429, a
 *   status no message could fix such as a misrouted 404). It says nothing about this message:
 *   the forwarder pauses with backoff, new mail is spooled at once.
 * - `timeout`: no answer within postoffice.timeoutMs. A frozen post office looks like this, so
 *   new mail is spooled at once too; but so does a message the post office chokes on, so it
 *   counts against the message when the post office was otherwise working.
 * - `error`: a 500 or other 5xx about this request (the post office did answer): it counts
 *   against the message, and everything else carries on.
 */
export type TemporaryCause = 'unavailable' | 'timeout' | 'error';

export type ForwardResult =
  /** `suppressed`: recipients the post office left out (its suppression list); absent when none. */
  | { kind: 'accepted'; id: string; suppressed?: string[] }
  /** `suppressed`: with 422 recipients_suppressed, the recipients on the suppression list (all of them). */
  | { kind: 'rejected'; status: number; error: string; message: string; suppressed?: string[] }
  | { kind: 'temporary'; cause: TemporaryCause; reason: string };

export interface PostofficeClient {
  /** Never throws for HTTP or network outcomes: every outcome is a result value. */
  forward(message: MailmanSubmission): Promise<ForwardResult>;
  close(): void;
}

export interface PostofficeClientOptions {
  url: string;
  fqdn: string;
  key: string;
  /** PEM of a private CA that signed the post office's certificate. */
  ca?: string | Buffer | undefined;
  timeoutMs: number;
}

/**
 * Answers that retrying cannot fix (422: the idempotency key was already used for another
 * message). Everything else (429, 5xx, a 404 from a misrouted URL...) is retried, so an
 * operator's mistake delays mail instead of losing it.
 */
const PERMANENT_STATUSES = new Set([400, 401, 403, 413, 422]);
/** A gateway or the post office itself saying it cannot take anything now (503: beanstalkd is down). */
const OUTAGE_STATUSES = new Set([502, 503, 504]);
const MAX_RESPONSE_BYTES = 64 * 1024;

interface RawResponse {
  status: number;
  body: string;
}

function parseJsonObject(text: string): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(text);
    return value && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** The post office's `suppressed` field (202 and 422 recipients_suppressed): the strings of it, if any. */
function suppressedOf(body: Record<string, unknown> | undefined): { suppressed?: string[] } {
  const list = Array.isArray(body?.suppressed) ? body.suppressed.filter((r): r is string => typeof r === 'string') : [];
  return list.length > 0 ? { suppressed: list } : {};
}

export function classifyResponse(response: RawResponse): ForwardResult {
  const body = parseJsonObject(response.body);
  if (response.status >= 200 && response.status < 300) {
    // The post office said it holds the message; a malformed body must not make us send it again.
    return { kind: 'accepted', id: typeof body?.id === 'string' ? body.id : '(unknown)', ...suppressedOf(body) };
  }
  const error = typeof body?.error === 'string' ? body.error : `http_${response.status}`;
  if (PERMANENT_STATUSES.has(response.status)) {
    const message = typeof body?.message === 'string' ? body.message : '';
    const field = typeof body?.field === 'string' ? ` (field ${body.field})` : '';
    return { kind: 'rejected', status: response.status, error, message: `${message}${field}`, ...suppressedOf(body) };
  }
  const cause = response.status >= 500 && !OUTAGE_STATUSES.has(response.status) ? 'error' : 'unavailable';
  return { kind: 'temporary', cause, reason: `http ${response.status} ${error}` };
}

export function createPostofficeClient(options: PostofficeClientOptions): PostofficeClient {
  const base = new URL(options.url);
  const isHttps = base.protocol === 'https:';
  const path = `${base.pathname.replace(/\/+$/, '')}/v1/messages`;
  const agent = isHttps ? new HttpsAgent({ keepAlive: true, ca: options.ca }) : new HttpAgent({ keepAlive: true });
  const request = isHttps ? httpsRequest : httpRequest;

  function send(body: Buffer, headers: Record<string, string>): Promise<RawResponse & { reusedSocket: boolean }> {
    return new Promise((resolve, reject) => {
      const req = request({
        protocol: base.protocol,
        hostname: base.hostname.replace(/^\[(.*)\]$/, '$1'),
        port: base.port || (isHttps ? 443 : 80),
        method: 'POST',
        path,
        agent,
        headers: { ...headers, 'content-type': 'application/json', 'content-length': String(body.length) },
      });
      // One deadline for the whole exchange: a post office that trickles bytes must not hold an SMTP client forever.
      const timer = setTimeout(() => req.destroy(Object.assign(new Error(`no answer within ${options.timeoutMs} ms`), { code: 'ETIMEOUT' })), options.timeoutMs);
      const fail = (err: unknown): void => {
        clearTimeout(timer);
        reject(Object.assign(err as Error, { reusedSocket: req.reusedSocket }));
      };
      req.once('error', fail);
      req.once('response', (res: IncomingMessage) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (chunk: Buffer) => {
          size += chunk.length;
          if (size <= MAX_RESPONSE_BYTES) chunks.push(chunk);
        });
        res.once('error', fail);
        res.once('aborted', () => fail(Object.assign(new Error('response aborted'), { code: 'ECONNRESET' })));
        res.once('end', () => {
          clearTimeout(timer);
          resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8'), reusedSocket: req.reusedSocket });
        });
      });
      req.end(body);
    });
  }

  return {
    async forward(message) {
      // Encoded once: the digest, the content-length and the socket all take these bytes.
      const body = Buffer.from(JSON.stringify({ mailfrom: message.mailfrom, rcpttos: message.rcpttos, data_base64: message.data.toString('base64') }));
      for (let attempt = 1; ; attempt++) {
        // Signed per attempt so the timestamp is fresh.
        const headers = signRequest(options.key, { method: 'POST', path, fqdn: options.fqdn, body, idempotencyKey: message.idempotencyKey });
        try {
          return classifyResponse(await send(body, headers));
        } catch (err) {
          // A kept-alive socket the server closed while idle fails on first use; Node's
          // documentation recommends one retry on a fresh socket for exactly this case.
          const reused = (err as { reusedSocket?: boolean }).reusedSocket === true;
          if (attempt === 1 && reused && errorCode(err) === 'ECONNRESET') continue;
          const code = errorCode(err);
          return { kind: 'temporary', cause: code === 'ETIMEOUT' ? 'timeout' : 'unavailable', reason: `${code ?? 'error'}: ${errorMessage(err)}` };
        }
      }
    },
    close() {
      agent.destroy();
    },
  };
}
