import { BENCH_ID_HEADER } from './sink.ts';

export const BENCH_SENDER = 'bench@bench.example';
export const BENCH_SENDER_DOMAIN = 'bench.example';
export const BENCH_RECIPIENT_DOMAIN = 'bench.test';

export function recipientFor(id: number): string {
  return `rcpt${id % 1000}@${BENCH_RECIPIENT_DOMAIN}`;
}

/** What a load generator sends: the same for SMTP (bench/smtp-load.ts) and HTTP (bench/http-load.ts). */
export interface LoadPlan {
  /** Message ids are 0 .. messages-1. */
  messages: number;
  /** Concurrent connections (SMTP) or requests in flight (HTTP). */
  concurrency: number;
  /** Open-loop pacing: the n-th transaction does not start before start + n / rate. */
  ratePerSecond?: number | undefined;
  from: string;
  recipient(id: number): string;
  message(id: number): Buffer;
}

/** `messages` bench messages of `size` bytes whose ids start at `offset` (warm-up and measured runs differ). */
export function benchPlan(offset: number, messages: number, options: { concurrency: number; size: number; ratePerSecond?: number | undefined }): LoadPlan {
  return {
    messages,
    concurrency: options.concurrency,
    ratePerSecond: options.ratePerSecond,
    from: BENCH_SENDER,
    recipient: (i) => recipientFor(offset + i),
    message: (i) => benchMessage(offset + i, options.size),
  };
}

const LINE = `${'The quick brown fox jumps over the lazy dog. '.repeat(2).slice(0, 76)}\r\n`;

/**
 * A plain RFC 5322 message of about `size` bytes (whole 78-byte lines) whose `X-Bench-Id` header lets the sink
 * match it to its submission. No body line starts with a dot, so the same bytes are the
 * SMTP DATA payload as they are (no dot-stuffing needed).
 */
export function benchMessage(id: number, size: number): Buffer {
  const head = [
    `From: Bench <${BENCH_SENDER}>`,
    `To: <${recipientFor(id)}>`,
    `Subject: hedwig benchmark message ${id}`,
    'Date: Mon, 23 Nov 2026 10:00:00 +0000',
    `Message-ID: <bench-${id}@${BENCH_SENDER_DOMAIN}>`,
    `${BENCH_ID_HEADER}: ${id}`,
    'MIME-Version: 1.0',
    'Content-Type: text/plain; charset=us-ascii',
    '',
    '',
  ].join('\r\n');
  const lines = Math.max(1, Math.round((size - head.length) / LINE.length));
  return Buffer.from(head + LINE.repeat(lines), 'latin1');
}
