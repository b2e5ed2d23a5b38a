import { BlockList, isIP } from 'node:net';

/**
 * Addresses a public mail relay must not connect to because DNS said so: a hostile or
 * careless MX record could otherwise point the worker at services on its own network.
 * The lists are the IANA special-purpose address registries (RFC 6890 and its updates):
 * every block that is not globally reachable, plus documentation, benchmarking and
 * deprecated blocks no mail server lives in.
 *
 * IPv6 reaches IPv4 in several ways, and each is checked for the IPv4 address inside it:
 * IPv4-mapped `::ffff:a.b.c.d` (node's BlockList checks these against the IPv4 rules),
 * the NAT64 well-known prefix `64:ff9b::a.b.c.d` (RFC 6052: a DNS64 resolver synthesises
 * it for public IPv4 hosts, so only an internal one inside is refused) and 6to4
 * `2002:aabb:ccdd::` (RFC 3056, same). Forms that have no business in an MX record are
 * refused whatever they carry: IPv4-compatible `::a.b.c.d` (deprecated, RFC 4291),
 * IPv4-translated `::ffff:0:a.b.c.d` (RFC 2765), local-use NAT64 `64:ff9b:1::/48` (RFC 8215)
 * and Teredo `2001::/32` (inside the IETF protocol block 2001::/23).
 *
 * node's BlockList does the matching; only the IPv4 address inside a NAT64 or 6to4 address
 * is taken out by hand (BlockList has no notion of embedded addresses).
 */
const NON_PUBLIC = new BlockList();

const IPV4_BLOCKS: Array<[string, number]> = [
  ['0.0.0.0', 8], // "this" network
  ['10.0.0.0', 8], // private
  ['100.64.0.0', 10], // shared address space (carrier-grade NAT)
  ['127.0.0.0', 8], // loopback
  ['169.254.0.0', 16], // link-local
  ['172.16.0.0', 12], // private
  ['192.0.0.0', 24], // IETF protocol assignments
  ['192.0.2.0', 24], // documentation (TEST-NET-1)
  ['192.88.99.0', 24], // 6to4 relay anycast (deprecated, RFC 7526)
  ['192.168.0.0', 16], // private
  ['198.18.0.0', 15], // benchmarking
  ['198.51.100.0', 24], // documentation (TEST-NET-2)
  ['203.0.113.0', 24], // documentation (TEST-NET-3)
  ['224.0.0.0', 4], // multicast
  ['240.0.0.0', 4], // reserved, and 255.255.255.255 limited broadcast
];

const IPV6_BLOCKS: Array<[string, number]> = [
  ['::', 96], // unspecified, loopback and IPv4-compatible ::a.b.c.d (deprecated)
  ['::ffff:0:0', 96], // IPv4-mapped: refused here only when the IPv4 inside is (BlockList maps it), see below
  ['::ffff:0:0:0', 96], // IPv4-translated (SIIT, RFC 2765)
  ['64:ff9b:1::', 48], // local-use IPv4/IPv6 translation (RFC 8215)
  ['100::', 64], // discard-only (RFC 6666)
  ['100:0:0:1::', 64], // dummy IPv6 prefix (RFC 9780)
  ['2001::', 23], // IETF protocol assignments: Teredo, benchmarking, ORCHID, ...
  ['2001:db8::', 32], // documentation
  ['3fff::', 20], // documentation (RFC 9637)
  ['5f00::', 16], // segment routing SIDs (RFC 9602)
  ['fc00::', 7], // unique local
  ['fe80::', 10], // link-local
  ['fec0::', 10], // site-local (deprecated, RFC 3879)
  ['ff00::', 8], // multicast
];

for (const [network, prefix] of IPV4_BLOCKS) NON_PUBLIC.addSubnet(network, prefix, 'ipv4');
// ::ffff:0:0/96 itself is left to BlockList's IPv4 mapping: a mapped public address is a public address.
for (const [network, prefix] of IPV6_BLOCKS) if (network !== '::ffff:0:0') NON_PUBLIC.addSubnet(network, prefix, 'ipv6');

/** The 16 bytes of an IPv6 address (`isIP` has accepted it). */
function ipv6Bytes(address: string): number[] {
  let text = address.split('%')[0]!;
  const dotted = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (dotted) {
    const [a, b, c, d] = dotted[1]!.split('.').map(Number) as [number, number, number, number];
    text = `${text.slice(0, dotted.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head, tail] = text.includes('::') ? (text.split('::') as [string, string]) : [text, undefined];
  const left = head ? head.split(':') : [];
  const right = tail ? tail.split(':') : [];
  const groups = tail === undefined ? left : [...left, ...Array(8 - left.length - right.length).fill('0'), ...right];
  return groups.flatMap((group) => {
    const value = parseInt(group, 16);
    return [value >> 8, value & 0xff];
  });
}

/** The IPv4 address a NAT64 (64:ff9b::/96) or 6to4 (2002::/16) address leads to, if it is one. */
function embeddedIpv4(address: string): string | undefined {
  const b = ipv6Bytes(address);
  const nat64 = b[0] === 0x00 && b[1] === 0x64 && b[2] === 0xff && b[3] === 0x9b && b.slice(4, 12).every((x) => x === 0);
  if (nat64) return b.slice(12, 16).join('.');
  if (b[0] === 0x20 && b[1] === 0x02) return b.slice(2, 6).join('.');
  return undefined;
}

export function isPrivateAddress(address: string): boolean {
  const family = isIP(address);
  // Not an IP address at all: never something to connect to.
  if (family === 0) return true;
  if (family === 4) return NON_PUBLIC.check(address, 'ipv4');
  if (NON_PUBLIC.check(address, 'ipv6')) return true;
  const inside = embeddedIpv4(address);
  return inside !== undefined && NON_PUBLIC.check(inside, 'ipv4');
}
