import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { BeanstalkClient } from '../../shared/beanstalk.ts';
import { formatHostPort, parseHostPort } from '../../shared/host-port.ts';

describe('host:port', () => {
  it('brackets IPv6 literals, so the last colon separates the port', () => {
    assert.equal(formatHostPort({ host: '127.0.0.1', port: 11300 }), '127.0.0.1:11300');
    assert.equal(formatHostPort({ host: 'beanstalkd', port: 11300 }), 'beanstalkd:11300');
    assert.equal(formatHostPort({ host: '::1', port: 11300 }), '[::1]:11300');
  });

  it('parses what it formats', () => {
    for (const address of [{ host: '::1', port: 25 }, { host: '2001:db8::1', port: 11300 }, { host: 'mx.example.org', port: 2525 }, { host: '192.0.2.1', port: 1 }]) {
      assert.deepEqual(parseHostPort(formatHostPort(address), 0), address);
    }
    assert.deepEqual(parseHostPort('[::1]', 53), { host: '::1', port: 53 });
    assert.throws(() => parseHostPort('::1:25', 0), { code: 'BAD_HOSTPORT' });
  });

  it('is what BeanstalkClient.server says (ReservedJob.server, log fields, metric labels)', () => {
    assert.equal(new BeanstalkClient({ host: '::1', port: 11300 }).server, '[::1]:11300');
  });
});
