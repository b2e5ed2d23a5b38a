/**
 * The benchmark's own SMTP pieces are hand-written (bench/smtp-load.ts, bench/sink.ts),
 * and the fault suite counts deliveries with the load generator: a property-based check
 * that, for any batch of messages, whatever dot lines they hold, the generator's
 * pipelining and dot-stuffing and the sink's end-of-data detection hand over exactly
 * those messages, one transaction each, and nothing else.
 */
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:net';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { serveSinkSession } from '../../bench/sink.ts';
import { runSmtpLoad } from '../../bench/smtp-load.ts';
import { percentiles } from '../../bench/stats.ts';

/** A CRLF line that may start with dots, be a lone dot, be empty, or carry 8-bit bytes. */
const line = fc.oneof(
  fc.constantFrom('', '.', '..', '...', '. ', '.\t', 'From x', '.From x'),
  fc.string({ unit: fc.constantFrom(...'.ab \t:Z9\x80\xe9\xff'), maxLength: 20 }),
);
const message = fc.array(line, { maxLength: 12 }).map((lines) => Buffer.from(lines.map((l) => `${l}\r\n`).join(''), 'latin1'));

describe('bench SMTP load generator and sink, property-based', () => {
  let server: Server;
  let port: number;
  const received: string[] = [];

  before(async () => {
    server = createServer((socket) => serveSinkSession(socket, (text) => received.push(text)));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as { port: number }).port;
  });

  after(() => new Promise<void>((resolve) => server.close(() => resolve())));

  it('delivers every message exactly once and unchanged, over any number of pipelined connections', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(message, { minLength: 1, maxLength: 8 }), fc.integer({ min: 1, max: 3 }), async (messages, concurrency) => {
        received.length = 0;
        const result = await runSmtpLoad({ host: '127.0.0.1', port, messages: messages.length, concurrency, from: 'a@b.test', recipient: (id) => `r${id}@b.test`, message: (id) => messages[id]! });
        assert.equal(result.accepted, messages.length, JSON.stringify(result.failures));
        // Receivers remove the stuffed dot at the start of each line (RFC 5321 §4.5.2).
        const unstuffed = received.map((text) => text.replace(/(^|\r\n)\./g, '$1'));
        assert.deepEqual(unstuffed.sort(), messages.map((m) => m.toString('latin1')).sort());
      }),
      { numRuns: 40 },
    );
  });

  it('computes nearest-rank percentiles that are values some sample had, ignoring gaps', () => {
    fc.assert(
      fc.property(fc.array(fc.oneof(fc.double({ min: 0, max: 1e6, noNaN: true }), fc.constant(Number.NaN)), { maxLength: 200 }), (values) => {
        const present = values.filter((v) => !Number.isNaN(v));
        const p = percentiles(values);
        if (present.length === 0) return assert.equal(p, null);
        assert.equal(p!.count, present.length);
        assert.ok(p!.p50 <= p!.p90 && p!.p90 <= p!.p99 && p!.p99 <= p!.max);
        const rounded = new Set(present.map((v) => Math.round(v * 10) / 10));
        for (const q of [p!.p50, p!.p90, p!.p99, p!.max]) assert.ok(rounded.has(q));
      }),
    );
  });
});
