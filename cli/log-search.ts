/**
 * Finding every log line about one address across the tiers' JSON logs.
 *
 * A line is about the address when one of its address fields (recipient, mailfrom,
 * rcpttos, ...) is that address. Lines about one message are then followed through its
 * ids: the post office and the worker log `messageId`, and mailman's lines carry both its
 * own id (`spoolId`) and the post office's (`postofficeId`), which links mailman's lines to
 * the post office's and the worker's. The result is every line carrying any id connected
 * to a line that names the address.
 */

export interface LogLine {
  /** The line exactly as read. */
  text: string;
  fields: Record<string, unknown>;
  /** Milliseconds; lines without a time inherit the previous line's. */
  time: number;
  source: number;
  lineNumber: number;
}

/** Fields that name an envelope address. */
const ADDRESS_FIELDS = ['recipient', 'mailfrom', 'rcpttos', 'from', 'to', 'sender'];
/** Fields holding a message id; one line carrying two of them links the ids. */
const ID_FIELDS = ['messageId', 'spoolId', 'postofficeId'];

export function parseLogLine(text: string): Record<string, unknown> | undefined {
  if (!text.startsWith('{')) return undefined;
  try {
    const value: unknown = JSON.parse(text);
    return value && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** pino writes `time` as epoch milliseconds by default and as an ISO string with isoTime (hedwig's setting). */
export function lineTime(fields: Record<string, unknown>): number | undefined {
  const time = fields.time;
  if (typeof time === 'number' && Number.isFinite(time)) return time;
  if (typeof time === 'string') {
    const parsed = Date.parse(time);
    return Number.isNaN(parsed) ? undefined : parsed;
  }
  return undefined;
}

export function mentionsAddress(fields: Record<string, unknown>, address: string): boolean {
  const wanted = address.toLowerCase();
  for (const name of ADDRESS_FIELDS) {
    const value = fields[name];
    if (typeof value === 'string' && value.toLowerCase() === wanted) return true;
    if (Array.isArray(value) && value.some((v) => typeof v === 'string' && v.toLowerCase() === wanted)) return true;
  }
  return false;
}

export function idsOf(fields: Record<string, unknown>): string[] {
  const ids: string[] = [];
  for (const name of ID_FIELDS) {
    const value = fields[name];
    if (typeof value === 'string' && value.length > 0) ids.push(value);
  }
  return ids;
}

/**
 * Collects, over a first pass, which ids belong to the address: ids on lines naming it
 * (seeds) and links between ids that appear on one line. `matchingIds()` then closes the
 * seeds over the links.
 */
export class IdGraph {
  private readonly seeds = new Set<string>();
  private readonly links = new Map<string, Set<string>>();

  constructor(private readonly address: string) {}

  add(fields: Record<string, unknown>): void {
    const ids = idsOf(fields);
    if (mentionsAddress(fields, this.address)) for (const id of ids) this.seeds.add(id);
    if (ids.length < 2) return;
    for (const a of ids) {
      for (const b of ids) {
        if (a === b) continue;
        let set = this.links.get(a);
        if (!set) this.links.set(a, (set = new Set()));
        set.add(b);
      }
    }
  }

  matchingIds(): Set<string> {
    const found = new Set<string>();
    const queue = [...this.seeds];
    while (queue.length > 0) {
      const id = queue.pop()!;
      if (found.has(id)) continue;
      found.add(id);
      for (const next of this.links.get(id) ?? []) if (!found.has(next)) queue.push(next);
    }
    return found;
  }
}

export function lineMatches(fields: Record<string, unknown>, address: string, ids: Set<string>): boolean {
  return mentionsAddress(fields, address) || idsOf(fields).some((id) => ids.has(id));
}

/** Time order; lines with equal times keep their input order (file, then line). */
export function sortLines(lines: LogLine[]): LogLine[] {
  return lines.sort((a, b) => a.time - b.time || a.source - b.source || a.lineNumber - b.lineNumber);
}

const QUIET_FIELDS = new Set(['level', 'time', 'pid', 'hostname', 'tier', 'event', 'messageId', 'spoolId', 'msg']);

function formatValue(value: unknown): string {
  if (typeof value === 'string') return /^[^\s"=]+$/.test(value) ? value : JSON.stringify(value);
  return JSON.stringify(value);
}

/** `TIME TIER EVENT MESSAGE-ID key=value ... "msg"`: one readable line per event. */
export function formatLine(line: LogLine): string {
  const f = line.fields;
  const time = Number.isFinite(line.time) ? new Date(line.time).toISOString() : '-';
  const rest = Object.entries(f)
    .filter(([key]) => !QUIET_FIELDS.has(key))
    .map(([key, value]) => `${key}=${formatValue(value)}`);
  if (typeof f.msg === 'string') rest.push(JSON.stringify(f.msg));
  return [time, String(f.tier ?? '-').padEnd(10), String(f.event ?? '-').padEnd(10), String(f.messageId ?? f.spoolId ?? '-'), ...rest].join(' ');
}
