import { signRequest } from '../../shared/signing.ts';
import type { SmtpSink } from './smtp-sink.ts';

/**
 * Load for the deployment tests (scale-out, graceful shutdown): numbered messages, a
 * signed-API sender that retries like mailman does, and counting what reached the sink.
 * Every message carries a unique Message-ID, so loss and duplicates can be told apart.
 */

export function messageIdOf(tag: string, n: number): string {
  return `<${tag}-${n}@example.test>`;
}

export function numberedMessage(tag: string, n: number, to: string): string {
  return `From: <load@example.test>\r\nTo: <${to}>\r\nSubject: ${tag} ${n}\r\nMessage-ID: ${messageIdOf(tag, n)}\r\n\r\nmessage ${n} of ${tag}\r\n`;
}

/** How many times each Message-ID arrived at the sink. */
export function arrivals(sink: SmtpSink): Map<string, number> {
  const counts = new Map<string, number>();
  for (const message of sink.messages) {
    const id = /^Message-ID: (<[^>]+>)\r?$/im.exec(message.raw.toString('latin1'))?.[1];
    if (id) counts.set(id, (counts.get(id) ?? 0) + 1);
  }
  return counts;
}

export interface SignedSender {
  url: string;
  fqdn: string;
  key: string;
}

/** One signed POST /v1/messages; `status` 0 means no HTTP answer (refused, reset, timeout). */
export async function postMessage(sender: SignedSender, raw: string, to: string, idempotencyKey: string): Promise<{ status: number }> {
  const body = JSON.stringify({ mailfrom: 'load@example.test', rcpttos: [to], data: raw });
  const headers = signRequest(sender.key, { method: 'POST', path: '/v1/messages', fqdn: sender.fqdn, body, idempotencyKey });
  try {
    const response = await fetch(`${sender.url}/v1/messages`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body,
      signal: AbortSignal.timeout(10_000),
    });
    await response.arrayBuffer();
    return { status: response.status };
  } catch {
    return { status: 0 };
  }
}

/** Runs `task(0..count-1)` with at most `concurrency` in flight, in order of n. */
export async function inPool(count: number, concurrency: number, task: (n: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(concurrency, count) }, async () => {
      while (next < count) await task(next++);
    }),
  );
}
