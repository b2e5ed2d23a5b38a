import assert from 'node:assert/strict';
import { createServer, type Socket } from 'node:net';
import { after, before, describe, test, type TestContext } from 'node:test';
import { BeanstalkClient, BeanstalkError, type BeanstalkClientOptions } from '../../shared/beanstalk.ts';
import { startBeanstalkd, type BeanstalkdOptions, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { freePort, waitFor } from '../helpers/ports.ts';

const TEST_TIMEOUT = { timeout: 30_000 };

async function beanstalkdFor(t: TestContext, options: BeanstalkdOptions = {}): Promise<BeanstalkdProcess> {
  const server = await startBeanstalkd(options);
  t.after(() => server.kill());
  return server;
}

async function clientFor(t: TestContext, server: { host: string; port: number }, options: BeanstalkClientOptions = {}): Promise<BeanstalkClient> {
  const client = new BeanstalkClient({ host: server.host, port: server.port }, options);
  t.after(() => client.close());
  await client.connect();
  return client;
}

async function rejectionOf(promise: Promise<unknown>): Promise<BeanstalkError> {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof BeanstalkError, `expected a BeanstalkError, got ${String(err)}`);
    return err;
  }
  assert.fail('expected the promise to reject');
}

describe('BeanstalkClient against a running beanstalkd', () => {
  let server: BeanstalkdProcess;
  before(async () => {
    server = await startBeanstalkd({ maxJobSize: 4096 });
  });
  after(() => server.kill());

  test('watchOnly leaves exactly one watched tube, on the server too', TEST_TIMEOUT, async (t) => {
    const client = await clientFor(t, server);
    await client.watch('other');
    await client.watchOnly('only');
    assert.deepEqual(client.tubesWatched, ['only']);
    await client.use('other');
    await client.put(Buffer.from('not for us'));
    assert.equal(await client.reserve(0), null, "a job in a tube no longer watched is not reserved");
    await client.watchOnly('only');
    assert.deepEqual(client.tubesWatched, ['only'], 'calling it again changes nothing');
  });

  test('putTo puts into the named tube, and concurrent putTo calls on one client never swap tubes', TEST_TIMEOUT, async (t) => {
    const client = await clientFor(t, server);
    const tubes = ['put-to-a', 'put-to-b', 'put-to-c'];
    await Promise.all(Array.from({ length: 30 }, (_, i) => client.putTo(tubes[i % 3]!, Buffer.from(tubes[i % 3]!), { ttrSeconds: 60 })));
    const reader = await clientFor(t, server);
    for (const tube of tubes) {
      await reader.watchOnly(tube);
      for (let i = 0; i < 10; i++) {
        const job = await reader.reserve(0);
        assert.equal(job?.payload.toString(), tube, `job ${i} in ${tube}`);
        await job!.delete();
      }
      assert.equal(await reader.reserve(0), null, `nothing else in ${tube}`);
    }
  });

  test('put, reserve and delete carry every byte value and CRLF inside the payload unchanged', TEST_TIMEOUT, async (t) => {
    const client = await clientFor(t, server);
    await client.use('roundtrip');
    await client.watch('roundtrip');
    await client.ignore('default');
    const everyByte = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    // A payload that looks like protocol replies must not confuse the parser.
    const payload = Buffer.concat([everyByte, Buffer.from('\r\nINSERTED 99\r\nRESERVED 1 2\r\n\r\n'), everyByte]);

    const id = await client.put(payload);
    assert.match(id, /^[0-9]+$/);
    const job = await client.reserve(1);

    assert.ok(job, 'a job is reserved');
    assert.equal(job.id, id);
    assert.deepEqual(job.payload, payload);
    assert.equal(job.server, server.address);
    await job.delete();
    assert.equal(await client.peek(id), null, 'the deleted job is gone');
  });

  test('reserve resolves null when no job arrives within the timeout', TEST_TIMEOUT, async (t) => {
    const client = await clientFor(t, server);
    await client.watch('empty-tube');
    await client.ignore('default');

    assert.equal(await client.reserve(0), null);
    assert.equal(await client.reserve(1), null);
  });

  test('a job larger than -z is refused with JOB_TOO_BIG and the connection stays usable', TEST_TIMEOUT, async (t) => {
    const client = await clientFor(t, server);
    await client.use('too-big');

    const err = await rejectionOf(client.put(Buffer.alloc(5000, 0x61)));

    assert.equal(err.code, 'JOB_TOO_BIG');
    assert.equal(client.connected, true);
    const id = await client.put(Buffer.from('small'));
    assert.equal((await client.peek(id))?.payload.toString(), 'small');
    await client.deleteJob(id);
  });

  test('release with a delay makes the job delayed; bury buries it; kickJob makes it ready', TEST_TIMEOUT, async (t) => {
    const client = await clientFor(t, server);
    await client.use('lifecycle');
    await client.watch('lifecycle');
    await client.ignore('default');
    const id = await client.put(Buffer.from('retry me'), { priority: 10 });

    const first = await client.reserve(1);
    assert.equal(first?.id, id);
    await first.release({ delaySeconds: 60, priority: 20 });
    const delayed = await client.statsJob(id);
    assert.equal(delayed.state, 'delayed');
    assert.equal(delayed.delay, 60);
    assert.equal(delayed.pri, 20);
    assert.equal(delayed.releases, 1);

    await client.kickJob(id);
    const second = await client.reserve(1);
    assert.equal(second?.id, id);
    await second.touch();
    await second.bury();
    assert.equal((await client.statsJob(id)).state, 'buried');
    assert.equal((await client.peekBuried())?.id, id);

    assert.equal(await client.kick(10), 1);
    assert.equal((await client.statsJob(id)).state, 'ready');
    await client.deleteJob(id);
  });

  test('missing jobs: peek resolves null, deleteJob and statsJob reject NOT_FOUND', TEST_TIMEOUT, async (t) => {
    const client = await clientFor(t, server);

    assert.equal(await client.peek('987654321'), null);
    assert.equal((await rejectionOf(client.deleteJob('987654321'))).code, 'NOT_FOUND');
    assert.equal((await rejectionOf(client.statsJob('987654321'))).code, 'NOT_FOUND');
  });

  test('a second reserve while holding a job whose TTR is about to run out rejects DEADLINE_SOON', TEST_TIMEOUT, async (t) => {
    const client = await clientFor(t, server);
    await client.use('deadline');
    await client.watch('deadline');
    await client.ignore('default');
    await client.put(Buffer.from('short ttr'), { ttrSeconds: 1 });
    const held = await client.reserve(1);
    assert.ok(held);

    assert.equal((await rejectionOf(client.reserve(5))).code, 'DEADLINE_SOON');
    await held.delete();
  });

  test('tube names and job ids that would break the command line are refused before sending', TEST_TIMEOUT, async (t) => {
    const client = await clientFor(t, server);

    assert.equal((await rejectionOf(client.use('bad\r\nput 0 0 1 1'))).code, 'PROTOCOL');
    assert.equal((await rejectionOf(client.watch('has space'))).code, 'PROTOCOL');
    assert.equal((await rejectionOf(client.peek('1\r\ndelete 1'))).code, 'PROTOCOL');
    assert.equal(await client.listTubeUsed(), 'default', 'nothing reached the server');
  });

  test('ignoring the only watched tube is a PROTOCOL error (NOT_IGNORED)', TEST_TIMEOUT, async (t) => {
    const client = await clientFor(t, server);

    const err = await rejectionOf(client.ignore('default'));

    assert.equal(err.code, 'PROTOCOL');
    assert.equal(err.reply, 'NOT_IGNORED');
  });

  test('a command queued behind a waiting reserve is not timed out by that wait', TEST_TIMEOUT, async (t) => {
    const client = await clientFor(t, server, { commandTimeoutMs: 300 });
    await client.watch('idle-tube');
    await client.ignore('default');

    const waiting = client.reserve(2);
    const stats = client.statsTube('idle-tube');

    assert.equal(await waiting, null);
    assert.equal((await stats).name, 'idle-tube');
    assert.equal(client.connected, true);
  });

  test('stats, statsTube and listTubes return parsed values', TEST_TIMEOUT, async (t) => {
    const client = await clientFor(t, server);
    await client.use('listed');

    const stats = await client.stats();
    assert.equal(stats.version, '1.12');
    assert.equal(typeof stats['current-connections'], 'number');
    assert.equal((await client.statsTube('listed'))['current-using'], 1);
    assert.ok((await client.listTubes()).includes('listed'));
  });

  test('reserveJob takes a delayed or buried job by id on this connection, and not one another connection holds', TEST_TIMEOUT, async (t) => {
    const client = await clientFor(t, server);
    const other = await clientFor(t, server);
    await client.use('by-id');
    const delayed = await client.put(Buffer.from('later'), { delaySeconds: 600 });
    const job = await client.reserveJob(delayed);
    assert.equal(job?.payload.toString(), 'later');
    await job!.bury(7);
    assert.equal((await client.statsJob(delayed)).state, 'buried');
    const again = await other.reserveJob(delayed);
    assert.ok(again, 'a buried job can be reserved by id too');
    assert.equal(await client.reserveJob(delayed), null, 'another connection holds it');
    assert.equal(await client.reserveJob('999999'), null, 'no such job');
    await again!.delete();
  });

  test('a put whose reply is already in the socket when a frozen process wakes up past its timer is answered, not timed out', TEST_TIMEOUT, async (t) => {
    const client = await clientFor(t, server, { commandTimeoutMs: 200 });
    await client.use('frozen');
    const put = client.put(Buffer.from('landed'));
    // Freeze the event loop (as SIGSTOP or a long GC pause would) for longer than the command
    // timer; beanstalkd's reply arrives in the socket meanwhile. On waking, the expired timer
    // runs before the socket is read.
    const until = Date.now() + 600;
    while (Date.now() < until) {
      /* frozen */
    }
    const id = await put;
    assert.equal((await client.peek(id))?.payload.toString(), 'landed');
    assert.equal(client.connected, true, 'the connection stays usable');
    assert.equal(Number((await client.statsTube('frozen'))['current-jobs-ready']), 1, 'one job, no second put');
  });
});

describe('BeanstalkClient when beanstalkd goes away', () => {
  test('a pending reserve rejects with DISCONNECTED when beanstalkd is killed, and later operations fail fast', TEST_TIMEOUT, async (t) => {
    const server = await beanstalkdFor(t);
    const client = await clientFor(t, server, { autoReconnect: false });
    const disconnected = new Promise((resolve) => client.once('disconnect', resolve));

    const pending = rejectionOf(client.reserve(20));
    await server.kill();

    assert.equal((await pending).code, 'DISCONNECTED');
    await disconnected;
    assert.equal(client.connected, false);
    assert.equal((await rejectionOf(client.put(Buffer.from('x')))).code, 'DISCONNECTED');
    assert.equal((await rejectionOf(client.stats())).code, 'DISCONNECTED');
  });

  test('after a restart from the binlog the client reconnects by itself with its tubes, and delayed jobs survive', TEST_TIMEOUT, async (t) => {
    const server = await beanstalkdFor(t, { fsyncMs: 0 });
    const client = await clientFor(t, server);
    await client.use('mail');
    await client.watch('mail');
    await client.watch('retries');
    await client.ignore('default');
    const delayedId = await client.put(Buffer.from('later'), { delaySeconds: 3600 });
    let connectEvents = 0;
    client.on('connect', () => connectEvents++);

    await server.kill();
    await waitFor(() => !client.connected, { what: 'the client to notice the drop' });
    await server.restart();
    await waitFor(() => client.connected, { what: 'the client to reconnect' });

    assert.equal(connectEvents, 1, 'one connect event for the reconnect');
    assert.equal(await client.listTubeUsed(), 'mail', 'use is re-applied');
    assert.deepEqual((await client.listTubesWatched()).sort(), ['mail', 'retries'], 'watch and ignore are re-applied');
    const delayed = await client.statsJob(delayedId);
    assert.equal(delayed.state, 'delayed');
    assert.equal(delayed.tube, 'mail');
    const freshId = await client.put(Buffer.from('after restart'));
    assert.equal((await client.statsJob(freshId)).tube, 'mail');
  });

  test('a job reserved on the old connection rejects STALE_RESERVATION and is back in ready for a new reserve', TEST_TIMEOUT, async (t) => {
    const server = await beanstalkdFor(t, { fsyncMs: 0 });
    const client = await clientFor(t, server);
    const id = await client.put(Buffer.from('in flight'));
    const job = await client.reserve(1);
    assert.equal(job?.id, id);

    await server.kill();
    await waitFor(() => !client.connected, { what: 'the client to notice the drop' });
    assert.equal((await rejectionOf(job.touch())).code, 'STALE_RESERVATION', 'stale while disconnected');
    await server.restart();
    await waitFor(() => client.connected, { what: 'the client to reconnect' });

    assert.equal((await rejectionOf(job.delete())).code, 'STALE_RESERVATION');
    assert.equal((await rejectionOf(job.release())).code, 'STALE_RESERVATION');
    assert.equal((await client.statsJob(id)).state, 'ready', 'the stale delete did not reach the server');
    const again = await client.reserve(1);
    assert.equal(again?.id, id);
    await again.delete();
  });

  test('connect() rejects while nothing listens, and the client connects by itself once beanstalkd starts', TEST_TIMEOUT, async (t) => {
    const port = await freePort();
    const client = new BeanstalkClient({ host: '127.0.0.1', port });
    t.after(() => client.close());

    assert.equal((await rejectionOf(client.connect())).code, 'DISCONNECTED');
    assert.equal((await rejectionOf(client.put(Buffer.from('x')))).code, 'DISCONNECTED');
    await beanstalkdFor(t, { port });
    await waitFor(() => client.connected, { what: 'the client to connect in the background' });

    assert.match(await client.put(Buffer.from('x')), /^[0-9]+$/);
  });

  test('use, watch and ignore called while disconnected reject, and are applied once the client connects', TEST_TIMEOUT, async (t) => {
    const port = await freePort();
    const client = new BeanstalkClient({ host: '127.0.0.1', port });
    t.after(() => client.close());
    await rejectionOf(client.connect());

    assert.equal((await rejectionOf(client.use('mail'))).code, 'DISCONNECTED');
    assert.equal((await rejectionOf(client.watch('mail'))).code, 'DISCONNECTED');
    assert.equal((await rejectionOf(client.ignore('default'))).code, 'DISCONNECTED');
    await beanstalkdFor(t, { port });
    await waitFor(() => client.connected, { what: 'the client to connect in the background' });

    assert.equal(await client.listTubeUsed(), 'mail');
    assert.deepEqual(await client.listTubesWatched(), ['mail']);
  });

  test('no unhandled error or rejection escapes while the server vanishes with commands in flight', TEST_TIMEOUT, async (t) => {
    const escaped: unknown[] = [];
    const record = (err: unknown): void => {
      escaped.push(err);
    };
    process.on('uncaughtException', record);
    process.on('unhandledRejection', record);
    t.after(() => {
      process.off('uncaughtException', record);
      process.off('unhandledRejection', record);
    });
    const server = await beanstalkdFor(t);
    const producer = await clientFor(t, server);
    const consumer = await clientFor(t, server);
    await producer.use('busy');
    await consumer.watch('busy');
    const puts = Array.from({ length: 200 }, (_, i) => producer.put(Buffer.alloc(1024, i % 256)).catch((err: unknown) => err));
    const reserve = consumer.reserve(20).catch((err: unknown) => err);
    const reconnectAttempts = new Promise<void>((resolve) => {
      // Reconnect attempts against a dead port run at 100, 200, 400 ms...: wait for some of them.
      setTimeout(resolve, 800);
    });

    await server.kill();
    const outcomes = await Promise.all(puts);
    const reserved = await reserve;
    await reconnectAttempts;

    for (const outcome of outcomes) {
      if (typeof outcome !== 'string') assert.equal((outcome as BeanstalkError).code, 'DISCONNECTED');
    }
    assert.ok(!(reserved instanceof Error) || (reserved as BeanstalkError).code === 'DISCONNECTED');
    assert.equal(producer.connected, false);
    assert.equal(consumer.connected, false);
    assert.deepEqual(escaped, []);
  });

  test('close() rejects a pending reserve with DISCONNECTED and stops reconnecting', TEST_TIMEOUT, async (t) => {
    const server = await beanstalkdFor(t);
    const client = await clientFor(t, server);
    const pending = rejectionOf(client.reserve(20));

    await client.close();

    assert.equal((await pending).code, 'DISCONNECTED');
    await new Promise((resolve) => setTimeout(resolve, 400)); // longer than the first reconnect backoffs
    assert.equal(client.connected, false, 'no reconnect after close()');
    assert.equal((await rejectionOf(client.stats())).code, 'DISCONNECTED');
  });
});

describe('BeanstalkClient against a server that never answers', () => {
  let silent: { host: string; port: number; close(): Promise<void> };
  before(async () => {
    const sockets = new Set<Socket>();
    const tcp = createServer((socket) => {
      sockets.add(socket);
      socket.on('error', () => undefined);
      socket.on('close', () => sockets.delete(socket));
    });
    await new Promise<void>((resolve) => tcp.listen(0, '127.0.0.1', resolve));
    const address = tcp.address();
    assert.ok(address && typeof address === 'object');
    silent = {
      host: '127.0.0.1',
      port: address.port,
      close: () =>
        new Promise((resolve) => {
          for (const socket of sockets) socket.destroy();
          tcp.close(() => resolve());
        }),
    };
  });
  after(() => silent.close());

  test('a command without an answer rejects TIMEOUT and the connection is dropped', TEST_TIMEOUT, async (t) => {
    const client = await clientFor(t, silent, { commandTimeoutMs: 200, autoReconnect: false });
    const disconnected = new Promise((resolve) => client.once('disconnect', resolve));

    const put = client.put(Buffer.from('unanswered'));
    const queued = client.stats();

    assert.equal((await rejectionOf(put)).code, 'TIMEOUT');
    assert.equal((await rejectionOf(queued)).code, 'DISCONNECTED', 'commands behind it cannot be trusted either');
    await disconnected;
    assert.equal(client.connected, false);
  });

  test('reserve waits its own timeout plus the margin before it rejects TIMEOUT', TEST_TIMEOUT, async (t) => {
    const client = await clientFor(t, silent, { commandTimeoutMs: 200, autoReconnect: false });

    assert.equal((await rejectionOf(client.reserve(1))).code, 'TIMEOUT');
    assert.equal(client.connected, false);
  });
});
