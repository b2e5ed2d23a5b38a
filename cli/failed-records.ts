import type { FailedJob, Failure, OutboundJob } from '../shared/job.ts';

/** How failed records look in `--json` output and how a retry splits one. */

export interface RecordView {
  server: string;
  jobId: string;
  messageId: string;
  fqdn: string;
  mailfrom: string;
  receivedAt: string;
  failedAt: string;
  /** The recipients selected by the filters (all of them without filters). */
  failures: Array<Omit<Failure, 'firstAttemptAt' | 'lastAttemptAt'> & { firstAttemptAt: string; lastAttemptAt: string }>;
  /** Recipients of this record not selected by the filters. */
  otherRecipients: number;
}

export function recordView(server: string, jobId: string, record: FailedJob, selected: Failure[]): RecordView {
  return {
    server,
    jobId,
    messageId: record.job.id,
    fqdn: record.job.fqdn,
    mailfrom: record.job.mailfrom,
    receivedAt: new Date(record.job.receivedAt).toISOString(),
    failedAt: new Date(record.failedAt).toISOString(),
    failures: selected.map((f) => ({ ...f, firstAttemptAt: new Date(f.firstAttemptAt).toISOString(), lastAttemptAt: new Date(f.lastAttemptAt).toISOString() })),
    otherRecipients: record.failures.length - selected.length,
  };
}

export interface RetrySplit {
  /** Back into the outbound queue. */
  outbound: OutboundJob;
  /** What stays in the failed tube, or null when every recipient moves. */
  remainder: FailedJob | null;
}

/**
 * A retried message starts a fresh life: attempts back to 0 and `receivedAt` set to now,
 * so the worker's retry schedule and maximum lifetime apply in full (with the original
 * `receivedAt`, an expired message would expire again at its first deferral). The
 * message id is kept, so `hedwig grep` and the logs follow it through the retry.
 */
export function splitForRetry(record: FailedJob, moving: Failure[], now: number): RetrySplit {
  const movingSet = new Set(moving.map((f) => f.recipient));
  const { firstAttemptAt: _first, lastAttemptAt: _last, ...job } = record.job;
  const outbound: OutboundJob = { ...job, rcpttos: [...movingSet], attempts: 0, receivedAt: now };
  const staying = record.failures.filter((f) => !movingSet.has(f.recipient));
  const remainder: FailedJob | null =
    staying.length > 0
      ? { ...record, job: { ...record.job, rcpttos: staying.map((f) => f.recipient) }, failures: staying }
      : null;
  return { outbound, remainder };
}

/** The header section of a raw message, unfolded, for `failed show` (never the body). */
export function headerSection(raw: Buffer, maxBytes = 16_384): string {
  const text = raw.subarray(0, maxBytes).toString('utf8');
  const end = text.search(/\r?\n\r?\n/);
  return (end >= 0 ? text.slice(0, end) : text).replace(/\r?\n[ \t]+/g, ' ').replace(/\r/g, '');
}
