import type { MessageRecord } from '../../shared/store/store.ts';
import { tubeCounts } from '../../shared/tube-stats.ts';
import { EXIT, type Command } from '../args.ts';
import { formatAge, oneLine, table } from '../output.ts';
import type { QueuedEntry } from '../queue-control.ts';
import { COMMON, COMMON_HELP, run, select, type Context } from './queue-command.ts';

/** `hedwig queue list`, Postfix's mailq: the queue from the store, each job's state from beanstalkd. */

function entryJson(e: QueuedEntry, now: number) {
  const m = e.message;
  return {
    id: m.id,
    server: m.job?.server ?? null,
    jobId: m.job?.jobId ?? null,
    state: e.state,
    receivedAt: new Date(m.receivedAt).toISOString(),
    ageSeconds: Math.max(0, Math.round((now - m.receivedAt) / 1000)),
    fqdn: m.fqdn,
    sender: m.mailfrom,
    recipients: m.recipients.map((r) => r.recipient),
    attempts: m.attempts,
    lastAttemptAt: m.lastAttemptAt === null ? null : new Date(m.lastAttemptAt).toISOString(),
    nextAttemptAt: m.nextAttemptAt === null ? null : new Date(m.nextAttemptAt).toISOString(),
    lastResponse: m.lastResponse,
  };
}

function recipientsCell(m: MessageRecord): string {
  const [first] = m.recipients;
  if (!first) return '-';
  return m.recipients.length === 1 ? first.recipient : `${first.recipient} +${m.recipients.length - 1}`;
}

function listRows(entries: QueuedEntry[], now: number): string {
  return table(
    ['ID', 'AGE', 'SENDER', 'RECIPIENTS', 'STATE', 'ATTEMPTS', 'NEXT', 'LAST REPLY'],
    entries.map(({ message: m, state }) => [
      m.id,
      formatAge(now - m.receivedAt),
      m.mailfrom || '<>',
      recipientsCell(m),
      state,
      m.attempts,
      state === 'delayed' && m.nextAttemptAt !== null ? `in ${formatAge(m.nextAttemptAt - now)}` : '-',
      oneLine(m.lastResponse ?? '-', 50),
    ]),
  );
}

export const queueList: Command = {
  name: 'queue list',
  summary: 'every queued message (mailq): id, age, sender, recipients, state, attempts, next attempt, last reply',
  help: `Usage: hedwig queue list [--domain D] [--sender S] [--recipient R] [--state STATE] [--older-than AGE] [--json]

Lists the messages in the queue, oldest first, across every beanstalkd server given: id, age,
sender, recipients still to be tried (the first and how many more), state (ready: waiting
for a worker; delayed: waiting for its retry; delivering: a worker holds it now; held: by
queue hold; buried: by a worker, for an operator; gone: it left the queue since the store
last heard of it; unknown: its server was not given), attempts, next attempt, last reply.

The list comes from the store (what the post offices queued and what the workers reported),
the state of each job from beanstalkd at this moment. Jobs beanstalkd holds that the store
does not know (notices to senders, messages queued before the store existed) are counted on
stderr; queue stats counts them too.

${COMMON_HELP}
  --json               a JSON array

A progress bar is drawn on stderr when it is a terminal and the listing takes over a second.

Exit codes: 0 listed (possibly nothing), 1 the store or a beanstalkd unreachable, 2 usage.`,
  async run(argv, io) {
    return run(this.name, argv, io, COMMON, async (ctx, values) => {
      const entries = await select(ctx, 'reading');
      const now = io.now();
      if (values.json) io.stdout.write(`${JSON.stringify(entries.map((e) => entryJson(e, now)), null, 2)}\n`);
      else if (entries.length === 0) io.stdout.write('the queue holds no matching message\n');
      else io.stdout.write(`${listRows(entries, now)}\n${entries.length} message(s)\n`);
      if (ctx.selection.everything) await warnUnknownJobs(ctx, entries);
      return EXIT.ok;
    });
  },
};

async function warnUnknownJobs(ctx: Context, entries: QueuedEntry[]): Promise<void> {
  for (const [server, client] of ctx.clients) {
    const counts = await tubeCounts(client, ctx.tube);
    const inBeanstalkd = counts.ready + counts.delayed + counts.reserved + counts.buried;
    const known = entries.filter((e) => e.message.job?.server === server && e.state !== 'gone' && e.state !== 'unknown').length;
    if (inBeanstalkd > known) {
      ctx.io.stderr.write(`hedwig: ${inBeanstalkd - known} job(s) in ${ctx.tube} on ${server} are not in the store (notices to senders, messages queued before the store): see queue stats\n`);
    }
  }
}
