import { hostname, userInfo } from 'node:os';
import type { BeanstalkClient } from '../../shared/beanstalk.ts';
import { errorCode } from '../../shared/errors.ts';
import { decodeOutboundJob, encodeJob, JOB_TTR_SECONDS, type FailedJob } from '../../shared/job.ts';
import { tubeCounts } from '../../shared/tube-stats.ts';
import { failureNotice } from '../../worker/notices.ts';
import { EXIT, parseDuration, usageError, type Command } from '../args.ts';
import { actOnMessage } from '../queue-control.ts';
import { ACTION, ACTION_HELP, actOnAll, report, RESULT_TEXT, run, select, type Acted } from './queue-command.ts';

/**
 * `hedwig queue flush / hold / release / delete`, Postfix's postqueue -f / -s, postsuper -h /
 * -H / -d. `queue list` is queue-list.ts; the options and the run over the selected messages
 * they share, queue-command.ts; how the queue is read and acted on, cli/queue-control.ts.
 */

export const queueFlush: Command = {
  name: 'queue flush',
  summary: 'try deferred messages now (postqueue -f, -s DOMAIN)',
  help: `Usage: hedwig queue flush [--domain D] [filters] [ID...] [--dry-run] [--json]

Makes the deferred (delayed) messages selected ready now, so the workers try them at once
(kick-job per job). Held messages stay held; messages being delivered are left alone.
Without any filter every delayed job in the outbound tube is flushed, including those the
store does not know (beanstalkd is walked with peek-delayed).

${ACTION_HELP}

Exit codes: 0 done, 1 the store or a beanstalkd unreachable, 2 usage.`,
  async run(argv, io) {
    return run(this.name, argv, io, ACTION, async (ctx, values) => {
      const dryRun = values['dry-run'] === true;
      if (ctx.selection.everything) {
        const acted: Acted[] = [];
        for (const [server, client] of ctx.clients) {
          const { delayed } = await tubeCounts(client, ctx.tube);
          if (dryRun) {
            acted.push(...Array.from({ length: delayed }, (_, i) => ({ id: `${server}#${i + 1}`, result: 'done' })));
            continue;
          }
          await client.use(ctx.tube);
          // Each kick takes the head of the delayed list away, so peek-delayed walks all of them;
          // bounded by the count at the start (jobs deferred meanwhile wait for the next flush).
          for (let i = 0; i < delayed; i++) {
            const head = await client.peekDelayed();
            if (!head) break;
            try {
              await client.kickJob(head.id);
              acted.push({ id: `${server}/${head.id}`, result: 'done' });
            } catch (err) {
              if (errorCode(err) !== 'NOT_FOUND') throw err;
            }
          }
        }
        if (!values.json) io.stdout.write(`flushed ${acted.length} delayed job(s)${dryRun ? ' (dry run: nothing changed)' : ''}\n`);
        else io.stdout.write(`${JSON.stringify({ dryRun, count: acted.length }, null, 2)}\n`);
        return EXIT.ok;
      }
      const entries = (await select(ctx, 'reading')).filter((e) => e.state === 'delayed');
      const acted = dryRun
        ? entries.map((e) => ({ id: e.message.id, result: 'done' }))
        : await actOnAll(ctx, entries, 'flushing', async ({ message }) => {
            const client = ctx.clients.get(message.job!.server)!;
            try {
              await client.kickJob(message.job!.jobId);
              return 'done';
            } catch (err) {
              if (errorCode(err) === 'NOT_FOUND') return RESULT_TEXT.skipped!; // reserved or gone meanwhile
              throw err;
            }
          });
      return report(io, values.json === true, { verb: dryRun ? 'would flush' : 'flushed', dryRun, acted });
    });
  },
};

export const queueHold: Command = {
  name: 'queue hold',
  summary: 'hold messages: never tried until released (postsuper -h)',
  help: `Usage: hedwig queue hold [filters] [ID...] [--dry-run] [--wait 30s] [--json]
       hedwig queue hold --all

Holds the selected messages: each job is reserved by id and buried where it is, so no worker
takes it until queue release; the store marks it held. A message a worker is delivering right
now is held once that attempt ends (its retry job), waiting up to --wait. Without a filter or
ids the command refuses unless --all is given.

${ACTION_HELP}
  --all                every queued message

Exit codes: 0 done, 1 the store or a beanstalkd unreachable, or a message still being
delivered after --wait (run again), 2 usage.`,
  async run(argv, io) {
    return run(this.name, argv, io, { ...ACTION, all: { type: 'boolean' } } as unknown as typeof ACTION, async (ctx, values) => {
      if (ctx.selection.everything && values.all !== true) throw usageError('queue hold: give a filter, message ids, or --all');
      const dryRun = values['dry-run'] === true;
      const waitMs = parseDuration(String(values.wait), '--wait');
      const entries = (await select(ctx, 'reading')).filter((e) => e.state !== 'held');
      if (dryRun) return report(io, values.json === true, { verb: 'would hold', dryRun, acted: entries.map((e) => ({ id: e.message.id, result: 'done' })) });
      const acted = await actOnAll(ctx, entries, 'holding', async ({ message }) => {
        // Intent first: if interrupted after this, the list shows it held-but-ready and a rerun finishes it.
        await ctx.store.setHeld([message.id], true, io.now());
        const { result } = await actOnMessage(ctx.store, ctx.clients, message, async (client, ref, state) => {
          if (state === 'delivering') return 'wait';
          if (state === 'held' || state === 'buried') return 'done';
          const priority = Number((await client.statsJob(ref.jobId).catch(() => ({}) as Record<string, unknown>)).pri ?? 1024);
          const job = await client.reserveJob(ref.jobId);
          if (!job) return 'wait'; // a worker took it between the two commands
          await job.bury(priority);
          return 'done';
        }, waitMs);
        if (result === 'left' || result === 'unknown') await ctx.store.setHeld([message.id], false, io.now());
        return RESULT_TEXT[result]!;
      });
      return report(io, values.json === true, { verb: 'held', dryRun, acted });
    });
  },
};

export const queueRelease: Command = {
  name: 'queue release',
  summary: 'release held messages: tried now (postsuper -H)',
  help: `Usage: hedwig queue release [filters] [ID...] [--dry-run] [--json]

Releases the held messages selected (all held messages without a filter): each buried job is
kicked back to ready, so a worker tries it now, and the store no longer marks it held.

${ACTION_HELP}

Exit codes: 0 done, 1 the store or a beanstalkd unreachable, 2 usage.`,
  async run(argv, io) {
    return run(this.name, argv, io, ACTION, async (ctx, values) => {
      const dryRun = values['dry-run'] === true;
      ctx.selection.filter.held = true;
      const entries = await select(ctx, 'reading');
      if (dryRun) return report(io, values.json === true, { verb: 'would release', dryRun, acted: entries.map((e) => ({ id: e.message.id, result: 'done' })) });
      const acted = await actOnAll(ctx, entries, 'releasing', async ({ message }) => {
        const client = message.job ? ctx.clients.get(message.job.server) : undefined;
        if (client && message.job) {
          try {
            await client.kickJob(message.job.jobId);
          } catch (err) {
            // Not buried (a hold that never got to bury it) or gone: nothing to kick.
            if (errorCode(err) !== 'NOT_FOUND') throw err;
          }
        }
        await ctx.store.setHeld([message.id], false, io.now());
        return 'done';
      });
      return report(io, values.json === true, { verb: 'released', dryRun, acted });
    });
  },
};

function operator(): string {
  let user = 'unknown';
  try {
    user = userInfo().username;
  } catch {
    // no passwd entry (a container): keep "unknown"
  }
  return `${user}@${hostname()}`;
}

export const queueDelete: Command = {
  name: 'queue delete',
  summary: 'remove messages from the queue, silently or with a bounce (postsuper -d)',
  help: `Usage: hedwig queue delete [filters] [ID...] [--bounce] [--dry-run] [--wait 30s] [--json]
       hedwig queue delete --all [--bounce]

Removes the selected messages from the queue. With --bounce the sender first gets a failure
report (RFC 3464, like a bounce, "deleted by the mail system administrator") for the
recipients still queued. Each deletion is recorded in the store: hedwig status ID answers
"deleted", with who deleted it, for store.historySeconds. A message a worker is delivering
right now is deleted once that attempt ends (its retry job), waiting up to --wait. Without a
filter or ids the command refuses unless --all is given.

${ACTION_HELP}
  --all                every queued message
  --bounce             report the deletion to each sender (not for the null sender <>)
  --bounce-from ADDR   From: of the report; default MAILER-DAEMON@<this host>

Put before delete: the report is queued before the job is deleted, under an id derived from
the message's, so running the command again after an interruption never sends two.

Exit codes: 0 done, 1 the store or a beanstalkd unreachable, or a message still being
delivered after --wait (run again), 2 usage.`,
  async run(argv, io) {
    const options = { ...ACTION, all: { type: 'boolean' }, bounce: { type: 'boolean' }, 'bounce-from': { type: 'string' } } as const;
    return run(this.name, argv, io, options as unknown as typeof ACTION, async (ctx, values) => {
      if (ctx.selection.everything && values.all !== true) throw usageError('queue delete: give a filter, message ids, or --all');
      const dryRun = values['dry-run'] === true;
      const waitMs = parseDuration(String(values.wait), '--wait');
      const entries = (await select(ctx, 'reading')).filter((e) => e.state !== 'gone');
      if (dryRun) return report(io, values.json === true, { verb: 'would delete', dryRun, acted: entries.map((e) => ({ id: e.message.id, result: 'done' })) });
      const who = operator();
      const note = `deleted by ${who} (hedwig queue delete${values.bounce ? ' --bounce' : ''})`;
      const reportingMta = hostname();
      const from = typeof values['bounce-from'] === 'string' ? values['bounce-from'] : `MAILER-DAEMON@${reportingMta}`;
      const acted = await actOnAll(ctx, entries, 'deleting', async ({ message }) => {
        const { result } = await actOnMessage(ctx.store, ctx.clients, message, async (client, ref, state) => {
          if (state === 'delivering') return 'wait';
          if (values.bounce) await queueBounce(client, ctx.tube, ref.jobId, { from, reportingMta, note, now: io.now() });
          try {
            await client.deleteJob(ref.jobId);
          } catch (err) {
            if (errorCode(err) === 'NOT_FOUND') return 'wait'; // a worker took it between the two commands
            throw err;
          }
          return 'done';
        }, waitMs);
        if (result === 'done') await ctx.store.markDeleted(message.id, io.now(), note);
        return RESULT_TEXT[result]!;
      });
      return report(io, values.json === true, { verb: 'deleted', dryRun, acted });
    });
  },
};

/**
 * The sender's failure report for a deleted job, put before the job is deleted. Its id and
 * receivedAt derive from the message (id + ".deleted", the message's receivedAt), so a report
 * put twice (the command run again after an interruption) is delivered once: the worker lets
 * only one copy of a job make the first attempt.
 */
async function queueBounce(client: BeanstalkClient, tube: string, jobId: string, options: { from: string; reportingMta: string; note: string; now: number }): Promise<void> {
  const peeked = await client.peek(jobId);
  if (!peeked) return;
  const job = decodeOutboundJob(peeked.payload);
  const failed: FailedJob = {
    v: 1,
    job,
    failures: job.rcpttos.map((recipient) => ({
      recipient,
      outcome: 'bounced',
      enhancedCode: '5.0.0',
      response: `550 5.0.0 ${options.note}`,
      attempts: job.attempts,
      firstAttemptAt: job.firstAttemptAt ?? options.now,
      lastAttemptAt: job.lastAttemptAt ?? options.now,
    })),
    failedAt: options.now,
  };
  const notice = await failureNotice(failed, Buffer.from(job.data, 'base64'), { enabled: true, from: options.from, reportingMta: options.reportingMta }, options.now);
  if (!notice) return; // the null sender gets no report
  await client.putTo(tube, encodeJob({ ...notice, id: `${job.id}.deleted`, receivedAt: job.receivedAt }), { ttrSeconds: JOB_TTR_SECONDS });
}
