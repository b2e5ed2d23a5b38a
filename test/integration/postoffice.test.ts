import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { BeanstalkClient } from '../../shared/beanstalk.ts';
import { decodeOutboundJob, jobSizeFor, type OutboundJob } from '../../shared/job.ts';
import { signRequest } from '../../shared/signing.ts';
import { postofficeConfigSchema } from '../../postoffice/config.ts';
import { startPostoffice, type RunningPostoffice } from '../../postoffice/server.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { freePort, waitFor } from '../helpers/ports.ts';
import { readmeSignedCurl } from '../helpers/readme.ts';
import { testStoreUrl } from '../helpers/store.ts';

const run = promisify(execFile);

const FQDN = 'app1.example.net';
const KEY = 'integration-key-0123456789abcdef0123456789';
const TUBE = 'hedwig-outbound-test';
const MAX_BYTES = 100_000;
const MAX_RCPTS = 10;
// 8-bit and CRLF content: what arrives in the tube must be these exact bytes.
const MESSAGE = Buffer.concat([Buffer.from('From: a@example.com\r\nTo: b@example.org\r\nSubject: caf'), Buffer.from([0xe9]), Buffer.from('\r\n\r\nline one\r\n.\r\nline three\xff\r\n', 'latin1')]);

/** The README's shell recipe for a signed request, run literally by bash in a directory holding message.json. */
async function runReadmeCurl(body: string | Buffer, url: string): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'hedwig-readme-curl-'));
  writeFileSync(join(dir, 'message.json'), body);
  const { stdout } = await run('bash', ['-c', readmeSignedCurl()], { cwd: dir, env: { PATH: process.env.PATH, FQDN, KEY, URL: url }, timeout: 15_000 });
  return stdout;
}

function captureLogger(lines: string[]) {
  return pino({ level: 'info' }, { write: (line: string) => void lines.push(line) });
}

async function postSigned(url: string, body: string, idempotencyKey?: string): Promise<{ status: number; json: Record<string, unknown>; headers: Headers }> {
  const headers = signRequest(KEY, { method: 'POST', path: '/v1/messages', fqdn: FQDN, body, idempotencyKey });
  const res = await fetch(`${url}/v1/messages`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body, signal: AbortSignal.timeout(15_000) });
  return { status: res.status, json: (await res.json()) as Record<string, unknown>, headers: res.headers };
}

function submission(data: Buffer = MESSAGE): string {
  return JSON.stringify({ mailfrom: 'sender@example.com', rcpttos: ['one@example.org', 'two@example.net'], data_base64: data.toString('base64') });
}

/** Takes the next job from the tube (a separate connection, like a worker) and deletes it. */
async function takeJob(reader: BeanstalkClient): Promise<OutboundJob> {
  const job = await reader.reserve(5);
  assert.ok(job, 'a job should be ready in the tube');
  await job.delete();
  return decodeOutboundJob(job.payload);
}

async function startReader(address: { host: string; port: number }): Promise<BeanstalkClient> {
  const reader = new BeanstalkClient(address, { autoReconnect: true });
  await reader.connect();
  await reader.watch(TUBE);
  await reader.ignore('default');
  return reader;
}

describe('post office against a real beanstalkd', { timeout: 90_000 }, () => {
  let beanstalkd: BeanstalkdProcess;
  let postoffice: RunningPostoffice;
  let reader: BeanstalkClient;
  const logs: string[] = [];

  before(async () => {
    beanstalkd = await startBeanstalkd({ maxJobSize: jobSizeFor(MAX_BYTES, MAX_RCPTS) });
    const config = postofficeConfigSchema.parse({ store: { url: testStoreUrl() },
      listen: { host: '127.0.0.1', port: await freePort() },
      beanstalk: { servers: [beanstalkd.address], tube: TUBE },
      limits: { maxMessageBytes: MAX_BYTES, maxRecipients: MAX_RCPTS },
      clients: { [FQDN]: { key: KEY, senderDomains: ['example.com'] } },
    });
    postoffice = await startPostoffice(config, { logger: captureLogger(logs), registry: new Registry() });
    reader = await startReader({ host: beanstalkd.host, port: beanstalkd.port });
  });

  after(async () => {
    await reader?.close();
    await postoffice?.stop();
    await beanstalkd?.stop();
  });

  it('answers 202 once the job is in the configured tube, holding the exact message bytes', async () => {
    const res = await postSigned(postoffice.url, submission());
    assert.equal(res.status, 202);
    const job = await takeJob(reader);
    assert.equal(job.id, res.json.id);
    assert.equal(job.fqdn, FQDN);
    assert.deepEqual(job.rcpttos, ['one@example.org', 'two@example.net']);
    assert.deepEqual(Buffer.from(job.data, 'base64'), MESSAGE);
    assert.equal(job.attempts, 0);
  });

  it('answers 503 while beanstalkd is down and 202 again once it is back, without a restart', async () => {
    await beanstalkd.kill();
    const down = await postSigned(postoffice.url, submission(), 'outage-1');
    assert.equal(down.status, 503);
    assert.equal(down.json.error, 'queue_unavailable');
    assert.ok(down.headers.get('retry-after'));
    await waitFor(async () => (await fetch(`${postoffice.url}/readyz`)).status === 503, { what: '/readyz to report 503' });

    await beanstalkd.restart();
    await waitFor(async () => (await fetch(`${postoffice.url}/readyz`)).status === 200, { timeoutMs: 20_000, what: '/readyz to recover' });
    const again = await postSigned(postoffice.url, submission(), 'outage-1');
    assert.equal(again.status, 202);
    await waitFor(() => reader.connected, { timeoutMs: 20_000, what: 'the reader to reconnect' });
    const job = await takeJob(reader);
    assert.equal(job.id, again.json.id);
    assert.deepEqual(Buffer.from(job.data, 'base64'), MESSAGE);
  });

  it('accepts a request signed by the README shell pipeline (bash, openssl, curl)', async () => {
    const data = 'From: sender@example.com\r\nSubject: from curl\r\n\r\nhi there\r\n';
    const stdout = await runReadmeCurl(JSON.stringify({ mailfrom: 'sender@example.com', rcpttos: ['one@example.org'], data }), postoffice.url);
    const answer = JSON.parse(stdout) as { id?: string; error?: string };
    assert.equal(answer.error, undefined, stdout);
    const job = await takeJob(reader);
    assert.equal(job.id, answer.id);
    assert.equal(Buffer.from(job.data, 'base64').toString(), data);
  });

  it('the README shell pipeline works for a body over 128 KiB (the kernel limit of one argument)', async () => {
    const message = Buffer.concat([Buffer.from('From: sender@example.com\r\nSubject: big\r\n\r\n'), Buffer.alloc(MAX_BYTES - 50, 0xe9)]);
    const body = submission(message);
    assert.ok(body.length > 128 * 1024);
    const answer = JSON.parse(await runReadmeCurl(body, postoffice.url)) as { id?: string; error?: string };
    assert.equal(answer.error, undefined);
    const job = await takeJob(reader);
    assert.equal(job.id, answer.id);
    assert.deepEqual(Buffer.from(job.data, 'base64'), message);
  });

  it('accepts the legacy hedwig form post from curl --data-urlencode and answers 200', async () => {
    const email = JSON.stringify({ mailfrom: 'sender@example.com', rcpttos: ['one@example.org'], data: 'From: sender@example.com\r\nSubject: legacy\r\n\r\nfrom the old client & co.\r\n' });
    // As the README sends it: the message from a file (email@message.json).
    const dir = mkdtempSync(join(tmpdir(), 'hedwig-legacy-curl-'));
    writeFileSync(join(dir, 'message.json'), email);
    const { stdout } = await run(
      'curl',
      ['-sS', '-w', '\n%{http_code}', '--data-urlencode', `fqdn=${FQDN}`, '--data-urlencode', `key=${KEY}`, '--data-urlencode', 'email@message.json', `${postoffice.url}/`],
      { timeout: 15_000, cwd: dir },
    );
    const [body, status] = stdout.split('\n');
    assert.equal(status, '200', stdout);
    const job = await takeJob(reader);
    assert.equal(job.id, (JSON.parse(body!) as { id: string }).id);
    assert.equal(Buffer.from(job.data, 'base64').toString(), 'From: sender@example.com\r\nSubject: legacy\r\n\r\nfrom the old client & co.\r\n');

    const wrong = await run('curl', ['-sS', '-w', '\n%{http_code}', '--data-urlencode', `fqdn=${FQDN}`, '--data-urlencode', 'key=wrong', '--data-urlencode', `email=${email}`, `${postoffice.url}/`], { timeout: 15_000 });
    assert.deepEqual(wrong.stdout.split('\n'), ['{"error":"bad_credentials","message":"unknown fqdn or wrong key"}', '401']);
  });

  it('never logs the key or the message', () => {
    const all = logs.join('');
    assert.ok(logs.some((l) => l.includes('"event":"queued"')));
    assert.ok(!all.includes(KEY));
    assert.ok(!all.includes(MESSAGE.toString('base64')) && !all.includes('hi there'));
  });
});

describe('post office with two beanstalkd servers', { timeout: 60_000 }, () => {
  it('fails over to the other server when one is down', async (t) => {
    const first = await startBeanstalkd();
    t.after(() => first.stop());
    const second = await startBeanstalkd();
    t.after(() => second.stop());
    const config = postofficeConfigSchema.parse({ store: { url: testStoreUrl() },
      listen: { port: await freePort() },
      beanstalk: { servers: [first.address, second.address], tube: TUBE },
      clients: { [FQDN]: { key: KEY, senderDomains: ['example.com'] } },
    });
    const lines: string[] = [];
    const postoffice = await startPostoffice(config, { logger: captureLogger(lines), registry: new Registry() });
    t.after(() => postoffice.stop());
    // Default beanstalkd (-z 65535) against the default 10 MiB message limit.
    assert.equal(lines.filter((l) => l.includes('"event":"beanstalk_job_size_too_small"')).length, 2);
    const readerFirst = await startReader({ host: first.host, port: first.port });
    t.after(() => readerFirst.close());
    const readerSecond = await startReader({ host: second.host, port: second.port });
    t.after(() => readerSecond.close());

    // Distinct bodies: two identical unkeyed requests in the same second would be a replay.
    const small = (n: number) => submission(Buffer.from(`Subject: ${n}\r\n\r\ny\r\n`));
    assert.equal((await postSigned(postoffice.url, small(1))).status, 202);
    assert.equal((await postSigned(postoffice.url, small(2))).status, 202);
    assert.equal((await readerFirst.statsTube(TUBE))['current-jobs-ready'], 1, 'round-robin: one job on each server');
    assert.equal((await readerSecond.statsTube(TUBE))['current-jobs-ready'], 1);

    await first.kill();
    for (let i = 3; i < 6; i++) assert.equal((await postSigned(postoffice.url, small(i))).status, 202);
    assert.equal((await readerSecond.statsTube(TUBE))['current-jobs-ready'], 4);
  });

  it('starts while beanstalkd is down, reports not ready, and puts into the configured tube once it is up', async (t) => {
    const port = await freePort();
    const config = postofficeConfigSchema.parse({ store: { url: testStoreUrl() },
      listen: { port: await freePort() },
      beanstalk: { servers: [`127.0.0.1:${port}`], tube: TUBE },
      clients: { [FQDN]: { key: KEY, senderDomains: ['example.com'] } },
    });
    const postoffice = await startPostoffice(config, { logger: captureLogger([]), registry: new Registry() });
    t.after(() => postoffice.stop());
    assert.equal((await fetch(`${postoffice.url}/readyz`)).status, 503);
    assert.equal((await postSigned(postoffice.url, submission())).status, 503);

    const late = await startBeanstalkd({ port, maxJobSize: jobSizeFor(MAX_BYTES, MAX_RCPTS) });
    t.after(() => late.stop());
    await waitFor(async () => (await fetch(`${postoffice.url}/readyz`)).status === 200, { timeoutMs: 20_000, what: '/readyz after beanstalkd started' });
    assert.equal((await postSigned(postoffice.url, submission())).status, 202);
    const reader = await startReader({ host: late.host, port: late.port });
    t.after(() => reader.close());
    assert.deepEqual(Buffer.from((await takeJob(reader)).data, 'base64'), MESSAGE);
  });
});
