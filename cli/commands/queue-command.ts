import type { BeanstalkClient } from '../../shared/beanstalk.ts';
import { errorCode } from '../../shared/errors.ts';
import { TUBE } from '../../shared/job.ts';
import type { Store } from '../../shared/store/store.ts';
import { beanstalkServers, EXIT, JSON_OPTION, parseCommandArgs, SERVER_HELP, SERVER_OPTIONS, type CliIo } from '../args.ts';
import { table } from '../output.ts';
import { lateProgress, parseSelection, selectQueued, SELECT_HELP, SELECT_OPTIONS, withServers, type QueuedEntry, type Selection } from '../queue-control.ts';
import { STORE_HELP, STORE_OPTIONS, withStore } from '../store-options.ts';

/**
 * What every `hedwig queue` command that reads the store shares (list in queue-list.ts, the
 * actions in queue-control.ts): the options and their help, the store and beanstalkd servers
 * opened around the command with the selection parsed, and for the actions the bounded
 * parallel run over the selected messages and the summary it prints.
 */

const TUBE_OPTION = { 'outbound-tube': { type: 'string', default: TUBE.outbound } } as const;
export const COMMON = { ...SERVER_OPTIONS, ...STORE_OPTIONS, ...JSON_OPTION, ...SELECT_OPTIONS, ...TUBE_OPTION } as const;
export const ACTION = { ...COMMON, 'dry-run': { type: 'boolean' }, wait: { type: 'string', default: '30s' } } as const;

export const COMMON_HELP = `${SELECT_HELP}
${SERVER_HELP}
${STORE_HELP}
  --outbound-tube NAME default ${TUBE.outbound}`;

export const ACTION_HELP = `${COMMON_HELP}
  --dry-run            show what would be done, change nothing
  --wait DURATION      how long to wait for a message a worker is delivering right now (default 30s)
  --json               a JSON summary`;

export interface Context {
  io: CliIo;
  store: Store;
  clients: Map<string, BeanstalkClient>;
  selection: Selection;
  tube: string;
}

export async function run<T>(command: string, argv: string[], io: CliIo, options: typeof COMMON | typeof ACTION, body: (ctx: Context, values: Record<string, unknown>) => Promise<T>): Promise<T> {
  const { values, positionals } = parseCommandArgs(command, argv, options);
  const selection = parseSelection(values, positionals, io.now());
  const servers = beanstalkServers(values.server, io.env);
  return withStore(values, io.env, (store) => withServers(servers, (clients) => body({ io, store, clients, selection, tube: values['outbound-tube'] }, values as Record<string, unknown>)));
}

export function select(ctx: Context, label: string): Promise<QueuedEntry[]> {
  return selectQueued(ctx.store, ctx.clients, ctx.selection, (total, startedAt) => lateProgress(ctx.io.stderr, label, total, 1000, startedAt));
}

export interface Acted {
  id: string;
  result: string;
}

export function report(io: CliIo, json: boolean, summary: Record<string, unknown> & { verb: string; acted: Acted[] }): number {
  const done = summary.acted.filter((a) => a.result === 'done').length;
  const others = summary.acted.filter((a) => a.result !== 'done');
  if (json) {
    const { verb: _verb, ...rest } = summary;
    io.stdout.write(`${JSON.stringify({ ...rest, count: done, notDone: others }, null, 2)}\n`);
  } else {
    if (summary.acted.length > 0 && summary.acted.length <= 1000) io.stdout.write(`${table(['ID', 'RESULT'], summary.acted.map((a) => [a.id, a.result]))}\n`);
    const byResult = new Map<string, number>();
    for (const a of others) byResult.set(a.result, (byResult.get(a.result) ?? 0) + 1);
    io.stdout.write(`${summary.verb} ${done} message(s)${summary.dryRun ? ' (dry run: nothing changed)' : ''}${[...byResult].map(([r, n]) => `; ${n} ${r}`).join('')}\n`);
  }
  // A message a worker kept holding past --wait was not acted on: run again.
  return others.some((a) => a.result === 'busy (a worker is delivering it)' || a.result === 'failed') ? EXIT.failure : EXIT.ok;
}

export const RESULT_TEXT: Record<string, string> = {
  done: 'done',
  skipped: 'skipped',
  left: 'left the queue',
  busy: 'busy (a worker is delivering it)',
  unknown: 'unknown (its server was not given)',
};

/** Runs `step` on every selected message, a bounded number at a time, with a late progress bar. */
export async function actOnAll(ctx: Context, entries: QueuedEntry[], label: string, act: (entry: QueuedEntry) => Promise<string>): Promise<Acted[]> {
  const bar = lateProgress(ctx.io.stderr, label, entries.length);
  const acted: Acted[] = [];
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(200, entries.length) }, async () => {
      while (next < entries.length) {
        const entry = entries[next++]!;
        let result: string;
        try {
          result = await act(entry);
        } catch (err) {
          result = 'failed';
          ctx.io.stderr.write(`hedwig: ${entry.message.id}: ${errorCode(err) ?? ''} ${(err as Error).message}\n`);
        }
        acted.push({ id: entry.message.id, result });
        bar.tick();
      }
    }),
  );
  bar.done();
  return acted;
}
