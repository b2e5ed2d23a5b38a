import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { PassThrough } from 'node:stream';
import { describe, it } from 'node:test';
import { readBody, UploadBudget } from '../../postoffice/upload.ts';

const limits = { bodyTimeoutMs: 1000, maxPendingBodies: 3, maxPendingBodiesPerAddress: 2, maxPendingBodyBytes: 1000 };

describe('request bodies before authentication (postoffice/upload.ts, issue 12.6)', () => {
  it('admits at most maxPendingBodies, maxPendingBodiesPerAddress per address (IPv6 per /64), and what the budget can still hold', () => {
    const budget = new UploadBudget(limits);
    const a = budget.admit('192.0.2.1')!;
    assert.ok(budget.admit('192.0.2.1'));
    assert.equal(budget.admit('192.0.2.1'), undefined, 'per address');
    assert.ok(budget.admit('2001:db8::1'));
    assert.equal(budget.admit('192.0.2.9'), undefined, 'overall');
    a.release();
    a.release(); // twice is once
    assert.equal(budget.pendingBodies, 2);
    const b = new UploadBudget(limits);
    assert.ok(b.admit('2001:db8::1')!.take(600));
    assert.ok(b.admit('2001:db8::2'));
    assert.equal(b.admit('2001:db8:0:0:ffff::3'), undefined, 'the same /64');
    const c = new UploadBudget(limits);
    assert.ok(c.admit('192.0.2.4')!.take(600));
    assert.equal(c.admit('192.0.2.5', 500), undefined, 'announces more than is left');
    assert.ok(c.admit('192.0.2.5', 400));
  });

  it('counts bytes held against maxPendingBodyBytes until released', () => {
    const budget = new UploadBudget(limits);
    const one = budget.admit('192.0.2.1')!;
    const two = budget.admit('192.0.2.2')!;
    assert.ok(one.take(700));
    assert.equal(two.take(400), false);
    assert.equal(budget.pendingBytes, 700);
    one.release();
    assert.equal(budget.pendingBytes, 0);
    assert.ok(two.take(400));
  });

  it('reads a body with its SHA-256, and stops at the size limit, the budget and the deadline', async () => {
    const read = (chunks: string[], options: { limit?: number; deadlineInMs?: number; budget?: number; end?: boolean } = {}) => {
      const payload = new PassThrough();
      const slot = new UploadBudget({ ...limits, maxPendingBodyBytes: options.budget ?? 1000 }).admit('192.0.2.1')!;
      const result = readBody(payload, { slot, limit: options.limit ?? 100, deadlineMs: Date.now() + (options.deadlineInMs ?? 1000), timeoutMs: options.deadlineInMs ?? 1000 });
      for (const chunk of chunks) payload.write(chunk);
      if (options.end !== false) payload.end();
      return result;
    };
    const ok = await read(['{"a":', '1}']);
    assert.ok(ok.ok && ok.body.toString() === '{"a":1}' && ok.sha256 === createHash('sha256').update('{"a":1}').digest('hex'));
    const big = await read(['x'.repeat(60), 'x'.repeat(60)]);
    assert.ok(!big.ok && big.rejection.status === 413);
    const busy = await read(['x'.repeat(60), 'x'.repeat(30)], { budget: 80 });
    assert.ok(!busy.ok && busy.rejection.status === 503 && busy.rejection.code === 'busy' && busy.rejection.retryAfterSeconds === 5);
    const slow = await read(['x'], { deadlineInMs: 50, end: false });
    assert.ok(!slow.ok && slow.rejection.status === 408 && slow.rejection.code === 'body_timeout');
  });
});
