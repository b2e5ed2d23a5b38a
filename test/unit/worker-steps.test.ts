import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import type { BeanstalkClient, ReservedJob } from '../../shared/beanstalk.ts';
import { BeanstalkError } from '../../shared/beanstalk-protocol.ts';
import type { OutboundJob } from '../../shared/job.ts';
import { attemptDelivery, recipientsByDomain } from '../../worker/attempt.ts';
import { commitAttempt, keepJob } from '../../worker/commit.ts';
import { createConnector } from '../../worker/connection.ts';
import type { DeliveryRequest } from '../../worker/deliver.ts';
import { handleReservedJob, type WorkerDeps } from '../../worker/handle-job.ts';
import { createWorkerMetrics } from '../../worker/metrics.ts';
import { createConnectionPool } from '../../worker/pool.ts';
import type { Route } from '../../worker/route.ts';
import { settle } from '../../worker/settle.ts';
import type { SessionOptions, SmtpSession } from '../../worker/smtp-session.ts';
import { createTlsPolicy } from '../../worker/tls-policy.ts';
import { runTransaction } from '../../worker/transaction.ts';

/** The delivery path's steps one at a time, each with fakes for its neighbours. */

const silent = pino({ level: 'silent' });
const NOW = 1_700_000_000_000;

function job(overrides: Partial<OutboundJob> = {}): OutboundJob {
  return { v: 1, id: 'msg-1', fqdn: 'app.test', mailfrom: 'a@example.com', rcpttos: ['x@one.test', 'y@two.test', 'z@one.test'], data: '', receivedAt: NOW, attempts: 0, ...overrides };
}

/** A session that answers from a script; `sent` records what it was asked to send. */
function fakeSession(script: { handshake?: () => Promise<void>; send?: () => Promise<unknown>; utf8?: boolean; reset?: boolean } = {}) {
  const calls: string[] = [];
  let closed = false;
  const listeners: Array<() => void> = [];
  const session = {
    secure: false,
    get closed() {
      return closed;
    },
    supportsSmtpUtf8: script.utf8 ?? true,
    localAddress: '127.0.0.1',
    tlsDetails: () => ({}),
    onClosed: (listener: () => void) => listeners.push(listener),
    closeOnAbort: () => () => {},
    handshake: async () => {
      calls.push('handshake');
      await script.handshake?.();
    },
    send: async (envelope: { to: string[] }) => {
      calls.push(`send ${envelope.to.join(',')}`);
      if (script.send) return script.send();
      return { accepted: envelope.to, rejectedErrors: [], response: '250 2.0.0 ok' };
    },
    recipientFailures: () => new Map(),
    reset: async () => {
      calls.push('reset');
      return script.reset ?? true;
    },
    quit: () => {
      calls.push('quit');
      closed = true;
      for (const l of listeners.splice(0)) l();
    },
    close: () => {
      calls.push('close');
      closed = true;
      for (const l of listeners.splice(0)) l();
    },
  };
  return { session: session as unknown as SmtpSession, calls };
}

describe('attempt: recipients by domain, a route and a delivery each', () => {
  it('groups recipients by domain in their order', () => {
    assert.deepEqual([...recipientsByDomain(['a@one.test', 'b@two.test', 'c@one.test'])], [['one.test', ['a@one.test', 'c@one.test']], ['two.test', ['b@two.test']]]);
  });

  it('a domain without a route gets the route verdict, a failing delivery defers its domain only', async () => {
    const routes: Record<string, Route> = {
      'one.test': { ok: true, hosts: [{ name: 'mx.one.test', preference: 0, addresses: ['192.0.2.1'], port: 25 }] },
      'two.test': { ok: false, verdict: { outcome: 'bounced', greylisted: false, responseCode: 550, enhancedCode: '5.1.2', response: '550 5.1.2 no such domain' } },
    };
    const requests: DeliveryRequest[] = [];
    const results = await attemptDelivery(job(), Buffer.from('m'), {
      router: { routeFor: async (domain) => routes[domain]! },
      deliverer: {
        deliver: async (request) => {
          requests.push(request);
          throw new Error('boom');
        },
      },
      metrics: createWorkerMetrics(new Registry()),
      logger: silent,
    });
    assert.deepEqual(requests.map((r) => [r.domain, r.recipients]), [['one.test', ['x@one.test', 'z@one.test']]]);
    const byRecipient = new Map(results.map((r) => [r.recipient, r]));
    assert.equal(byRecipient.get('y@two.test')?.enhancedCode, '5.1.2');
    assert.equal(byRecipient.get('x@one.test')?.outcome, 'deferred');
    assert.match(byRecipient.get('z@one.test')!.response, /internal error: boom/);
  });
});

describe('tls policy decision', () => {
  const target = { domain: 'example.org', mxName: 'mx.example.org', address: '192.0.2.7' };

  it('under may a failed handshake is tried once more in plaintext, and the host is remembered', async () => {
    let now = NOW;
    const policy = createTlsPolicy({ policy: 'may', domains: {}, brokenHostMemoryMs: 1000 }, () => now);
    const first = await policy.decide(target);
    assert.deepEqual([first.mode, first.plaintext], ['may', false]);
    const next = policy.afterHandshakeFailure(target, first, { message: 'handshake', code: 'ETLS' });
    assert.ok('retry' in next && next.retry.plaintext && next.retry.options.ignoreTLS);
    assert.equal((await policy.decide(target)).plaintext, true, 'remembered');
    now += 1001;
    assert.equal((await policy.decide(target)).plaintext, false, 'forgotten after brokenHostMemoryMs');
  });

  it('under encrypt a failed STARTTLS is the verdict, never plaintext; other failures are classified', async () => {
    const policy = createTlsPolicy({ policy: 'may', domains: { 'example.org': 'encrypt' }, brokenHostMemoryMs: 1000 });
    const decision = await policy.decide(target);
    const tls = policy.afterHandshakeFailure(target, decision, { message: 'x', command: 'STARTTLS', response: '454 4.7.0 TLS not available' });
    assert.ok('verdict' in tls && tls.verdict.enhancedCode === '4.7.10');
    const refused = policy.afterHandshakeFailure(target, decision, { message: 'connect ECONNREFUSED', code: 'ECONNECTION' });
    assert.ok('verdict' in refused && refused.verdict.outcome === 'deferred' && /ECONNECTION/.test(refused.verdict.response));
  });
});

describe('connection: pool, slot, session, TLS decision', () => {
  const host = { name: 'mx.example.org', preference: 0, addresses: ['192.0.2.7'], port: 25 };
  const target = { domain: 'example.org', host, address: '192.0.2.7', source: { ehloName: 'out.test' }, bucket: { key: 'example.org', limit: {} } };

  it('reuses a kept connection for the same server and decision, opens one otherwise', async () => {
    const pool = createConnectionPool({ maxMessagesPerConnection: 10, idleTimeoutMs: 60_000 });
    const opened: SessionOptions[] = [];
    const connector = createConnector({
      pool,
      tlsPolicy: createTlsPolicy({ policy: 'may', domains: {}, brokenHostMemoryMs: 1000 }),
      timeouts: { connectMs: 1, greetingMs: 1, socketMs: 1 },
      logger: silent,
      openSession: (options) => {
        opened.push(options);
        return fakeSession().session;
      },
    });
    const first = await connector.connect(target, { reuse: true });
    assert.ok(first.ok && !first.reused);
    first.pooled.messages = 1;
    pool.give(first.pooled);
    const second = await connector.connect(target, { reuse: true });
    assert.ok(second.ok && second.reused && second.pooled === first.pooled);
    pool.give(second.pooled);
    const fresh = await connector.connect(target, { reuse: false });
    assert.ok(fresh.ok && !fresh.reused);
    assert.equal(opened.length, 2);
    pool.closeIdle();
  });

  it('under may a failed TLS handshake opens a second session in plaintext', async () => {
    const opened: SessionOptions[] = [];
    const connector = createConnector({
      pool: createConnectionPool({ maxMessagesPerConnection: 1, idleTimeoutMs: 0 }),
      tlsPolicy: createTlsPolicy({ policy: 'may', domains: {}, brokenHostMemoryMs: 60_000 }),
      timeouts: { connectMs: 1, greetingMs: 1, socketMs: 1 },
      logger: silent,
      openSession: (options) => {
        opened.push(options);
        const tlsFails = opened.length === 1;
        return fakeSession({ handshake: async () => (tlsFails ? Promise.reject(Object.assign(new Error('bad record mac'), { code: 'ETLS' })) : undefined) }).session;
      },
    });
    const connection = await connector.connect(target, { reuse: true });
    assert.ok(connection.ok && connection.tls.plaintext);
    assert.deepEqual(opened.map((o) => o.tls.ignoreTLS), [false, true]);
  });

  it('a limit that refuses is a refusal, not an unreachable address', async () => {
    const refusal = { outcome: 'deferred' as const, greylisted: false, response: '451 4.4.5 full' };
    const connector = createConnector({
      pool: createConnectionPool({ maxMessagesPerConnection: 1, idleTimeoutMs: 0 }),
      tlsPolicy: createTlsPolicy({ policy: 'none', domains: {}, brokenHostMemoryMs: 0 }),
      limiter: { connectionSlot: async () => ({ ok: false, verdict: refusal }) } as never,
      timeouts: { connectMs: 1, greetingMs: 1, socketMs: 1 },
      logger: silent,
      openSession: () => assert.fail('no session without a slot'),
    });
    assert.deepEqual(await connector.connect(target, { reuse: true }), { ok: false, verdict: refusal, refused: true });
  });
});

describe('transaction: verdicts per recipient, and the session afterwards', () => {
  const pool = () => createConnectionPool({ maxMessagesPerConnection: 10, idleTimeoutMs: 60_000 });
  const message = { from: 'a@example.com', recipients: ['x@one.test', 'ü@one.test'], raw: Buffer.from('m') };

  it('refuses non-ASCII recipients to a server without SMTPUTF8 and sends to the others', async () => {
    const { session, calls } = fakeSession({ utf8: false });
    const p = pool();
    const outcome = await runTransaction(p.track(session, 'k', undefined), p, message, { mx: 'mx', resetTimeoutMs: 1 });
    assert.ok(outcome.kind === 'results');
    assert.deepEqual(outcome.results.map((r) => [r.recipient, r.outcome, r.enhancedCode]), [['ü@one.test', 'bounced', '5.6.7'], ['x@one.test', 'delivered', '2.0.0']]);
    assert.deepEqual(calls, ['send x@one.test']);
    assert.equal(p.idleCount, 1, 'back in the pool');
    p.closeIdle();
  });

  it('a refused message resets the session and keeps it; a kept connection found closed is lost, not a verdict', async () => {
    const refused = fakeSession({ send: async () => Promise.reject(Object.assign(new Error('x'), { code: 'EMESSAGE', command: 'DATA', response: '554 5.7.1 spam', responseCode: 554 })) });
    const p = pool();
    const outcome = await runTransaction(p.track(refused.session, 'k', undefined), p, { ...message, recipients: ['x@one.test'] }, { mx: 'mx', resetTimeoutMs: 1 });
    assert.ok(outcome.kind === 'results' && outcome.results[0]!.outcome === 'bounced');
    assert.deepEqual(refused.calls, ['send x@one.test', 'reset']);
    assert.equal(p.idleCount, 1);
    p.closeIdle();

    const gone = fakeSession({ send: async () => Promise.reject(Object.assign(new Error('closed'), { code: 'ECONNECTION', command: 'CONN' })) });
    const kept = p.track(gone.session, 'k', undefined);
    kept.messages = 1;
    assert.deepEqual(await runTransaction(kept, p, { ...message, recipients: ['x@one.test'] }, { mx: 'mx', resetTimeoutMs: 1 }), { kind: 'lost' });
  });
});

/** A reserving client and job that record what is done with them. */
function fakeQueue(options: { failPut?: unknown; stats?: Record<string, number> } = {}) {
  const done: string[] = [];
  let id = 100;
  const client = {
    server: '127.0.0.1:11300',
    putTo: async (tube: string) => {
      if (options.failPut) throw options.failPut;
      done.push(`put ${tube}`);
      return String(++id);
    },
    statsJob: async () => options.stats ?? { ttr: 600, reserves: 1 },
  } as unknown as BeanstalkClient;
  const reserved = (payload: Buffer) =>
    ({
      id: '7',
      payload,
      server: '127.0.0.1:11300',
      delete: async () => void done.push('delete'),
      release: async (o?: { delaySeconds?: number }) => void done.push(`release ${o?.delaySeconds}`),
      bury: async () => void done.push('bury'),
      touch: async () => {},
    }) as ReservedJob;
  return { client, reserved, done };
}

describe('commit: put before delete', () => {
  const policy = { delaysSeconds: [60], maxLifetimeSeconds: 3600 };
  const deps = { tubes: { outbound: 'out', failed: 'failed' }, ttrSeconds: 600, now: NOW };

  it('puts the failed record, the retry and the notices, then deletes', async () => {
    const settlement = settle(
      job(),
      [
        { recipient: 'x@one.test', outcome: 'bounced', greylisted: false, response: '550 no' },
        { recipient: 'y@two.test', outcome: 'deferred', greylisted: false, response: '451 later' },
      ],
      { policy, attemptStartedAt: NOW, now: NOW },
    );
    const { client, reserved, done } = fakeQueue();
    const ids = await commitAttempt(client, reserved(Buffer.from('')), job(), settlement, [{ kind: 'failure', job: job(), recipients: ['a@example.com'] }], deps);
    assert.deepEqual(done, ['put failed', 'put out', 'put out', 'delete']);
    assert.deepEqual([ids.failedJobId, ids.retryJobId, ids.noticeJobIds], ['101', '102', ['103']]);
  });

  it('keeps the job when the outcome cannot be put: buried for JOB_TOO_BIG, else released', async () => {
    const { reserved, done } = fakeQueue();
    const metrics = createWorkerMetrics(new Registry());
    await keepJob(reserved(Buffer.from('')), job(), new BeanstalkError('JOB_TOO_BIG', 'big'), { logger: silent, metrics, releaseDelaySeconds: 60 });
    await keepJob(reserved(Buffer.from('')), job(), new BeanstalkError('DISCONNECTED', 'gone'), { logger: silent, metrics, releaseDelaySeconds: 60 });
    assert.deepEqual(done, ['bury', 'release 60']);
  });
});

describe('handle-job: what is never delivered', () => {
  function deps(): WorkerDeps {
    return {
      router: { routeFor: async () => assert.fail('not routed') },
      deliverer: { deliver: async () => assert.fail('not delivered') },
      metrics: createWorkerMetrics(new Registry()),
      logger: silent,
      policy: { delaysSeconds: [60], maxLifetimeSeconds: 3600 },
      tubes: { outbound: 'out', failed: 'failed' },
      ttrSeconds: 600,
    };
  }

  it('buries a job it cannot decode, and one reserved again and again without an outcome', async () => {
    const undecodable = fakeQueue();
    await handleReservedJob(undecodable.client, undecodable.reserved(Buffer.from('{not json')), deps());
    const looping = fakeQueue({ stats: { ttr: 600, reserves: 21 } });
    await handleReservedJob(looping.client, looping.reserved(Buffer.from(JSON.stringify(job()))), deps());
    assert.deepEqual([undecodable.done, looping.done], [['bury'], ['bury']]);
  });
});
