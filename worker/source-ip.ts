import { isIP } from 'node:net';

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

export interface SourceAddress {
  address: string;
  ehloName: string;
  weight: number;
}

export interface SourceSettings {
  addresses: SourceAddress[];
  selection: 'round-robin' | 'weighted';
  /** Sender domain (lower case) -> addresses of the pool it sends from. */
  senderDomains: Readonly<Record<string, string[]>>;
}

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
