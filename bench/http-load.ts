import { randomUUID } from 'node:crypto';
import { Agent, request } from 'node:http';
import { signRequest } from '../shared/signing.ts';
import type { LoadPlan } from './message.ts';
import { nowMs } from './sink.ts';

/**
 * Drives the post office's signed JSON API the way mailman does (data_base64, an
 * idempotency key per message, keep-alive connections), `concurrency` requests at a time.
 */
export interface HttpLoadOptions extends LoadPlan {
  url: string;
  fqdn: string;
  key: string;
}

export interface HttpLoadResult {
  startedAt: number;
  finishedAt: number;
  /** Request start to 202, per id (NaN: not accepted). */
  latencyMs: Float64Array;
  acceptedAt: Float64Array;
  accepted: number;
  /** Failed requests by status or socket error code. */
  failures: Record<string, number>;
}

const PATH = '/v1/messages';

export async function runHttpLoad(options: HttpLoadOptions): Promise<HttpLoadResult> {
  const base = new URL(options.url);
  const agent = new Agent({ keepAlive: true, maxSockets: options.concurrency });
  const latencyMs = new Float64Array(options.messages).fill(NaN);
  const acceptedAt = new Float64Array(options.messages).fill(NaN);
  const failures: Record<string, number> = {};
  let next = 0;
  let accepted = 0;
  const startedAt = nowMs();
  const run = randomUUID();

  function post(id: number): Promise<number> {
    const body = JSON.stringify({ mailfrom: options.from, rcpttos: [options.recipient(id)], data_base64: options.message(id).toString('base64') });
    const headers = signRequest(options.key, { method: 'POST', path: PATH, fqdn: options.fqdn, body, idempotencyKey: `bench-${run}-${id}` });
    return new Promise((resolve, reject) => {
      const req = request(
        { hostname: base.hostname, port: base.port, method: 'POST', path: PATH, agent, headers: { ...headers, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } },
        (res) => {
          res.resume();
          res.once('end', () => resolve(res.statusCode ?? 0));
          res.once('error', reject);
        },
      );
      req.once('error', reject);
      req.end(body);
    });
  }

  async function loop(): Promise<void> {
    for (let id = next++; id < options.messages; id = next++) {
      if (options.ratePerSecond) {
        const wait = startedAt + (id * 1000) / options.ratePerSecond - nowMs();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      }
      const sentAt = nowMs();
      try {
        const status = await post(id);
        if (status === 202) {
          acceptedAt[id] = nowMs();
          latencyMs[id] = acceptedAt[id]! - sentAt;
          accepted++;
        } else {
          failures[String(status)] = (failures[String(status)] ?? 0) + 1;
        }
      } catch (err) {
        const code = (err as { code?: string }).code ?? 'ERROR';
        failures[code] = (failures[code] ?? 0) + 1;
      }
    }
  }

  await Promise.all(Array.from({ length: options.concurrency }, () => loop()));
  agent.destroy();
  return { startedAt, finishedAt: nowMs(), latencyMs, acceptedAt, accepted, failures };
}
