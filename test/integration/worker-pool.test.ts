import { after, before, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';
import { createDeliverer, type DelivererOptions } from '../../worker/deliver.ts';
import { startSmtpSink, type SmtpSink } from '../helpers/smtp-sink.ts';
import { waitFor } from '../helpers/ports.ts';

/**
 * Connection reuse per (MX server, source address): the sink counts the connections it
 * accepted for a number of messages.
 */
describe('connection reuse', { timeout: 60_000 }, () => {
  let sink: SmtpSink;
  const MESSAGE = Buffer.from('Subject: reuse\r\nMessage-ID: <r@example.com>\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\n\r\nx\r\n');
  const closers: Array<() => Promise<void> | undefined> = [];

  before(async () => {
    sink = await startSmtpSink();
  });

  beforeEach(async () => {
    sink.script = {};
    // Idle connections of earlier tests would blur the counts.
    await Promise.all(closers.splice(0).map((close) => close()));
    await waitFor(() => sink.openConnections === 0, { what: 'earlier connections to end' });
  });

  after(async () => {
    await Promise.all(closers.map((close) => close()));
    await sink?.stop();
  });

  function deliverer(extra: Partial<DelivererOptions>) {
    const instance = createDeliverer({ ehloName: 'out.example.com', timeouts: { connectMs: 3000, greetingMs: 3000, socketMs: 5000 }, logger: pino({ level: 'silent' }), ...extra });
    closers.push(() => instance.close?.());
    return instance;
  }

  async function send(instance: ReturnType<typeof deliverer>, count: number, recipient = 'rcpt@dest.test'): Promise<void> {
    for (let i = 0; i < count; i++) {
      const [result] = await instance.deliver({
        messageId: `m${i}`,
        domain: 'dest.test',
        from: 'app@example.com',
        recipients: [recipient],
        raw: MESSAGE,
        hosts: [{ name: 'mx.dest.test', preference: 0, addresses: ['127.0.0.1'], port: sink.port }],
      });
      assert.equal(result?.outcome, recipient.startsWith('reject') ? 'bounced' : 'delivered', result?.response);
    }
  }

  it('sends 7 messages over 3 connections with at most 3 messages per connection', async () => {
    const before = { connections: sink.connections, messages: sink.messages.length };
    await send(deliverer({ connections: { maxMessagesPerConnection: 3, idleTimeoutMs: 5000 } }), 7);
    assert.equal(sink.messages.length - before.messages, 7);
    assert.equal(sink.connections - before.connections, 3);
  });

  it('keeps one connection per source address', async () => {
    const before = sink.connections;
    const source = { addresses: [{ address: '127.0.0.2', ehloName: 'a.example.com', weight: 1 }, { address: '127.0.0.3', ehloName: 'b.example.com', weight: 1 }], selection: 'round-robin' as const, senderDomains: {} };
    await send(deliverer({ connections: { maxMessagesPerConnection: 100, idleTimeoutMs: 5000 }, source }), 6);
    assert.equal(sink.connections - before, 2);
  });

  it('closes a connection left idle longer than the idle timeout', async () => {
    const instance = deliverer({ connections: { maxMessagesPerConnection: 100, idleTimeoutMs: 300 } });
    const before = sink.connections;
    await send(instance, 2);
    assert.equal(sink.connections - before, 1);
    await sleep(600);
    await send(instance, 1);
    assert.equal(sink.connections - before, 2);
  });

  it('resets and reuses the session after a rejected recipient', async () => {
    sink.script = { recipients: { 'reject@dest.test': { code: 550, message: '5.1.1 no such user' } } };
    const before = sink.connections;
    const instance = deliverer({ connections: { maxMessagesPerConnection: 100, idleTimeoutMs: 5000 } });
    await send(instance, 1, 'reject@dest.test');
    await send(instance, 2);
    assert.equal(sink.connections - before, 1);
  });

  it('a kept connection lost before anything of the transaction was answered: sent again at once over a new one', async () => {
    const instance = deliverer({ connections: { maxMessagesPerConnection: 100, idleTimeoutMs: 60_000 } });
    await send(instance, 1);
    const connections = sink.connections;
    sink.script = { dropAtMailFrom: { times: 1 } };
    const before = sink.messages.length;
    await send(instance, 1);
    assert.equal(sink.messages.length - before, 1, 'delivered once, over a new connection');
    assert.equal(sink.connections - connections, 1);
  });

  it('a kept connection lost after the final dot (no reply) is a deferral, never an immediate resend (issue 18)', async () => {
    const instance = deliverer({ connections: { maxMessagesPerConnection: 100, idleTimeoutMs: 60_000 } });
    await send(instance, 1);
    sink.script = { dropAfterData: { times: 1 } };
    const before = sink.messages.length;
    const [result] = await instance.deliver({
      messageId: 'after-dot',
      domain: 'dest.test',
      from: 'app@example.com',
      recipients: ['rcpt@dest.test'],
      raw: MESSAGE,
      hosts: [{ name: 'mx.dest.test', preference: 0, addresses: ['127.0.0.1'], port: sink.port }],
    });
    assert.equal(result?.outcome, 'deferred', result?.response);
    assert.equal(sink.messages.length - before, 1, 'the server got it once: the usual retry decides, not an at-once resend');
  });

  it('without reuse every message has its own connection, closed after QUIT', async () => {
    const before = sink.connections;
    await send(deliverer({}), 3);
    assert.equal(sink.connections - before, 3);
  });

  it('close() quits idle connections', async () => {
    const instance = deliverer({ connections: { maxMessagesPerConnection: 100, idleTimeoutMs: 60_000 } });
    await send(instance, 1);
    await waitFor(() => sink.openConnections === 0, { timeoutMs: 500 }).then(
      () => assert.fail('the idle connection should still be open'),
      () => undefined,
    );
    await instance.close?.();
    await waitFor(() => sink.openConnections === 0, { timeoutMs: 5000, what: 'the sink to see the idle connection end' });
  });
});
