/**
 * Every message size up to the documented limit is queued (issue 12.1: from about 3.5 MiB
 * on, a regular expression over data_base64 made V8 throw and the post office answered
 * 500 for ever). A real post office process with its default limits and a real beanstalkd
 * sized for them.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { BeanstalkClient } from '../../shared/beanstalk.ts';
import { decodeOutboundJob, jobSizeFor, TUBE } from '../../shared/job.ts';
import { signRequest } from '../../shared/signing.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { freePort } from '../helpers/ports.ts';
import { startTier, type TierProcess } from '../helpers/tiers.ts';

const FQDN = 'app1.sizes.test';
const KEY = 'a1b2c3d4'.repeat(8);
const MAX_MESSAGE_BYTES = 10 * 1024 * 1024; // the default of limits.maxMessageBytes
const MiB = 1024 * 1024;

function messageOf(size: number): Buffer {
  const bytes = Buffer.alloc(size, 0x41);
  const head = Buffer.from('From: a@sizes.test\r\nTo: b@dest.test\r\nSubject: big\r\n\r\n');
  head.copy(bytes, 0, 0, Math.min(head.length, size));
  // 8-bit bytes at the end, so only data_base64 can carry it unchanged.
  if (size > head.length + 2) bytes.set([0xff, 0xe9], size - 2);
  return bytes;
}

describe('message sizes up to limits.maxMessageBytes (real post office, real beanstalkd)', { timeout: 120_000 }, () => {
  let beanstalkd: BeanstalkdProcess;
  let postoffice: TierProcess;
  let reader: BeanstalkClient;
  let url: string;

  before(async () => {
    beanstalkd = await startBeanstalkd({ maxJobSize: jobSizeFor(MAX_MESSAGE_BYTES, 100) + 1024 });
    const port = await freePort();
    postoffice = await startTier('postoffice', { listen: { port }, beanstalk: { servers: [beanstalkd.address] }, clients: { [FQDN]: { key: KEY, senderDomains: ['sizes.test'] } } }, { readyPort: port });
    url = `http://127.0.0.1:${port}`;
    reader = new BeanstalkClient({ host: beanstalkd.host, port: beanstalkd.port });
    await reader.connect();
    await reader.watchOnly(TUBE.outbound);
  });

  after(async () => {
    await reader?.close();
    await postoffice?.stop();
    await beanstalkd?.stop();
  });

  async function submit(size: number): Promise<{ status: number; body: Record<string, unknown> }> {
    const payload = JSON.stringify({ mailfrom: 'a@sizes.test', rcpttos: ['b@dest.test'], data_base64: messageOf(size).toString('base64') });
    const headers = signRequest(KEY, { method: 'POST', path: '/v1/messages', fqdn: FQDN, body: payload });
    const res = await fetch(`${url}/v1/messages`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: payload, signal: AbortSignal.timeout(60_000) });
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  }

  for (const size of [1, 64 * 1024, 3.5 * MiB, 5 * MiB, 8 * MiB, MAX_MESSAGE_BYTES]) {
    it(`queues a message of ${size} bytes as data_base64 with 202, byte for byte`, async () => {
      const answer = await submit(size);
      assert.equal(answer.status, 202, JSON.stringify(answer.body));
      const job = await reader.reserve(10);
      assert.ok(job, 'the job is in the tube');
      await job.delete();
      const queued = decodeOutboundJob(job.payload);
      assert.equal(queued.id, answer.body.id);
      // The 1-byte message has no From:, so the post office puts one on top (and ends its line).
      const data = Buffer.from(queued.data, 'base64');
      assert.ok(data.equals(messageOf(size)) || (size === 1 && data.equals(Buffer.from('From: a@sizes.test\r\nF\r\n'))), 'the queued message is the one sent');
    });
  }

  it('answers 413 one byte over the limit, and no 5xx was ever logged', async () => {
    const answer = await submit(MAX_MESSAGE_BYTES + 1);
    assert.equal(answer.status, 413, JSON.stringify(answer.body));
    assert.equal(answer.body.error, 'message_too_large');
    assert.deepEqual(postoffice.logs.filter((l) => l.event === 'internal_error' || (typeof l.status === 'number' && l.status >= 500)), []);
  });
});
