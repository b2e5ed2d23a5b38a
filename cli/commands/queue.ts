import type { BeanstalkClient } from '../../shared/beanstalk.ts';
import { TUBE } from '../../shared/job.ts';
import { tubeCounts, type TubeCounts } from '../../shared/tube-stats.ts';
import { beanstalkServers, EXIT, JSON_OPTION, parseCommandArgs, SERVER_HELP, SERVER_OPTIONS, usageError, type Command } from '../args.ts';
import { formatHostPort } from '../../shared/host-port.ts';
import { withClient } from '../connect.ts';
import { formatAge, table } from '../output.ts';

export interface TubeReport extends TubeCounts {
  server: string;
  tube: string;
  /** Age in seconds of the oldest message among the heads beanstalkd lets us peek; null when empty. */
  oldestAgeSeconds: number | null;
}

/**
 * When a job's message entered hedwig: `receivedAt` of an outbound job or of the job inside
 * a failed record (a retry is a new beanstalkd job, so the job's own age would restart).
 */
function receivedAt(payload: Buffer): number | undefined {
  try {
    const value = JSON.parse(payload.toString('utf8')) as { receivedAt?: unknown; job?: { receivedAt?: unknown } };
    const at = typeof value.receivedAt === 'number' ? value.receivedAt : value.job?.receivedAt;
    return typeof at === 'number' ? at : undefined;
  } catch {
    return undefined;
  }
}

/**
 * beanstalkd shows only the head of each state (peek-ready: next to be reserved, which is
 * the oldest when priorities are equal; peek-delayed: the next due; peek-buried: the
 * oldest buried). The oldest age is the maximum over those heads: exact for ready and
 * buried jobs, a lower bound when an older message sits behind the delayed head.
 */
async function oldestAgeSeconds(client: BeanstalkClient, tube: string, counts: TubeCounts, now: number): Promise<number | null> {
  await client.use(tube);
  const heads = await Promise.all([
    counts.ready > 0 ? client.peekReady() : null,
    counts.delayed > 0 ? client.peekDelayed() : null,
    counts.buried > 0 ? client.peekBuried() : null,
  ]);
  let oldest: number | null = null;
  for (const head of heads) {
    if (!head) continue;
    let at = receivedAt(head.payload);
    if (at === undefined) {
      const stats = await client.statsJob(head.id).catch(() => undefined);
      if (stats && typeof stats.age === 'number') at = now - stats.age * 1000;
    }
    if (at !== undefined) oldest = Math.max(oldest ?? 0, Math.max(0, Math.round((now - at) / 1000)));
  }
  return oldest;
}

export const queueStats: Command = {
  name: 'queue stats',
  summary: 'per tube and server: ready, delayed, reserved, buried, oldest message',
  help: `Usage: hedwig queue stats [--all] [--json]

For every beanstalkd server and hedwig tube (${TUBE.outbound}, ${TUBE.failed}, and any
other tube with jobs): jobs ready, delayed, reserved and buried, and the age of the
oldest message (from when hedwig accepted it; a retried message keeps its age).

beanstalkd only lets a client peek at the head of each state, so OLDEST is the oldest of
the ready head (the oldest ready job when priorities are equal), the next delayed job and
the oldest buried job: a delayed message behind the head can be older. Reserved jobs are
not peekable and do not count towards OLDEST.

  --all                also list empty tubes
  --json               a JSON array of {server, tube, ready, delayed, reserved, buried, oldestAgeSeconds}
${SERVER_HELP}

Exit codes: 0 done, 1 a server unreachable (the others are still shown), 2 usage.`,
  async run(argv, io) {
    const { values, positionals } = parseCommandArgs(this.name, argv, { ...SERVER_OPTIONS, ...JSON_OPTION, all: { type: 'boolean' } });
    if (positionals.length > 0) throw usageError(`${this.name}: unexpected argument ${positionals[0]}`);
    const servers = beanstalkServers(values.server, io.env);
    const reports: TubeReport[] = [];
    const unreachable: string[] = [];
    for (const address of servers) {
      try {
        await withClient(address, async (client) => {
          const existing = await client.listTubes();
          const tubes = [...new Set<string>([TUBE.outbound, TUBE.failed, ...existing.filter((t) => t !== 'default')])];
          for (const tube of tubes) {
            const counts = await tubeCounts(client, tube);
            const empty = counts.ready + counts.delayed + counts.reserved + counts.buried === 0;
            if (empty && !values.all && tube !== TUBE.outbound && tube !== TUBE.failed) continue;
            reports.push({ server: formatHostPort(address), tube, ...counts, oldestAgeSeconds: empty ? null : await oldestAgeSeconds(client, tube, counts, io.now()) });
          }
        });
      } catch (err) {
        unreachable.push(formatHostPort(address));
        io.stderr.write(`hedwig: ${(err as Error).message}\n`);
      }
    }
    if (values.json) {
      io.stdout.write(`${JSON.stringify(reports, null, 2)}\n`);
    } else if (reports.length > 0) {
      io.stdout.write(
        `${table(
          ['SERVER', 'TUBE', 'READY', 'DELAYED', 'RESERVED', 'BURIED', 'OLDEST'],
          reports.map((r) => [r.server, r.tube, r.ready, r.delayed, r.reserved, r.buried, formatAge(r.oldestAgeSeconds === null ? null : r.oldestAgeSeconds * 1000)]),
        )}\n`,
      );
    }
    return unreachable.length > 0 ? EXIT.failure : EXIT.ok;
  },
};
