import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { createDeliverer } from '../../worker/deliver.ts';
import type { SourceSettings } from '../../worker/source-ip.ts';
import { startSmtpSink, type SmtpSink } from '../helpers/smtp-sink.ts';

/**
 * Source addresses: the receiving server sees the pool address a connection was bound to,
 * and the EHLO name that goes with it. The pool is 127.0.0.2 and 127.0.0.3, the server
 * listens on 127.0.0.1.
 */
describe('sending from a pool of source addresses', { timeout: 60_000 }, () => {
  let sink: SmtpSink;
  const MESSAGE = Buffer.from('Subject: source\r\nMessage-ID: <s@example.com>\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\n\r\nx\r\n');
  const POOL = [
    { address: '127.0.0.2', ehloName: 'out-a.example.com', weight: 3 },
    { address: '127.0.0.3', ehloName: 'out-b.example.com', weight: 1 },
  ];

  before(async () => {
    sink = await startSmtpSink();
  });

  after(async () => {
    await sink?.stop();
  });

  /** Sends `count` messages one after the other; returns what the sink saw of each: "address ehlo". */
  async function sendAll(source: SourceSettings, count: number, from = 'app@example.com'): Promise<string[]> {
    const deliverer = createDeliverer({ ehloName: 'default.example.com', timeouts: { connectMs: 3000, greetingMs: 3000, socketMs: 5000 }, logger: pino({ level: 'silent' }), source });
    const start = sink.messages.length;
    for (let i = 0; i < count; i++) {
      const [result] = await deliverer.deliver({
        messageId: `m${i}`,
        domain: 'dest.test',
        from,
        recipients: ['rcpt@dest.test'],
        raw: MESSAGE,
        hosts: [{ name: 'mx.dest.test', preference: 0, addresses: ['127.0.0.1'], port: sink.port }],
      });
      assert.equal(result?.outcome, 'delivered', result?.response);
    }
    return sink.messages.slice(start).map((m) => `${m.remoteAddress.replace(/^::ffff:/, '')} ${m.clientHostname}`);
  }

  it('round-robin: alternates the addresses, each with its own EHLO name', async () => {
    const seen = await sendAll({ addresses: POOL, selection: 'round-robin', senderDomains: {} }, 4);
    assert.deepEqual(seen, ['127.0.0.2 out-a.example.com', '127.0.0.3 out-b.example.com', '127.0.0.2 out-a.example.com', '127.0.0.3 out-b.example.com']);
  });

  it('weighted: shares connections 3:1, spread out rather than in runs', async () => {
    const seen = await sendAll({ addresses: POOL, selection: 'weighted', senderDomains: {} }, 8);
    assert.equal(seen.filter((s) => s.startsWith('127.0.0.2 ')).length, 6);
    assert.equal(seen.filter((s) => s.startsWith('127.0.0.3 ')).length, 2);
    assert.deepEqual(seen.slice(0, 4).sort(), ['127.0.0.2 out-a.example.com', '127.0.0.2 out-a.example.com', '127.0.0.2 out-a.example.com', '127.0.0.3 out-b.example.com']);
  });

  it('a sender domain bound to an address always sends from it; other domains never do', async () => {
    const source: SourceSettings = { addresses: POOL, selection: 'round-robin', senderDomains: { 'bound.example': ['127.0.0.3'] } };
    assert.deepEqual(await sendAll(source, 3, 'news@mail.bound.example'), Array(3).fill('127.0.0.3 out-b.example.com'));
    assert.deepEqual(await sendAll(source, 3, 'app@example.com'), Array(3).fill('127.0.0.2 out-a.example.com'));
  });

  it('without a pool the system picks the address and the configured EHLO name is used', async () => {
    assert.deepEqual(await sendAll({ addresses: [], selection: 'round-robin', senderDomains: {} }, 1), ['127.0.0.1 default.example.com']);
  });
});
