import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { BeanstalkClient, ReservedJob } from '../../shared/beanstalk.ts';
import { runReserveLoop } from '../../shared/reserve-loop.ts';

/** A client whose reserve answers from a script: a job, null (timed out) or an error. */
function scriptedClient(script: Array<ReservedJob | null | Error>, onEmpty: () => void) {
  const watched: string[] = [];
  const client = {
    async connect() {},
    async watchOnly(tube: string) {
      watched.push(tube);
    },
    async reserve() {
      const next = script.shift();
      if (next === undefined) {
        onEmpty();
        return null;
      }
      if (next instanceof Error) throw next;
      return next;
    },
  };
  return { client: client as unknown as BeanstalkClient, watched };
}

const job = (id: string) => ({ id, payload: Buffer.from(id), server: 'x:1' }) as ReservedJob;

describe('runReserveLoop', () => {
  it('watches the tube alone, hands over jobs in order, tells an outage once and its end once, stops when aborted', async () => {
    const stopping = new AbortController();
    const down = Object.assign(new Error('gone'), { code: 'DISCONNECTED' });
    const { client, watched } = scriptedClient([job('1'), down, down, down, null, job('2')], () => stopping.abort());
    const handled: string[] = [];
    const told: string[] = [];
    await runReserveLoop(client, {
      tube: 'hedwig-outbound',
      stopping: stopping.signal,
      handle: async (reserved) => {
        handled.push(reserved.id);
      },
      onUnavailable: (err) => told.push(`down:${(err as { code: string }).code}`),
      onRecovered: () => told.push('up'),
    });
    assert.deepEqual(watched, ['hedwig-outbound']);
    assert.deepEqual(handled, ['1', '2']);
    assert.deepEqual(told, ['down:DISCONNECTED', 'up']);
  });

  it('a handler that throws is an outage too: the loop goes on with the next job', async () => {
    const stopping = new AbortController();
    const { client } = scriptedClient([job('1'), job('2')], () => stopping.abort());
    const handled: string[] = [];
    let told = 0;
    await runReserveLoop(client, {
      tube: 't',
      stopping: stopping.signal,
      handle: async (reserved) => {
        handled.push(reserved.id);
        if (reserved.id === '1') throw new Error('bury failed');
      },
      onUnavailable: () => told++,
    });
    assert.deepEqual(handled, ['1', '2']);
    assert.equal(told, 1);
  });
});
