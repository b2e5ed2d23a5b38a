import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { BeanstalkError, type BeanstalkErrorCode, type PutOptions } from '../../shared/beanstalk.ts';
import { RoundRobinQueue, type PutClient } from '../../postoffice/queue.ts';

class FakeClient implements PutClient {
  readonly address: { host: string; port: number };
  connected = true;
  tubeUsed = 'default';
  failWith: BeanstalkErrorCode | undefined;
  commands: string[] = [];
  constructor(port: number) {
    this.address = { host: '127.0.0.1', port };
  }
  async use(tube: string): Promise<void> {
    this.commands.push(`use ${tube}`);
    this.tubeUsed = tube;
  }
  async put(_payload: Buffer, options?: PutOptions): Promise<string> {
    if (this.failWith) throw new BeanstalkError(this.failWith, `fake ${this.failWith}`);
    this.commands.push(`put ttr=${options?.ttrSeconds}`);
    return String(this.commands.length);
  }
}

const target = { tube: 'outbound', ttrSeconds: 600 };
const payload = Buffer.from('{}');

describe('RoundRobinQueue', () => {
  it('spreads puts over the servers in turn, in the configured tube with the configured TTR', async () => {
    const a = new FakeClient(1);
    const b = new FakeClient(2);
    const queue = new RoundRobinQueue([a, b], target);
    const servers = [];
    for (let i = 0; i < 4; i++) servers.push((await queue.put(payload)).server);
    assert.deepEqual(servers, ['127.0.0.1:1', '127.0.0.1:2', '127.0.0.1:1', '127.0.0.1:2']);
    assert.deepEqual(a.commands, ['use outbound', 'put ttr=600', 'put ttr=600']);
  });

  for (const code of ['DISCONNECTED', 'TIMEOUT', 'DRAINING'] as const) {
    it(`fails over to the next server on ${code}`, async () => {
      const a = new FakeClient(1);
      const b = new FakeClient(2);
      a.failWith = code;
      const queue = new RoundRobinQueue([a, b], target);
      assert.equal((await queue.put(payload)).server, '127.0.0.1:2');
    });
  }

  it('tries connected servers before disconnected ones', async () => {
    const a = new FakeClient(1);
    const b = new FakeClient(2);
    a.connected = false;
    const queue = new RoundRobinQueue([a, b], target);
    assert.equal((await queue.put(payload)).server, '127.0.0.1:2');
    assert.equal(queue.isReady(), true);
    b.connected = false;
    assert.equal(queue.isReady(), false);
  });

  it('rejects with the last error when every server fails', async () => {
    const a = new FakeClient(1);
    const b = new FakeClient(2);
    a.failWith = 'DISCONNECTED';
    b.failWith = 'TIMEOUT';
    const queue = new RoundRobinQueue([a, b], target);
    await assert.rejects(queue.put(payload), { code: 'TIMEOUT' });
  });

  it('does not fail over on errors another server would give too (JOB_TOO_BIG)', async () => {
    const a = new FakeClient(1);
    const b = new FakeClient(2);
    a.failWith = 'JOB_TOO_BIG';
    const queue = new RoundRobinQueue([a, b], target);
    await assert.rejects(queue.put(payload), { code: 'JOB_TOO_BIG' });
    assert.deepEqual(b.commands, []);
  });
});
