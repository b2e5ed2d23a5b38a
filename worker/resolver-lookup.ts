import type { promises as dns } from 'node:dns';
import type { LookupFunction } from 'node:net';
import { isPrivateAddress } from './private-address.ts';

/**
 * A `lookup` for node:https that resolves through the worker's configured resolver (as MX
 * hosts are), for the HTTPS requests of MTA-STS and TLS-RPT, and that refuses loopback,
 * private and link-local addresses unless they are allowed: a recipient domain must not
 * make the worker fetch from its own network (the rule MX hosts follow, mx.ts).
 */
export function resolverLookup(resolver: Pick<dns.Resolver, 'resolve4' | 'resolve6'>, options: { allowPrivateAddresses: boolean }): LookupFunction {
  return (hostname, lookupOptions, callback) => {
    const all = (lookupOptions as { all?: boolean }).all === true;
    void (async () => {
      const [v4, v6] = await Promise.allSettled([resolver.resolve4(hostname), resolver.resolve6(hostname)]);
      const found = [
        ...(v4.status === 'fulfilled' ? v4.value.map((address) => ({ address, family: 4 })) : []),
        ...(v6.status === 'fulfilled' ? v6.value.map((address) => ({ address, family: 6 })) : []),
      ];
      const allowed = options.allowPrivateAddresses ? found : found.filter((a) => !isPrivateAddress(a.address));
      if (allowed.length === 0) {
        const reason = found.length > 0 ? `refusing private address for ${hostname}` : `no address for ${hostname}`;
        callback(Object.assign(new Error(reason), { code: 'ENOTFOUND', hostname }), '', 0);
        return;
      }
      if (all) (callback as unknown as (err: null, addresses: Array<{ address: string; family: number }>) => void)(null, allowed);
      else callback(null, allowed[0]!.address, allowed[0]!.family);
    })();
  };
}
