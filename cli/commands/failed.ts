/**
 * `hedwig failed list|show|retry|report`. One file of ~380 lines on purpose: the four
 * commands share the scan of every server, the filters, the table rows and the help texts
 * above them, and each command is a short block below its own heading.
 */
import { domainOf } from '../../shared/address.ts';
import type { BeanstalkAddress, BeanstalkClient } from '../../shared/beanstalk.ts';
import { decodeFailedJob, encodeJob, JOB_TTR_SECONDS, TUBE, type FailedJob, type Failure } from '../../shared/job.ts';
import {
  beanstalkServers,
  CliError,
  EXIT,
  JSON_OPTION,
  parseCommandArgs,
  parsePositiveInt,
  SERVER_HELP,
  SERVER_OPTIONS,
  usageError,
  type CliIo,
  type Command,
} from '../args.ts';
import { formatHostPort } from '../../shared/host-port.ts';
import { withClient } from '../connect.ts';
import { FILTER_HELP, FILTER_OPTIONS, matchingFailures, parseFilter, reasonClass, type FailureFilter } from '../failed-filter.ts';
import { headerSection, recordView, splitForRetry, type RecordView } from '../failed-records.ts';
import { FailedScan, type ScannedRecord, type VisitResult } from '../failed-scan.ts';
import { isoTime, oneLine, progressBar, table, type Progress } from '../output.ts';

const TUBE_OPTIONS = {
  'failed-tube': { type: 'string', default: TUBE.failed },
  'outbound-tube': { type: 'string', default: TUBE.outbound },
} as const;

const TUBE_HELP = `  --failed-tube NAME   default ${TUBE.failed}
  --outbound-tube NAME default ${TUBE.outbound}`;

const SCAN_NOTE = `Reading the failed tube: beanstalkd cannot list a tube, so each record is reserved, read
and held until the end, then released with its own priority; the tube keeps its order and
nothing is buried or kicked. While a command runs, the records it holds show as reserved.`;

interface ServerScan {
  address: BeanstalkAddress;
  client: BeanstalkClient;
  scan: FailedScan;
}

/** Runs `visit` over every failed record of every server, one server after the other. */
async function scanAll(
  servers: BeanstalkAddress[],
  tube: string,
  visit: (entry: ScannedRecord, server: ServerScan) => Promise<VisitResult>,
  options: { io: CliIo; progressLabel?: string },
): Promise<{ complete: boolean; undecodable: string[] }> {
  let complete = true;
  const undecodable: string[] = [];
  let stop = false;
  for (const address of servers) {
    if (stop) break;
    await withClient(address, async (client) => {
      let progress: Progress | undefined;
      if (options.progressLabel) {
        const ready = Number((await client.statsTube(tube).catch(() => ({}) as Record<string, unknown>))['current-jobs-ready'] ?? 0);
        progress = progressBar(options.io.stderr, `${options.progressLabel} ${formatHostPort(address)}`, ready);
      }
      const scan = new FailedScan(client);
      const server: ServerScan = { address, client, scan };
      try {
        const result = await scan.run({
          tube,
          onReserved: () => progress?.tick(),
          visit: async (entry) => {
            const verdict = await visit(entry, server);
            if (verdict.stop) stop = true;
            return verdict;
          },
        });
        complete &&= result.complete;
        undecodable.push(...result.undecodable.map((id) => `${formatHostPort(address)}/${id}`));
      } catch (err) {
        throw new CliError('SCAN_FAILED', `reading ${tube} on ${formatHostPort(address)} failed: ${(err as Error).message}`, EXIT.failure, { cause: err });
      } finally {
        progress?.done();
      }
    });
  }
  return { complete, undecodable };
}

function displayId(servers: BeanstalkAddress[], server: string, jobId: string): string {
  return servers.length > 1 ? `${server}/${jobId}` : jobId;
}

function warnings(io: CliIo, result: { complete: boolean; undecodable: string[] }): void {
  if (!result.complete) io.stderr.write('hedwig: the scan stopped early (a held record was about to reach its time-to-run); run it again\n');
  if (result.undecodable.length > 0) io.stderr.write(`hedwig: ${result.undecodable.length} job(s) in the failed tube are not failed-message records, left as they are: ${result.undecodable.slice(0, 10).join(', ')}\n`);
}

function failureRows(servers: BeanstalkAddress[], views: RecordView[]): Array<Array<string | number>> {
  return views.flatMap((v) =>
    v.failures.map((f) => [
      displayId(servers, v.server, v.jobId),
      v.failedAt.replace(/\.\d{3}Z$/, 'Z'),
      v.messageId,
      f.recipient,
      f.outcome,
      f.responseCode !== undefined ? String(f.responseCode) : '-',
      f.enhancedCode ?? '-',
      oneLine(f.response, 60),
    ]),
  );
}

const FAILURE_HEADERS = ['ID', 'FAILED', 'MESSAGE', 'RECIPIENT', 'OUTCOME', 'CODE', 'ENHANCED', 'RESPONSE'];

const FAILED_OPTIONS = { ...SERVER_OPTIONS, ...JSON_OPTION, ...FILTER_OPTIONS, ...TUBE_OPTIONS, limit: { type: 'string' } } as const;

// --- failed list ------------------------------------------------------------------------

export const failedList: Command = {
  name: 'failed list',
  summary: 'list failed messages (per recipient), with filters',
  help: `Usage: hedwig failed list [--code 550] [--enhanced 5.1.1] [--domain example.com] [--since 2h] [--limit N] [--json]

Lists the records in the failed tube, one line per failed recipient, oldest first.

${FILTER_HELP}
  --limit N            at most N records
  --json               a JSON array of records
${SERVER_HELP}
${TUBE_HELP}

${SCAN_NOTE}

Exit codes: 0 listed (possibly nothing), 1 beanstalkd unreachable, 2 usage.`,
  async run(argv, io) {
    const { values, positionals } = parseCommandArgs(this.name, argv, FAILED_OPTIONS);
    if (positionals.length > 0) throw usageError(`${this.name}: unexpected argument ${positionals[0]}`);
    const servers = beanstalkServers(values.server, io.env);
    const filter = parseFilter(values, io.now());
    const limit = values.limit !== undefined ? parsePositiveInt(values.limit, '--limit') : Infinity;
    const views: RecordView[] = [];
    const result = await scanAll(servers, values['failed-tube'], async ({ server, jobId, record }) => {
      const selected = matchingFailures(record, filter);
      if (selected.length === 0) return {};
      views.push(recordView(server, jobId, record, selected));
      return { stop: views.length >= limit };
    }, { io });
    if (values.json) io.stdout.write(`${JSON.stringify(views, null, 2)}\n`);
    else if (views.length === 0) io.stdout.write('no failed messages match\n');
    else io.stdout.write(`${table(FAILURE_HEADERS, failureRows(servers, views))}\n`);
    warnings(io, result);
    return result.complete ? EXIT.ok : EXIT.failure;
  },
};

// --- failed show ------------------------------------------------------------------------

function parseJobRef(ref: string, servers: BeanstalkAddress[]): { jobId: string; servers: BeanstalkAddress[] } {
  const slash = ref.lastIndexOf('/');
  const jobId = slash >= 0 ? ref.slice(slash + 1) : ref;
  if (!/^\d{1,20}$/.test(jobId)) throw usageError(`failed show: expected a job id like 42 or 127.0.0.1:11300/42, got ${JSON.stringify(ref)}`);
  if (slash < 0) return { jobId, servers };
  const named = servers.filter((s) => formatHostPort(s) === ref.slice(0, slash));
  return { jobId, servers: named.length > 0 ? named : beanstalkServers([ref.slice(0, slash)], {}) };
}

export const failedShow: Command = {
  name: 'failed show',
  summary: 'show one failed message: envelope, headers, every recipient failure',
  help: `Usage: hedwig failed show ID [--json]

Shows one record of the failed tube: the envelope, the message headers (never the body),
and each failed recipient with its last reply. ID is the job id printed by \`failed list\`
(with several servers: HOST:PORT/ID). Nothing is changed (peek).

  --json               the record as JSON (the message itself as base64 in job.data)
${SERVER_HELP}

Exit codes: 0 shown, 1 beanstalkd unreachable, 2 usage, 3 no such record.`,
  async run(argv, io) {
    const { values, positionals } = parseCommandArgs(this.name, argv, { ...SERVER_OPTIONS, ...JSON_OPTION });
    if (positionals.length !== 1) throw usageError(`${this.name}: expected one job id`);
    const ref = parseJobRef(positionals[0]!, beanstalkServers(values.server, io.env));
    const found: Array<{ server: string; record: FailedJob; tube: string; state: string }> = [];
    for (const address of ref.servers) {
      await withClient(address, async (client) => {
        const job = await client.peek(ref.jobId);
        if (!job) return;
        let record: FailedJob;
        try {
          record = decodeFailedJob(job.payload);
        } catch {
          return;
        }
        const stats = await client.statsJob(ref.jobId).catch(() => ({}) as Record<string, unknown>);
        found.push({ server: formatHostPort(address), record, tube: String(stats.tube ?? '?'), state: String(stats.state ?? '?') });
      });
    }
    if (found.length === 0) throw new CliError('NOT_FOUND', `no failed-message record with id ${positionals[0]}`, EXIT.notFound);
    if (found.length > 1) throw usageError(`job ${ref.jobId} exists on several servers (${found.map((f) => f.server).join(', ')}): give it as HOST:PORT/${ref.jobId}`);
    const { server, record, tube, state } = found[0]!;
    if (values.json) {
      io.stdout.write(`${JSON.stringify({ server, jobId: ref.jobId, tube, state, ...record }, null, 2)}\n`);
      return EXIT.ok;
    }
    const raw = Buffer.from(record.job.data, 'base64');
    const lines = [
      `record     ${server}/${ref.jobId} (tube ${tube}, ${state})`,
      `message    ${record.job.id}`,
      `host       ${record.job.fqdn}`,
      `from       ${record.job.mailfrom || '<>'}`,
      `received   ${isoTime(record.job.receivedAt)}`,
      `failed     ${isoTime(record.failedAt)}`,
      `size       ${raw.length} bytes`,
      '',
      'headers:',
      ...headerSection(raw).split('\n').map((line) => `  ${oneLine(line, 200)}`),
      '',
      'failed recipients:',
      ...record.failures.flatMap((f: Failure) => [
        `  ${f.recipient}  ${f.outcome}  ${f.responseCode ?? '-'} ${f.enhancedCode ?? '-'}  attempts ${f.attempts}  last ${isoTime(f.lastAttemptAt)}${f.mx ? `  mx ${f.mx}` : ''}`,
        `    ${oneLine(f.response, 300)}`,
      ]),
    ];
    io.stdout.write(`${lines.join('\n')}\n`);
    return EXIT.ok;
  },
};

// --- failed retry -----------------------------------------------------------------------

interface Moved {
  server: string;
  jobId: string;
  messageId: string;
  recipients: string[];
  /** The new outbound job (absent on --dry-run). */
  outboundJobId?: string;
  /** The record keeping the recipients that did not match (when the record was split). */
  remainderJobId?: string;
}

export const failedRetry: Command = {
  name: 'failed retry',
  summary: 'move matching failed messages back to the outbound queue',
  help: `Usage: hedwig failed retry [--code 550] [--enhanced 5.1.1] [--domain example.com] [--since 2h] [--limit N] [--dry-run] [--json]

Moves the failed recipients selected by the filters back to the outbound queue and
leaves every other record as it was. Without filters, every failed message is retried.

For each matching record: a new outbound job is put with the matching recipients only,
attempts reset to 0 and a fresh lifetime (its message id is kept, so logs and
\`hedwig grep\` follow it); when some recipients of the record do not match, a record
with just those is put back into the failed tube (it gets a new id, at the end); then
the old record is deleted. Put before delete: a crash in between can send a recipient
twice, never lose one.

${FILTER_HELP}
  --limit N            move at most N records
  --dry-run            show what would move, change nothing
  --json               a JSON summary
${SERVER_HELP}
${TUBE_HELP}

A progress bar is drawn on stderr when it is a terminal; a count is printed at the end.

Exit codes: 0 done, 1 beanstalkd unreachable or a move failed (the rest is untouched), 2 usage.`,
  async run(argv, io) {
    const { values, positionals } = parseCommandArgs(this.name, argv, { ...FAILED_OPTIONS, 'dry-run': { type: 'boolean' } });
    if (positionals.length > 0) throw usageError(`${this.name}: unexpected argument ${positionals[0]}`);
    const servers = beanstalkServers(values.server, io.env);
    const filter: FailureFilter = parseFilter(values, io.now());
    const limit = values.limit !== undefined ? parsePositiveInt(values.limit, '--limit') : Infinity;
    const dryRun = values['dry-run'] === true;
    const failedTube = values['failed-tube'];
    const outboundTube = values['outbound-tube'];
    const moved: Moved[] = [];

    const result = await scanAll(
      servers,
      failedTube,
      async ({ server, jobId, priority, record, reserved }, { client, scan }) => {
        const selected = matchingFailures(record, filter);
        if (selected.length === 0) return {};
        const entry: Moved = { server, jobId, messageId: record.job.id, recipients: selected.map((f) => f.recipient) };
        if (dryRun) {
          moved.push(entry);
          return { stop: moved.length >= limit };
        }
        const split = splitForRetry(record, selected, io.now());
        entry.outboundJobId = await client.putTo(outboundTube, encodeJob(split.outbound), { ttrSeconds: JOB_TTR_SECONDS });
        if (split.remainder) {
          entry.remainderJobId = await client.putTo(failedTube, encodeJob(split.remainder), { priority, ttrSeconds: JOB_TTR_SECONDS });
          scan.ownPuts.add(entry.remainderJobId);
        }
        await reserved.delete();
        moved.push(entry);
        return { removed: true, stop: moved.length >= limit };
      },
      { io, progressLabel: dryRun ? 'checking' : 'retrying' },
    ).catch((err: unknown) => {
      if (moved.length > 0 && err instanceof CliError) {
        err.message += ` (after moving ${moved.length} record(s))`;
      }
      throw err;
    });

    const recipients = moved.reduce((n, m) => n + m.recipients.length, 0);
    const verb = dryRun ? 'would move' : 'moved';
    if (values.json) {
      io.stdout.write(`${JSON.stringify({ dryRun, records: moved.length, recipients, moved }, null, 2)}\n`);
    } else {
      if (moved.length > 0) {
        io.stdout.write(
          `${table(
            ['ID', 'MESSAGE', 'RECIPIENTS', 'OUTBOUND JOB', 'REMAINDER'],
            moved.map((m) => [displayId(servers, m.server, m.jobId), m.messageId, m.recipients.join(','), m.outboundJobId ?? '-', m.remainderJobId ?? '-']),
          )}\n`,
        );
      }
      io.stdout.write(`${verb} ${recipients} recipient(s) in ${moved.length} record(s) to ${outboundTube}${dryRun ? ' (dry run: nothing changed)' : ''}\n`);
    }
    warnings(io, result);
    return result.complete ? EXIT.ok : EXIT.failure;
  },
};

// --- failed report ----------------------------------------------------------------------

function countBy<T>(items: T[], key: (item: T) => string): Array<[string, number]> {
  const counts = new Map<string, number>();
  for (const item of items) counts.set(key(item), (counts.get(key(item)) ?? 0) + 1);
  return [...counts].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
}

export const failedReport: Command = {
  name: 'failed report',
  summary: 'failures grouped by reason class, reply code and recipient domain',
  help: `Usage: hedwig failed report [--code 550] [--enhanced 5.1.1] [--domain example.com] [--since 2h] [--json]

Counts the failed recipients, grouped three ways: by reason class (the subject of the
enhanced status code, RFC 3463: x.1.x addressing, x.7.x security or policy, ...; expired
recipients on their own), by reply code and by recipient domain.

${FILTER_HELP}
  --json               {records, recipients, byClass, byCode, byDomain}
${SERVER_HELP}
${TUBE_HELP}

Exit codes: 0 done, 1 beanstalkd unreachable, 2 usage.`,
  async run(argv, io) {
    const { values, positionals } = parseCommandArgs(this.name, argv, FAILED_OPTIONS);
    if (positionals.length > 0) throw usageError(`${this.name}: unexpected argument ${positionals[0]}`);
    if (values.limit !== undefined) throw usageError(`${this.name}: --limit is not supported here`);
    const servers = beanstalkServers(values.server, io.env);
    const filter = parseFilter(values, io.now());
    const failures: Failure[] = [];
    let records = 0;
    const result = await scanAll(servers, values['failed-tube'], async ({ record }) => {
      const selected = matchingFailures(record, filter);
      if (selected.length > 0) records++;
      failures.push(...selected);
      return {};
    }, { io });
    const byClass = countBy(failures, reasonClass);
    const byCode = countBy(failures, (f) => (f.responseCode !== undefined ? String(f.responseCode) : 'none'));
    const byDomain = countBy(failures, (f) => domainOf(f.recipient));
    if (values.json) {
      const asObject = (pairs: Array<[string, number]>) => Object.fromEntries(pairs);
      io.stdout.write(`${JSON.stringify({ records, recipients: failures.length, byClass: asObject(byClass), byCode: asObject(byCode), byDomain: asObject(byDomain) }, null, 2)}\n`);
    } else {
      io.stdout.write(
        [
          `${failures.length} failed recipient(s) in ${records} record(s)`,
          '',
          table(['REASON CLASS', 'RECIPIENTS'], byClass),
          '',
          table(['REPLY CODE', 'RECIPIENTS'], byCode),
          '',
          table(['DOMAIN', 'RECIPIENTS'], byDomain),
          '',
        ].join('\n'),
      );
    }
    warnings(io, result);
    return result.complete ? EXIT.ok : EXIT.failure;
  },
};
