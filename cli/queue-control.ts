import type { BeanstalkAddress, BeanstalkClient } from '../shared/beanstalk.ts';
import { errorCode } from '../shared/errors.ts';
import { formatHostPort } from '../shared/host-port.ts';
import type { ActiveFilter, JobRef, MessageRecord, Store } from '../shared/store/store.ts';
import { parseDuration, parsePositiveInt, usageError } from './args.ts';
import { withClient } from './connect.ts';
import { progressBar, type Progress } from './output.ts';

/**
 * The queue as `hedwig queue list/flush/hold/release/delete` see it.
 *
 * Which messages are queued comes from the store, not from beanstalkd: beanstalkd cannot list
 * a tube, and its delayed jobs (every deferred message) can only be reached by kicking them,
 * which would change their due time, count as reserves (the worker buries a job reserved 20
 * times) and, for a sweep that holds every job while it reads them, stall deliveries for the
 * whole sweep. The store has every message the post offices queued and every attempt the
 * workers made, with the job carrying each message now, and answers the filters in SQL.
 *
 * What each job is doing at this moment comes from beanstalkd: `stats-job` on each listed job,
 * pipelined per server. Actions go to that job only: kick-job (flush, release), reserve-job +
 * bury (hold), delete (delete), each one beanstalkd command that either happens or not. A job a
 * worker holds (reserved) is never touched: the command waits for the worker to settle it and
 * follows the message to its retry job (the store names it), up to --wait. An interrupted
 * command leaves every job whole: a reservation of the command returns to ready when its
 * connection closes, and running the command again finishes what it started.
 */

export type LiveState = 'ready' | 'delayed' | 'delivering' | 'held' | 'buried' | 'gone' | 'unknown';
export const LIVE_STATES: readonly LiveState[] = ['ready', 'delayed', 'delivering', 'held', 'buried', 'gone', 'unknown'];

export interface QueuedEntry {
  message: MessageRecord;
  state: LiveState;
}

export const SELECT_OPTIONS = {
  domain: { type: 'string' },
  sender: { type: 'string' },
  recipient: { type: 'string' },
  state: { type: 'string' },
  'older-than': { type: 'string' },
  limit: { type: 'string' },
} as const;

export const SELECT_HELP = `  --domain DOMAIN      messages with a recipient still queued in this domain
  --sender ADDRESS     messages from this envelope sender
  --recipient ADDRESS  messages with this recipient still queued
  --state STATE        ${LIVE_STATES.join(', ')}
  --older-than AGE     queued longer than this (30m, 2h, 1d)
  --limit N            at most N messages (oldest first)
  ID...                these message ids (the post office's ids)`;

interface SelectValues {
  domain?: string | undefined;
  sender?: string | undefined;
  recipient?: string | undefined;
  state?: string | undefined;
  'older-than'?: string | undefined;
  limit?: string | undefined;
}

export interface Selection {
  filter: ActiveFilter;
  states?: Set<LiveState>;
  /** No filter and no id at all: the whole queue. */
  everything: boolean;
}

export function parseSelection(values: SelectValues, ids: string[], now: number): Selection {
  for (const id of ids) if (!/^[A-Za-z0-9._-]{1,200}$/.test(id)) throw usageError(`not a message id: ${JSON.stringify(id)}`);
  const states = values.state?.split(',').map((s) => s.trim()) ?? [];
  for (const state of states) if (!LIVE_STATES.includes(state as LiveState)) throw usageError(`--state: expected one of ${LIVE_STATES.join(', ')}, got ${JSON.stringify(state)}`);
  const filter: ActiveFilter = {
    ...(values.domain !== undefined ? { domain: values.domain } : {}),
    ...(values.sender !== undefined ? { sender: values.sender } : {}),
    ...(values.recipient !== undefined ? { recipient: values.recipient } : {}),
    ...(values['older-than'] !== undefined ? { receivedBefore: now - parseDuration(values['older-than'], '--older-than') } : {}),
    ...(values.limit !== undefined ? { limit: parsePositiveInt(values.limit, '--limit') } : {}),
    ...(ids.length > 0 ? { ids } : {}),
  };
  const everything = Object.keys(filter).length === 0 && states.length === 0;
  return { filter, ...(states.length > 0 ? { states: new Set(states as LiveState[]) } : {}), everything };
}

/**
 * A progress bar that appears only once the work has taken more than a second (and only on a
 * terminal): quick commands stay quiet. `startedAt`: when the work began, if before the bar
 * was made (the store's read that counted the total).
 */
export function lateProgress(stream: NodeJS.WritableStream & { isTTY?: boolean }, label: string, total: number, afterMs = 1000, startedAt = Date.now()): Progress {
  const started = startedAt;
  let bar: Progress | undefined;
  let count = 0;
  return {
    tick(n = 1) {
      count += n;
      if (!bar && Date.now() - started > afterMs) {
        bar = progressBar(stream, label, total);
        bar.tick(count);
        return;
      }
      bar?.tick(n);
    },
    done() {
      bar?.done();
    },
  };
}

/** Commands in flight per connection: enough to keep beanstalkd busy, bounded in memory. */
const PIPELINE = 500;

/** Runs `work` over `items`, at most `width` at a time. */
export async function inParallel<T>(items: readonly T[], width: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(width, items.length) }, async () => {
      while (next < items.length) await work(items[next++]!);
    }),
  );
}

function liveStateOf(beanstalkState: string, held: boolean): LiveState {
  switch (beanstalkState) {
    case 'ready':
      return 'ready';
    case 'delayed':
      return 'delayed';
    case 'reserved':
      return 'delivering';
    case 'buried':
      return held ? 'held' : 'buried';
    default:
      return 'unknown';
  }
}

export async function jobState(client: BeanstalkClient, ref: JobRef, held: boolean): Promise<LiveState> {
  try {
    return liveStateOf(String((await client.statsJob(ref.jobId)).state ?? ''), held);
  } catch (err) {
    if (errorCode(err) === 'NOT_FOUND') return 'gone';
    throw err;
  }
}

/** One connection per server named by --server, for the duration of `use`. */
export async function withServers<T>(servers: readonly BeanstalkAddress[], use: (clients: Map<string, BeanstalkClient>) => Promise<T>): Promise<T> {
  const clients = new Map<string, BeanstalkClient>();
  const open = async (i: number): Promise<T> => {
    if (i === servers.length) return use(clients);
    return withClient(servers[i]!, async (client) => {
      clients.set(formatHostPort(servers[i]!), client);
      return open(i + 1);
    });
  };
  return open(0);
}

/** The store's queued messages matching the selection, each with what its job is doing now. */
export async function selectQueued(store: Store, clients: Map<string, BeanstalkClient>, selection: Selection, progress: (total: number, startedAt: number) => Progress): Promise<QueuedEntry[]> {
  // The read of the store counts towards the second after which the bar appears (at 100,000
  // messages it takes about one on its own).
  const startedAt = Date.now();
  const messages = await store.listActive(selection.filter);
  const bar = progress(messages.length, startedAt);
  const entries: QueuedEntry[] = messages.map((message) => ({ message, state: 'unknown' }));
  await inParallel(entries, PIPELINE * Math.max(1, clients.size), async (entry) => {
    const client = entry.message.job ? clients.get(entry.message.job.server) : undefined;
    if (client && entry.message.job) entry.state = await jobState(client, entry.message.job, entry.message.held);
    else if (entry.message.held) entry.state = 'held';
    bar.tick();
  });
  bar.done();
  return selection.states ? entries.filter((e) => selection.states!.has(e.state)) : entries;
}

export type ActionResult = 'done' | 'skipped' | 'left';

/**
 * Acts on the job carrying one message, following it while a worker holds it: `step` gets
 * the job's current live state and returns whether it acted ('done'), has nothing to do
 * ('skipped'), or must wait for the worker ('wait'). While waiting, the message is looked up
 * again in the store (a deferral moves it to a retry job) until `waitMs` runs out.
 */
export async function actOnMessage(
  store: Store,
  clients: Map<string, BeanstalkClient>,
  message: MessageRecord,
  step: (client: BeanstalkClient, ref: JobRef, state: LiveState) => Promise<'done' | 'skipped' | 'wait'>,
  waitMs: number,
): Promise<{ result: ActionResult | 'busy' | 'unknown'; message: MessageRecord }> {
  const deadline = Date.now() + waitMs;
  let current = message;
  for (;;) {
    const ref = current.job;
    const client = ref ? clients.get(ref.server) : undefined;
    if (!ref || !client) return { result: 'unknown', message: current };
    const state = await jobState(client, ref, current.held);
    if (state !== 'gone') {
      const outcome = await step(client, ref, state);
      if (outcome !== 'wait') return { result: outcome, message: current };
    }
    // Gone: the worker recorded the attempt in the store before it deleted the job, so the
    // store already names the retry job (or says the message is done). Reserved: wait for it.
    if (state !== 'gone') {
      if (Date.now() >= deadline) return { result: 'busy', message: current };
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    const again = await store.getMessage(current.id);
    if (!again || (again.state !== 'queued' && again.state !== 'deferred')) return { result: 'left', message: again ?? current };
    const moved = again.job?.server !== ref.server || again.job?.jobId !== ref.jobId;
    if (state === 'gone' && !moved) {
      if (Date.now() >= deadline) return { result: 'left', message: again };
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    current = again;
  }
}
