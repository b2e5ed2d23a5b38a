import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isPrivateAddress } from '../../worker/private-address.ts';

/** One case per form an MX record could use to send the worker somewhere internal (issue 12.9). */
describe('isPrivateAddress', () => {
  const refused: Array<[string, string]> = [
    ['127.0.0.1', 'IPv4 loopback'],
    ['10.0.0.1', 'IPv4 private'],
    ['172.16.5.4', 'IPv4 private'],
    ['192.168.1.1', 'IPv4 private'],
    ['169.254.169.254', 'IPv4 link-local (cloud metadata)'],
    ['100.64.0.1', 'shared address space'],
    ['0.0.0.0', '"this" network'],
    ['224.0.0.1', 'IPv4 multicast'],
    ['255.255.255.255', 'limited broadcast'],
    ['192.0.2.25', 'IPv4 documentation'],
    ['198.51.100.7', 'IPv4 documentation'],
    ['203.0.113.9', 'IPv4 documentation'],
    ['198.18.0.1', 'benchmarking'],
    ['192.88.99.1', '6to4 relay anycast'],
    ['::1', 'IPv6 loopback'],
    ['::', 'unspecified'],
    ['fe80::1', 'IPv6 link-local'],
    ['fd00::1', 'unique local'],
    ['fec0::1', 'site-local'],
    ['ff02::1', 'IPv6 multicast'],
    ['2001:db8::1', 'IPv6 documentation'],
    ['3fff::1', 'IPv6 documentation (RFC 9637)'],
    ['100::1', 'discard-only'],
    ['5f00::1', 'segment routing'],
    ['::ffff:127.0.0.1', 'IPv4-mapped loopback'],
    ['::ffff:7f00:1', 'IPv4-mapped loopback, hex'],
    ['::ffff:10.1.2.3', 'IPv4-mapped private'],
    ['::127.0.0.1', 'IPv4-compatible loopback'],
    ['::10.0.0.1', 'IPv4-compatible private'],
    ['::8.8.8.8', 'IPv4-compatible (deprecated) even when public'],
    ['::ffff:0:127.0.0.1', 'IPv4-translated loopback'],
    ['::ffff:0:8.8.8.8', 'IPv4-translated (SIIT) even when public'],
    ['64:ff9b::127.0.0.1', 'NAT64 well-known prefix to loopback'],
    ['64:ff9b::a00:1', 'NAT64 well-known prefix to a private address'],
    ['64:ff9b:1::8.8.8.8', 'local-use NAT64 prefix'],
    ['2002:7f00:1::1', '6to4 of loopback'],
    ['2002:c0a8:101::1', '6to4 of 192.168.1.1'],
    ['2001:0:4136:e378:8000:63bf:3fff:fdd2', 'Teredo'],
    ['2001:2::1', 'IPv6 benchmarking'],
    ['not-an-address', 'not an IP address'],
  ];
  for (const [address, why] of refused) {
    it(`${address} is refused (${why})`, () => assert.equal(isPrivateAddress(address), true));
  }

  const allowed: Array<[string, string]> = [
    ['8.8.8.8', 'public IPv4'],
    ['172.32.0.1', 'just outside 172.16.0.0/12'],
    ['2001:4860:4860::8888', 'public IPv6'],
    ['2a00:1450:4001:80b::201b', 'public IPv6'],
    ['::ffff:8.8.8.8', 'IPv4-mapped public'],
    ['64:ff9b::8.8.8.8', 'NAT64 (DNS64) of a public address'],
    ['2002:808:808::1', '6to4 of a public address'],
  ];
  for (const [address, why] of allowed) {
    it(`${address} is allowed (${why})`, () => assert.equal(isPrivateAddress(address), false));
  }
});
