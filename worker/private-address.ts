import { BlockList, isIPv6 } from 'node:net';

/**
 * Addresses a public mail relay must not connect to because DNS said so: a hostile or
 * careless MX record could otherwise point the worker at services on its own network
 * (RFC 6890 special-purpose ranges; IPv4-mapped IPv6 addresses are checked as IPv4).
 */
const NON_PUBLIC = new BlockList();
for (const [network, prefix] of [
  ['0.0.0.0', 8], // "this" network
  ['10.0.0.0', 8],
  ['100.64.0.0', 10], // carrier-grade NAT
  ['127.0.0.0', 8],
  ['169.254.0.0', 16], // link-local
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15], // benchmarking
  ['224.0.0.0', 4], // multicast
  ['240.0.0.0', 4], // reserved, broadcast
] as const) {
  NON_PUBLIC.addSubnet(network, prefix, 'ipv4');
}
for (const [network, prefix] of [
  ['::', 128], // unspecified
  ['::1', 128],
  ['fc00::', 7], // unique local
  ['fe80::', 10], // link-local
  ['ff00::', 8], // multicast
] as const) {
  NON_PUBLIC.addSubnet(network, prefix, 'ipv6');
}

export function isPrivateAddress(address: string): boolean {
  return NON_PUBLIC.check(address, isIPv6(address) ? 'ipv6' : 'ipv4');
}
