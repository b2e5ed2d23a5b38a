import { isIP } from 'node:net';
import { z } from 'zod';
import { domainName } from '../shared/job.ts';

/**
 * Which local address (and with it which EHLO name) a connection leaves from. Each
 * address has its own name because receivers check that the EHLO name resolves to the
 * address and its PTR names it back.
 *
 * Selection is smooth weighted round-robin (the nginx algorithm): deterministic, and
 * with equal weights plain round-robin. A sender domain can be bound to a subset of the
 * pool (its own reputation); other domains use the addresses no domain is bound to, or
 * the whole pool when every address is bound.
 */

const ipLiteral = z.string().refine((value) => isIP(value) !== 0, { message: 'expected an IP address' });
const hostName = z.string().regex(/^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/, {
  message: 'expected a host name',
});

/** `source`: local addresses to send from, each with its EHLO name. */
export const sourceSchema = z
  .object({
    addresses: z.array(z.object({ address: ipLiteral, ehloName: hostName, weight: z.number().int().min(1).max(1000).default(1) }).strict()).default([]),
    selection: z.enum(['round-robin', 'weighted']).default('round-robin'),
    /** Sender domain -> the pool addresses its mail leaves from. */
    senderDomains: z.record(domainName, z.array(ipLiteral).min(1)).default({}),
  })
  .strict()
  .superRefine((source, ctx) => {
    const pool = new Set<string>();
    for (const [i, entry] of source.addresses.entries()) {
      if (pool.has(entry.address)) ctx.addIssue({ code: 'custom', path: ['addresses', i, 'address'], message: `${entry.address} is listed twice` });
      pool.add(entry.address);
    }
    for (const [domain, addresses] of Object.entries(source.senderDomains)) {
      for (const [i, address] of addresses.entries()) {
        if (!pool.has(address)) ctx.addIssue({ code: 'custom', path: ['senderDomains', domain, i], message: `${address} is not in source.addresses` });
      }
    }
  })
  .prefault({});

export type SourceSettings = z.infer<typeof sourceSchema>;
export type SourceAddress = SourceSettings['addresses'][number];

export interface Source {
  /** Unset: the operating system chooses (no pool configured). */
  localAddress?: string;
  ehloName: string;
}

export interface SourceSelector {
  /**
   * The source for a connection to `destination` (an IP address) for mail from
   * `senderDomain`; undefined when the pool has no address of the destination's family.
   */
  pick(senderDomain: string, destination: string): Source | undefined;
}

class WeightedRoundRobin {
  private readonly current: number[];
  constructor(private readonly members: SourceAddress[]) {
    this.current = members.map(() => 0);
  }

  next(): SourceAddress | undefined {
    if (this.members.length === 0) return undefined;
    const total = this.members.reduce((sum, m) => sum + m.weight, 0);
    let best = 0;
    for (let i = 0; i < this.members.length; i++) {
      this.current[i]! += this.members[i]!.weight;
      if (this.current[i]! > this.current[best]!) best = i;
    }
    this.current[best]! -= total;
    return this.members[best];
  }
}

function familyOf(address: string): 4 | 6 {
  return isIP(address) === 6 ? 6 : 4;
}

/** The binding of `domain` or of its closest parent domain. */
function bindingFor(bindings: Readonly<Record<string, string[]>>, domain: string): string[] | undefined {
  const labels = domain.toLowerCase().split('.');
  for (let i = 0; i < labels.length; i++) {
    const found = bindings[labels.slice(i).join('.')];
    if (found) return found;
  }
  return undefined;
}

export function createSourceSelector(settings: SourceSettings, defaultEhloName: string): SourceSelector {
  if (settings.addresses.length === 0) return { pick: () => ({ ehloName: defaultEhloName }) };
  const weighted = (members: SourceAddress[]) => members.map((m) => ({ ...m, weight: settings.selection === 'weighted' ? m.weight : 1 }));
  const bound = new Set(Object.values(settings.senderDomains).flat());
  const unbound = settings.addresses.filter((a) => !bound.has(a.address));
  const shared = unbound.length > 0 ? unbound : settings.addresses;
  /** One rotation per (member set, family), so each binding keeps its own fair share. */
  const rotations = new Map<string, WeightedRoundRobin>();

  function rotation(members: SourceAddress[], family: 4 | 6): WeightedRoundRobin {
    const key = `${family}|${members.map((m) => m.address).join(',')}`;
    let found = rotations.get(key);
    if (!found) {
      found = new WeightedRoundRobin(weighted(members.filter((m) => familyOf(m.address) === family)));
      rotations.set(key, found);
    }
    return found;
  }

  return {
    pick(senderDomain, destination) {
      const binding = bindingFor(settings.senderDomains, senderDomain);
      const members = binding ? settings.addresses.filter((a) => binding.includes(a.address)) : shared;
      const chosen = rotation(members, familyOf(destination)).next();
      return chosen ? { localAddress: chosen.address, ehloName: chosen.ehloName } : undefined;
    },
  };
}

/**
 * Binds each pool address once, so an address this host does not have stops start-up
 * with a clear message instead of failing every delivery with EADDRNOTAVAIL.
 */
export async function unusableSourceAddresses(addresses: string[]): Promise<Array<{ address: string; reason: string }>> {
  const { createServer } = await import('node:net');
  const problems: Array<{ address: string; reason: string }> = [];
  for (const address of addresses) {
    await new Promise<void>((resolve) => {
      const server = createServer();
      server.once('error', (err: NodeJS.ErrnoException) => {
        problems.push({ address, reason: err.code ?? err.message });
        resolve();
      });
      server.listen(0, address, () => server.close(() => resolve()));
    });
  }
  return problems;
}
