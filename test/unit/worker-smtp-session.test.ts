import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { SMTPServer } from 'smtp-server';
import { SmtpSession, type SmtpFailure } from '../../worker/smtp-session.ts';

/** The session against smtp-server on loopback: what nodemailer's internals give the delivery path. */
describe('smtp-session', () => {
  let server: SMTPServer;
  let port: number;
  const received: string[] = [];

  before(async () => {
    server = new SMTPServer({
      authOptional: true,
      disabledCommands: ['STARTTLS', 'AUTH'],
      hideENHANCEDSTATUSCODES: true,
      logger: false,
      onRcptTo(address, _session, callback) {
        if (address.address.startsWith('nobody@')) callback(Object.assign(new Error('5.1.1 no such user'), { responseCode: 550 }));
        else callback();
      },
      onData(stream, _session, callback) {
        const chunks: Buffer[] = [];
        stream.on('data', (c: Buffer) => chunks.push(c));
        stream.on('end', () => {
          received.push(Buffer.concat(chunks).toString());
          callback();
        });
      },
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.server.address() as AddressInfo).port;
  });
  after(() => new Promise<void>((resolve) => server.close(() => resolve())));

  function open(): SmtpSession {
    return new SmtpSession({
      address: '127.0.0.1',
      port,
      ehloName: 'client.test',
      tls: { ignoreTLS: true, requireTLS: false, opportunisticTLS: false, tls: {} },
      timeouts: { connectMs: 2000, greetingMs: 2000, socketMs: 5000 },
    });
  }

  it('handshakes, reads the extensions and the source address, sends, and says which recipients were refused', async () => {
    const session = open();
    await session.handshake();
    assert.equal(session.supportsSmtpUtf8, true);
    assert.equal(session.localAddress, '127.0.0.1');
    assert.equal(session.secure, false);
    const sent = await session.send({ from: 'a@example.com', to: ['b@example.org', 'nobody@example.org'], size: 20 }, Buffer.from('Subject: t\r\n\r\nhello\r\n'));
    assert.deepEqual(sent.accepted, ['b@example.org']);
    assert.deepEqual(sent.rejectedErrors.map((e) => [e.recipient, e.responseCode, e.command]), [['nobody@example.org', 550, 'RCPT TO']]);
    assert.match(sent.response, /^250 /);
    assert.match(received.at(-1)!, /hello/);
    assert.equal(await session.reset(2000), true);
    const closed = new Promise<void>((resolve) => session.onClosed(resolve));
    session.quit();
    await closed;
    assert.equal(session.closed, true);
  });

  it('a transaction every recipient refused fails with the reply, and the RCPT replies stay readable', async () => {
    const session = open();
    await session.handshake();
    const failure = (await session.send({ from: 'a@example.com', to: ['nobody@example.org'], size: 5 }, Buffer.from('x\r\n')).then(
      () => assert.fail('expected a failure'),
      (err: SmtpFailure) => err,
    )) as SmtpFailure;
    assert.equal(failure.code, 'EENVELOPE');
    assert.equal(failure.responseCode, 550);
    assert.deepEqual([...session.recipientFailures().keys()], ['nobody@example.org']);
    session.close();
  });

  it('a refused connection fails the handshake with a socket error and no reply', async () => {
    const unused = new SMTPServer({ logger: false });
    await new Promise<void>((resolve) => unused.listen(0, '127.0.0.1', resolve));
    const freePort = (unused.server.address() as AddressInfo).port;
    await new Promise<void>((resolve) => unused.close(() => resolve()));
    const session = new SmtpSession({ address: '127.0.0.1', port: freePort, ehloName: 'c.test', tls: { ignoreTLS: true, requireTLS: false, opportunisticTLS: false, tls: {} }, timeouts: { connectMs: 2000, greetingMs: 2000, socketMs: 2000 } });
    const failure = (await session.handshake().then(
      () => assert.fail('expected a failure'),
      (err: SmtpFailure) => err,
    )) as SmtpFailure;
    assert.equal(failure.code, 'ESOCKET');
    assert.match(failure.message, /ECONNREFUSED/);
    assert.equal(failure.response, undefined);
  });
});
