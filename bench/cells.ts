/**
 * The cells of the real-client matrix (`--mode matrix`): which client drives the relay, in
 * which shape. Each cell runs once per relay (hedwig, Postfix, ...), one relay at a time.
 *
 *   source-new-N    smtp-source -s N: a new connection (greeting, HELO, QUIT) for every message
 *   source-kept-N   smtp-source -s N -d: N connections kept open, message after message
 *   msmtp-N         one msmtp process per message, N at a time, each started by a shell (cron's way)
 *   rate-half       the bench's load generator, open loop at half the highest rate hedwig
 *                   delivered in the cells before it (or --rate), over 50 kept connections:
 *                   the latency target of issue 13
 *   rate-R          the same at R messages/s
 */
export type CellClient = 'smtp-source' | 'msmtp' | 'load';

export interface CellSpec {
  name: string;
  client: CellClient;
  connection: 'per-message' | 'kept';
  sessions: number;
  /** Open-loop rate (load cells): a number, or 'half' of the highest rate hedwig delivered so far. */
  rate?: number | 'half';
}

export const DEFAULT_CELLS = 'source-new-10,source-new-50,source-kept-10,source-kept-50,msmtp-10,msmtp-50,rate-half';

/** Sessions of the open-loop latency cell. */
const RATE_SESSIONS = 50;

export function parseCell(name: string): CellSpec {
  const real = /^(source-new|source-kept|msmtp)-(\d+)$/.exec(name);
  if (real) {
    const sessions = Number(real[2]);
    if (sessions < 1 || sessions > 500) throw new Error(`--cells: ${name}: sessions must be 1..500`);
    const client = real[1] === 'msmtp' ? 'msmtp' : 'smtp-source';
    return { name, client, connection: real[1] === 'source-kept' ? 'kept' : 'per-message', sessions };
  }
  const rate = /^rate-(half|\d+)$/.exec(name);
  if (rate) {
    if (rate[1] !== 'half' && Number(rate[1]) < 1) throw new Error(`--cells: ${name}: the rate must be at least 1/s`);
    return { name, client: 'load', connection: 'kept', sessions: RATE_SESSIONS, rate: rate[1] === 'half' ? 'half' : Number(rate[1]) };
  }
  throw new Error(`--cells: unknown cell '${name}' (source-new-N, source-kept-N, msmtp-N, rate-half, rate-R)`);
}

/** The cells in the order given, open-loop cells last (rate-half needs the rates before it). */
export function parseCells(list: string): CellSpec[] {
  const cells = list
    .split(',')
    .map((c) => c.trim())
    .filter(Boolean)
    .map(parseCell);
  if (cells.length === 0) throw new Error('--cells: no cell given');
  return [...cells.filter((c) => c.client !== 'load'), ...cells.filter((c) => c.client === 'load')];
}

export type RelayName = 'hedwig' | 'postfix' | 'hedwig-nodkim';
export const RELAYS: readonly RelayName[] = ['hedwig', 'postfix', 'hedwig-nodkim'];

export function parseRelays(list: string): RelayName[] {
  const relays = list
    .split(',')
    .map((r) => r.trim())
    .filter(Boolean);
  for (const r of relays) if (!RELAYS.includes(r as RelayName)) throw new Error(`--relays: unknown relay '${r}' (${RELAYS.join(', ')})`);
  if (relays.length === 0) throw new Error('--relays: no relay given');
  return [...new Set(relays)] as RelayName[];
}
