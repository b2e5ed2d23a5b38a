/**
 * The upload budget (postoffice/upload.ts) bounds bodies read before their sender is
 * authenticated. An enrolled host's signed requests that wait on beanstalkd are past that
 * point: a mailman forwarding more messages at once than `maxPendingBodiesPerAddress` (its
 * forwarder grows to 16, and every SMTP session may forward inline) must get 202 for each,
 * not 503 busy, even while beanstalkd is slow to answer.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { signRequest } from '../../shared/signing.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { freePort } from '../helpers/ports.ts';
import { startTier, type TierProcess } from '../helpers/tiers.ts';

const FQDN = 'app1.uploads.test';
const KEY = '0b5e55ed'.repeat(8);
const PER_ADDRESS = 4;

describe('post office upload budget and authenticated requests', { timeout: 60_000 }, () => {
  let beanstalkd: BeanstalkdProcess;
  let postoffice: TierProcess;
  let url: string;

  before(async () => {
    beanstalkd = await startBeanstalkd();
    const port = await freePort();
    url = `http://127.0.0.1:${port}`;
    postoffice = await startTier(
      'postoffice',
      { listen: { port }, beanstalk: { servers: [beanstalkd.address] }, uploads: { maxPendingBodiesPerAddress: PER_ADDRESS }, clients: { [FQDN]: { key: KEY, senderDomains: ['uploads.test'] } } },
      { readyPort: port },
    );
  });

  after(async () => {
    beanstalkd?.freeze(false);
    await postoffice?.stop();
    await beanstalkd?.stop();
  });

  async function submit(n: number): Promise<number> {
    const body = JSON.stringify({ mailfrom: 'app@uploads.test', rcpttos: [`r${n}@example.net`], data: `Subject: upload ${n}\r\n\r\nhello\r\n` });
    const headers = signRequest(KEY, { method: 'POST', path: '/v1/messages', fqdn: FQDN, body });
    const res = await fetch(`${url}/v1/messages`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body, signal: AbortSignal.timeout(20_000) });
    await res.arrayBuffer();
    return res.status;
  }

  it(`accepts ${PER_ADDRESS * 4} signed requests at once from one address while beanstalkd is slow to answer`, async () => {
    beanstalkd.freeze(true);
    const pending = Array.from({ length: PER_ADDRESS * 4 }, (_, n) => submit(n));
    // Long enough for every body to be read and authenticated, well within the post office's beanstalkd timer.
    await new Promise((r) => setTimeout(r, 1500));
    beanstalkd.freeze(false);
    const statuses = await Promise.all(pending);
    assert.deepEqual(statuses.filter((s) => s !== 202), [], `statuses: ${statuses.join(' ')}`);
  });

  it('still refuses unauthenticated bodies over the per-address bound with 503 busy', async () => {
    // Valid headers, bodies that never arrive: they hold their slots until bodyTimeoutMs.
    const { connect } = await import('node:net');
    const port = Number(new URL(url).port);
    const sockets = Array.from({ length: PER_ADDRESS }, () => {
      const headers = signRequest(KEY, { method: 'POST', path: '/v1/messages', fqdn: FQDN, body: 'not sent' });
      const socket = connect({ host: '127.0.0.1', port });
      socket.write(['POST /v1/messages HTTP/1.1', 'Host: postoffice', 'Content-Type: application/json', 'Content-Length: 1000', ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`), '', ''].join('\r\n'));
      socket.on('error', () => undefined);
      return socket;
    });
    try {
      await new Promise((r) => setTimeout(r, 500));
      assert.equal(await submit(1000), 503, 'one more body from the same address while its slots are held');
    } finally {
      for (const s of sockets) s.destroy();
    }
    // Their slots are released with their connections.
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(await submit(1001), 202);
  });
});
