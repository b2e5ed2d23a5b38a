import { isValidMailbox } from '../../shared/address.ts';
import { normalizeAddress, type SuppressionEntry } from '../../shared/store/store.ts';
import { CliError, EXIT, JSON_OPTION, parseCommandArgs, parseDuration, parsePositiveInt, usageError, type CliIo, type Command } from '../args.ts';
import { isoTime, oneLine, table } from '../output.ts';
import { STORE_HELP, STORE_OPTIONS, withStore } from '../store-options.ts';

/**
 * `hedwig suppression list / add / remove / check`: the suppression list in the store
 * (shared/store/store.ts). Workers add recipients that bounced with a "no such address"
 * reply (shared/store/suppression-rules.ts); operators add and remove by hand.
 */

function entryJson(entry: SuppressionEntry) {
  return {
    address: entry.address,
    source: entry.source,
    responseCode: entry.responseCode,
    enhancedCode: entry.enhancedCode,
    response: entry.response,
    messageId: entry.messageId,
    createdAt: new Date(entry.createdAt).toISOString(),
    expiresAt: entry.expiresAt === null ? null : new Date(entry.expiresAt).toISOString(),
  };
}

function entryRows(entries: SuppressionEntry[]): string {
  return table(
    ['ADDRESS', 'SOURCE', 'SINCE', 'UNTIL', 'REASON'],
    entries.map((e) => [e.address, e.source, isoTime(e.createdAt), e.expiresAt === null ? 'removed by hand' : isoTime(e.expiresAt), oneLine(e.response ?? '-', 60)]),
  );
}

function addresses(command: string, positionals: string[]): string[] {
  if (positionals.length === 0) throw usageError(`${command}: expected one or more addresses`);
  for (const address of positionals) if (!isValidMailbox(address)) throw usageError(`${command}: not an address: ${JSON.stringify(address)}`);
  return positionals;
}

export const suppressionList: Command = {
  name: 'suppression list',
  summary: 'suppressed recipients: address, source, since, until, the reply that put them there',
  help: `Usage: hedwig suppression list [--domain example.org] [--source bounce|manual] [--limit N] [--json]

Lists the recipients the post offices leave out of submissions, oldest first: added from a
bounce (5.1.1 no such user, 5.1.2 no such domain, 5.1.10 null MX, ...; for the worker's
suppression.ttlSeconds, 30 days by default) or by hand (suppression add). Expired entries
are not shown.

  --domain DOMAIN      only addresses in this domain
  --source SOURCE      bounce or manual
  --limit N            at most N entries
  --json               a JSON array
${STORE_HELP}

Exit codes: 0 listed (possibly nothing), 1 the store unreachable, 2 usage.`,
  async run(argv: string[], io: CliIo) {
    const { values, positionals } = parseCommandArgs(this.name, argv, { ...JSON_OPTION, ...STORE_OPTIONS, domain: { type: 'string' }, source: { type: 'string' }, limit: { type: 'string' } });
    if (positionals.length > 0) throw usageError(`${this.name}: unexpected argument ${positionals[0]}`);
    if (values.source !== undefined && values.source !== 'bounce' && values.source !== 'manual') throw usageError(`--source: expected bounce or manual, got ${JSON.stringify(values.source)}`);
    const limit = values.limit !== undefined ? parsePositiveInt(values.limit, '--limit') : undefined;
    const entries = await withStore(values, io.env, (store) =>
      store.listSuppressions({ ...(values.domain ? { domain: values.domain } : {}), ...(values.source ? { source: values.source as SuppressionEntry['source'] } : {}), ...(limit ? { limit } : {}) }, io.now()),
    );
    if (values.json) io.stdout.write(`${JSON.stringify(entries.map(entryJson), null, 2)}\n`);
    else if (entries.length === 0) io.stdout.write('no suppressed recipients\n');
    else io.stdout.write(`${entryRows(entries)}\n${entries.length} suppressed\n`);
    return EXIT.ok;
  },
};

export const suppressionAdd: Command = {
  name: 'suppression add',
  summary: 'suppress addresses by hand (until removed, or for --ttl)',
  help: `Usage: hedwig suppression add ADDRESS... [--ttl 30d] [--reason TEXT] [--json]

Puts the addresses on the suppression list: the post offices leave them out of every
submission (the 202 answer names them; a message to no one else is refused with 422). An
address already listed takes the new entry.

  --ttl DURATION       expire after this long (30m, 12h, 30d, 1w); default: until removed
  --reason TEXT        kept with the entry; default "added by hand"
  --json               the entries as JSON
${STORE_HELP}

Exit codes: 0 added, 1 the store unreachable, 2 usage.`,
  async run(argv: string[], io: CliIo) {
    const { values, positionals } = parseCommandArgs(this.name, argv, { ...JSON_OPTION, ...STORE_OPTIONS, ttl: { type: 'string' }, reason: { type: 'string' } });
    const list = addresses(this.name, positionals);
    const now = io.now();
    const expiresAt = values.ttl !== undefined ? now + parseDuration(values.ttl, '--ttl') : null;
    const entries: SuppressionEntry[] = list.map((address) => ({
      address: normalizeAddress(address),
      source: 'manual',
      responseCode: null,
      enhancedCode: null,
      response: oneLine(values.reason ?? 'added by hand', 1000),
      messageId: null,
      createdAt: now,
      expiresAt,
    }));
    await withStore(values, io.env, async (store) => {
      for (const entry of entries) await store.suppress(entry);
    });
    if (values.json) io.stdout.write(`${JSON.stringify(entries.map(entryJson), null, 2)}\n`);
    else io.stdout.write(`suppressed ${entries.length} address(es)${expiresAt === null ? ' until removed' : ` until ${isoTime(expiresAt)}`}\n`);
    return EXIT.ok;
  },
};

export const suppressionRemove: Command = {
  name: 'suppression remove',
  summary: 'take addresses off the suppression list',
  help: `Usage: hedwig suppression remove ADDRESS... [--json]

Removes the addresses from the suppression list (whatever put them there); the next
submission to them is queued again.

  --json               {"removed": [...], "notFound": [...]}
${STORE_HELP}

Exit codes: 0 every address was listed and is removed, 1 the store unreachable, 2 usage,
3 none of them was listed (the others are removed).`,
  async run(argv: string[], io: CliIo) {
    const { values, positionals } = parseCommandArgs(this.name, argv, { ...JSON_OPTION, ...STORE_OPTIONS });
    const list = addresses(this.name, positionals);
    const removed: string[] = [];
    const notFound: string[] = [];
    await withStore(values, io.env, async (store) => {
      for (const address of list) ((await store.unsuppress(address)) ? removed : notFound).push(normalizeAddress(address));
    });
    if (values.json) io.stdout.write(`${JSON.stringify({ removed, notFound }, null, 2)}\n`);
    else io.stdout.write(`removed ${removed.length} address(es)${notFound.length > 0 ? `; not listed: ${notFound.join(', ')}` : ''}\n`);
    if (removed.length === 0) throw new CliError('NOT_FOUND', 'none of the addresses was suppressed', EXIT.notFound);
    return EXIT.ok;
  },
};

export const suppressionCheck: Command = {
  name: 'suppression check',
  summary: 'whether addresses are suppressed, and why',
  help: `Usage: hedwig suppression check ADDRESS... [--json]

Says for each address whether the post offices would leave it out of a submission now, and
why (the reply that put it on the list, or "added by hand") and until when. Hosts and sender
domains exempt in the post office config (suppression.exemptHosts, exemptSenderDomains) are
not checked at all.

  --json               a JSON array of {address, suppressed, entry}
${STORE_HELP}

Exit codes: 0 at least one address is suppressed, 1 the store unreachable, 2 usage, 3 none is.`,
  async run(argv: string[], io: CliIo) {
    const { values, positionals } = parseCommandArgs(this.name, argv, { ...JSON_OPTION, ...STORE_OPTIONS });
    const list = addresses(this.name, positionals);
    const found = await withStore(values, io.env, (store) => store.suppressed(list, io.now()));
    const byAddress = new Map(found.map((e) => [e.address, e]));
    const results = list.map((address) => ({ address, entry: byAddress.get(normalizeAddress(address)) }));
    if (values.json) {
      io.stdout.write(`${JSON.stringify(results.map((r) => ({ address: r.address, suppressed: r.entry !== undefined, entry: r.entry ? entryJson(r.entry) : null })), null, 2)}\n`);
    } else {
      for (const r of results) {
        io.stdout.write(
          r.entry
            ? `${r.address}: suppressed (${r.entry.source}${r.entry.expiresAt === null ? ', until removed' : `, until ${isoTime(r.entry.expiresAt)}`}): ${oneLine(r.entry.response ?? '-', 200)}\n`
            : `${r.address}: not suppressed\n`,
        );
      }
    }
    if (found.length === 0) throw new CliError('NOT_FOUND', 'no address is suppressed', EXIT.notFound);
    return EXIT.ok;
  },
};
