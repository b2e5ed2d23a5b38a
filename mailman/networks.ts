import { BlockList, isIP } from 'node:net';
import { HedwigError } from '../shared/errors.ts';

export interface Cidr {
  address: string;
  prefix: number;
  family: 'ipv4' | 'ipv6';
}

/** `10.0.0.0/8`, `::1/128`, or a bare address (a /32 or /128). */
export function parseCidr(value: string): Cidr {
  const [address = '', prefixText, ...rest] = value.trim().split('/');
  const version = isIP(address);
  if (version === 0 || rest.length > 0) throw new HedwigError('BAD_CIDR', `not a CIDR network: ${value}`);
  const family = version === 4 ? 'ipv4' : 'ipv6';
  const max = version === 4 ? 32 : 128;
  if (prefixText === undefined) return { address, prefix: max, family };
  if (!/^\d{1,3}$/.test(prefixText) || Number(prefixText) > max) throw new HedwigError('BAD_CIDR', `bad prefix length in ${value}`);
  return { address, prefix: Number(prefixText), family };
}

export function isCidr(value: string): boolean {
  try {
    parseCidr(value);
    return true;
  } catch {
    return false;
  }
}

const IPV4_MAPPED = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i;

/**
 * Returns a predicate for "may this client address talk to us". A dual-stack listener
 * reports IPv4 peers as `::ffff:a.b.c.d`; those are unmapped first so an operator's
 * IPv4 ranges apply to them.
 */
export function createNetworkMatcher(cidrs: readonly string[]): (address: string | undefined) => boolean {
  const list = new BlockList();
  for (const text of cidrs) {
    const cidr = parseCidr(text);
    list.addSubnet(cidr.address, cidr.prefix, cidr.family);
  }
  return (address) => {
    if (!address) return false;
    const plain = IPV4_MAPPED.exec(address)?.[1] ?? address;
    const version = isIP(plain);
    if (version === 0) return false;
    return list.check(plain, version === 4 ? 'ipv4' : 'ipv6');
  };
}
