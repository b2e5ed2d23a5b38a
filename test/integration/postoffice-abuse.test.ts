/**
 * The attacks of issue 12.6 and 12.11 against a real post office process with its default
 * message size (10 MiB) and a real beanstalkd: unauthenticated uploads that stall, a body
 * trickled a byte at a time, a 29 MB form with a wrong key, a flood of wrong keys. The
 * assertions are about behaviour (who is answered what, which connections are cut, what is
 * logged) and memory (the process's resident size from /proc); the figures (memory, CPU per
 * rejected request) are printed as test diagnostics for the README.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { jobSizeFor } from '../../shared/job.ts';
import { signRequest } from '../../shared/signing.ts';
import { bodyLimitFor, defaultPendingBodyBytes } from '../../postoffice/app.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { cpuSecondsOf, memoryOf, rawRequest, sampleMemory, type RawExchange } from '../helpers/http-attacks.ts';
import { freePort, waitFor } from '../helpers/ports.ts';
import { startTier, type TierProcess } from '../helpers/tiers.ts';

const FQDN = 'app1.abuse.test';
const KEY = '5ec12e7a'.repeat(8);
const MAX_MESSAGE_BYTES = 10 * 1024 * 1024;
const BODY_TIMEOUT_MS = 8000;
const AUTH_WINDOW_SECONDS = 3;
const MB = 1024 * 1024;

function signedHead(options: { length: number; fqdn?: string; signature?: string; extra?: string }): string {
  const headers = signRequest(KEY, { method: 'POST', path: '/v1/messages', fqdn: options.fqdn ?? FQDN, body: 'not this body' });
  return [
    'POST /v1/messages HTTP/1.1',
    'Host: postoffice',
    'Content-Type: application/json',
    `Content-Length: ${options.length}`,
    `x-hedwig-fqdn: ${options.fqdn ?? FQDN}`,
    `x-hedwig-timestamp: ${headers['x-hedwig-timestamp']}`,
    `x-hedwig-signature: ${options.signature ?? headers['x-hedwig-signature']}`,
    '',
    '',
  ].join('\r\n');
}

function formHead(length: number): string {
  return ['POST / HTTP/1.1', 'Host: postoffice', 'Content-Type: application/x-www-form-urlencoded', `Content-Length: ${length}`, '', ''].join('\r\n');
}

const statuses = (exchanges: RawExchange[]) => exchanges.reduce<Record<number, number>>((count, e) => ({ ...count, [e.status]: (count[e.status] ?? 0) + 1 }), {});

describe('post office under attack (issue 12.6, 12.11): real process, default sizes', { timeout: 120_000 }, () => {
  let beanstalkd: BeanstalkdProcess;
  let postoffice: TierProcess;
  let port: number;
  let pid: number;
  const bodySize = bodyLimitFor(MAX_MESSAGE_BYTES) - 1024; // as large as a signed request gets: ~13.4 MB
  const filler = Buffer.alloc(30 * MB, 'x');

  before(async () => {
    beanstalkd = await startBeanstalkd({ maxJobSize: jobSizeFor(MAX_MESSAGE_BYTES, 100) + 4096 });
    port = await freePort();
    postoffice = await startTier(
      'postoffice',
      {
        listen: { port },
        beanstalk: { servers: [beanstalkd.address] },
        uploads: { bodyTimeoutMs: BODY_TIMEOUT_MS },
        authFailures: { windowSeconds: AUTH_WINDOW_SECONDS, maxPerAddress: 30, maxPerAddressAndFqdn: 10 },
        clients: { [FQDN]: { key: KEY, senderDomains: ['abuse.test'] } },
      },
      { readyPort: port },
    );
    pid = postoffice.child.pid!;
  });

  after(async () => {
    await postoffice?.stop();
    await beanstalkd?.stop();
  });

  it('answers 40 stalled uploads with an unknown fqdn before reading their bodies, and cuts them', async (t) => {
    const baseline = memoryOf(pid).rssMB;
    const sampler = sampleMemory(pid);
    const exchanges = await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        rawRequest({ port, localAddress: `127.0.1.${i + 1}`, head: signedHead({ length: bodySize, fqdn: 'stranger.abuse.test' }), body: filler.subarray(0, bodySize), stallBytes: 1, waitMs: 20_000 }),
      ),
    );
    const peak = sampler.stop();
    t.diagnostic(`40 stalled uploads, unknown fqdn: RSS ${baseline.toFixed(0)} MB before, peak ${peak.toFixed(0)} MB; answers ${JSON.stringify(statuses(exchanges))}; each client got to write at most ${(Math.max(...exchanges.map((e) => e.bodyBytesWritten)) / MB).toFixed(1)} MB`);
    assert.deepEqual(statuses(exchanges), { 401: 40 });
    for (const e of exchanges) {
      assert.ok(e.closedByServer, 'the server closed the connection');
      assert.match(e.response, /"error":"bad_signature"/);
    }
    assert.ok(peak - baseline < 40, `RSS grew by ${(peak - baseline).toFixed(0)} MB (the old post office buffered every body: +460 MB)`);
  });

  it('holds at most maxPendingBodyBytes of 40 stalled uploads with valid headers: the rest get 503 busy, the stalled ones 408', async (t) => {
    const budgetMB = defaultPendingBodyBytes(MAX_MESSAGE_BYTES) / MB;
    const baseline = memoryOf(pid).rssMB;
    const sampler = sampleMemory(pid);
    const exchanges = await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        rawRequest({ port, localAddress: `127.0.2.${i + 1}`, head: signedHead({ length: bodySize }), body: filler.subarray(0, bodySize), stallBytes: 1, waitMs: BODY_TIMEOUT_MS + 20_000 }),
      ),
    );
    const peak = sampler.stop();
    const answers = statuses(exchanges);
    t.diagnostic(`40 stalled uploads, enrolled fqdn (bad signature): RSS ${baseline.toFixed(0)} MB before, peak ${peak.toFixed(0)} MB (budget ${budgetMB.toFixed(0)} MB); answers ${JSON.stringify(answers)}`);
    assert.deepEqual(Object.keys(answers).sort(), ['408', '503']);
    assert.ok(answers[408]! <= Math.floor(budgetMB / (bodySize / MB)) + 1, 'no more stalled bodies held than fit the budget');
    for (const e of exchanges) assert.ok(e.closedByServer);
    for (const e of exchanges.filter((x) => x.status === 503)) assert.match(e.response, /retry-after: 5\r\n/i);
    assert.ok(peak - baseline < budgetMB * 2 + 40, `RSS grew by ${(peak - baseline).toFixed(0)} MB, budget ${budgetMB.toFixed(0)} MB`);
    await waitFor(async () => (await fetch(`http://127.0.0.1:${port}/metrics`).then((r) => r.text())).includes('hedwig_postoffice_pending_body_bytes{tier="postoffice"} 0'), { what: 'every held body released' });
  });

  it('cuts a body trickled one byte every 5 s at bodyTimeoutMs with 408', async (t) => {
    const started = Date.now();
    const exchange = await rawRequest({ port, localAddress: '127.0.3.1', head: signedHead({ length: 1000 }), body: filler.subarray(0, 1000), trickle: { bytes: 1, everyMs: 5000 }, waitMs: BODY_TIMEOUT_MS + 20_000 });
    t.diagnostic(`trickle: answered ${exchange.status} after ${Date.now() - started} ms, ${exchange.bodyBytesWritten} body bytes sent`);
    assert.equal(exchange.status, 408);
    assert.match(exchange.response, /"error":"body_timeout"/);
    assert.ok(exchange.closedByServer);
    assert.ok(exchange.bodyBytesWritten < 1000, 'cut long before the body was complete');
  });

  it('refuses a 29 MB form with a wrong key after reading its first bytes', async (t) => {
    const email = filler.subarray(0, 29 * MB);
    const prefix = Buffer.from(`fqdn=${FQDN}&key=${'0'.repeat(64)}&email=`);
    const form = Buffer.concat([prefix, email]);
    const rounds = 10;
    const cpuBefore = cpuSecondsOf(pid);
    const baseline = memoryOf(pid).rssMB;
    const sampler = sampleMemory(pid);
    const exchanges: RawExchange[] = [];
    for (let i = 0; i < rounds; i++) exchanges.push(await rawRequest({ port, localAddress: '127.0.4.1', head: formHead(form.length), body: form, waitMs: 20_000 }));
    const cpu = cpuSecondsOf(pid) - cpuBefore;
    const peak = sampler.stop();
    t.diagnostic(`29 MB form, wrong key, ${rounds} times: ${((cpu / rounds) * 1000).toFixed(1)} ms CPU per request, RSS ${baseline.toFixed(0)} -> peak ${peak.toFixed(0)} MB; answers ${JSON.stringify(statuses(exchanges))}; client got to write at most ${(Math.max(...exchanges.map((e) => e.bodyBytesWritten)) / MB).toFixed(1)} MB`);
    assert.deepEqual(statuses(exchanges), { 401: rounds });
    for (const e of exchanges) {
      assert.ok(e.closedByServer);
      assert.ok(e.bodyBytesWritten < form.length, 'the connection was cut before the form was sent');
    }
    assert.ok(peak - baseline < 40, `RSS grew by ${(peak - baseline).toFixed(0)} MB`);
  });

  it('throttles a flood of wrong keys with 429 and Retry-After, logs it aggregated, and still takes the right key from elsewhere', async () => {
    const form = (key: string) => new URLSearchParams({ fqdn: FQDN, key, email: '{}' }).toString();
    const post = (body: string, localAddress: string) => rawRequest({ port, localAddress, head: formHead(Buffer.byteLength(body)), body: Buffer.from(body), waitMs: 10_000 });
    // A fresh window for the pair, so the counts below are this test's.
    await new Promise((r) => setTimeout(r, AUTH_WINDOW_SECONDS * 1000));
    const before = postoffice.logs.length;
    const answers: RawExchange[] = [];
    const started = Date.now();
    for (let i = 0; i < 200; i++) answers.push(await post(form(`wrong-${i}`), '127.0.5.1'));
    const elapsed = Date.now() - started + AUTH_WINDOW_SECONDS * 1000;
    assert.deepEqual(statuses(answers), { 401: 10, 429: 190 });
    assert.match(answers[199]!.response, /retry-after: \d+\r\n/i);
    const right = JSON.stringify({ mailfrom: 'a@abuse.test', rcpttos: ['b@dest.test'], data: 'From: a@abuse.test\r\n\r\nok\r\n' });
    const accepted = await post(new URLSearchParams({ fqdn: FQDN, key: KEY, email: right }).toString(), '127.0.5.2');
    assert.equal(accepted.status, 200, accepted.response);
    const lines = await waitFor(
      () => {
        const found = postoffice.logs.slice(before).filter((l) => l.event === 'auth_failures' && l.ip === '127.0.5.1');
        const throttled = found.reduce((sum, l) => sum + (l.throttled as number), 0);
        return throttled === 190 ? found : undefined;
      },
      { timeoutMs: AUTH_WINDOW_SECONDS * 1000 * 3, what: 'the aggregated auth_failures lines' },
    );
    // One line per interval (windowSeconds) for this address and fqdn, however many requests.
    assert.ok(lines.length <= 1 + Math.ceil(elapsed / (AUTH_WINDOW_SECONDS * 1000)), `${lines.length} lines for 200 failures in ${elapsed} ms`);
    assert.deepEqual(
      { fqdn: lines[0]!.fqdn, failures: lines.reduce((sum, l) => sum + (l.failures as number), 0), reasons: lines[0]!.reasons },
      { fqdn: FQDN, failures: 10, reasons: { wrong_key: 10 } },
    );
    assert.equal(postoffice.logs.slice(before).filter((l) => l.event === 'rejected').length, 0, 'no line per request');
  });

  it('is still up, serves the enrolled host, and logged no error', async () => {
    const payload = JSON.stringify({ mailfrom: 'a@abuse.test', rcpttos: ['b@dest.test'], data: 'From: a@abuse.test\r\n\r\nstill up\r\n' });
    const headers = signRequest(KEY, { method: 'POST', path: '/v1/messages', fqdn: FQDN, body: payload });
    const res = await fetch(`http://127.0.0.1:${port}/v1/messages`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: payload, signal: AbortSignal.timeout(10_000) });
    assert.equal(res.status, 202);
    assert.equal(postoffice.child.exitCode, null);
    assert.deepEqual(postoffice.logs.filter((l) => (l.level as number) >= 50), []);
  });
});
