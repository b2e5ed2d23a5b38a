import { z } from 'zod';
import type { FailedJob, Failure, OutboundJob } from '../shared/job.ts';
import type { RecipientResult } from './classify.ts';

/**
 * What to do with a job once every recipient has a verdict from this attempt: which
 * recipients are done, which go to the failed tube (bounced now, or expired after the
 * maximum lifetime) and which go back to the queue in a new job, after how long.
 *
 * The invariant the rest of the worker relies on: every recipient of the job ends up in
 * exactly one of delivered, bounced, expired or the retry job. A recipient the deliverer
 * forgot to report is retried, never dropped.
 */

/** `retry`: the schedule of a deferred recipient. */
export const retrySchema = z
  .object({
    /**
     * Delay before attempt n+1 after attempt n failed temporarily; the last value repeats.
     * RFC 5321 §4.5.4.1: a first retry within minutes, then 30 minutes or more apart.
     */
    delaysSeconds: z.array(z.number().int().positive()).min(1).default([300, 1800, 3600, 7200, 14400]),
    /** RFC 5321 §4.5.4.1: give up after 4-5 days. */
    maxLifetimeSeconds: z.number().int().positive().default(432_000),
  })
  .strict()
  .prefault({});

/** Delay after the n-th failed attempt is delaysSeconds[n-1]; the last value repeats. */
export type RetryPolicy = z.infer<typeof retrySchema>;

export interface Settlement {
  delivered: RecipientResult[];
  bounced: RecipientResult[];
  expired: RecipientResult[];
  /** Into the failed tube (before the old job is deleted); null when nothing failed. */
  failedJob: FailedJob | null;
  /** Back into the outbound tube; null when nobody is left to try. */
  retry: { job: OutboundJob; delaySeconds: number; greylisted: boolean; recipients: RecipientResult[] } | null;
  /** The retried recipients when the sender is due its (single) delay warning; null otherwise. */
  delayWarning: RecipientResult[] | null;
  /** When the message expires: the end of its maximum lifetime (ms). */
  retryUntil: number;
}

export interface SettleOptions {
  policy: RetryPolicy;
  attemptStartedAt: number;
  now: number;
  /** Warn the sender once when a message is still queued this long after it arrived; 0 or absent: never. */
  delayWarningSeconds?: number;
}

export function retryDelaySeconds(policy: RetryPolicy, previousAttempts: number, greylisted: boolean): number {
  // A greylisting server accepts the retry after a few minutes: do not wait the long schedule.
  if (greylisted) return policy.delaysSeconds[0]!;
  return policy.delaysSeconds[Math.min(previousAttempts, policy.delaysSeconds.length - 1)]!;
}

/** One verdict per distinct recipient of the job, in the job's order; missing verdicts become deferrals. */
function verdictPerRecipient(job: OutboundJob, results: RecipientResult[]): RecipientResult[] {
  const byRecipient = new Map<string, RecipientResult>();
  for (const result of results) if (!byRecipient.has(result.recipient)) byRecipient.set(result.recipient, result);
  const recipients = [...new Set(job.rcpttos)];
  return recipients.map(
    (recipient) => byRecipient.get(recipient) ?? { recipient, outcome: 'deferred', greylisted: false, response: 'no verdict for this recipient in this attempt' },
  );
}

function delayWarningDue(job: OutboundJob, now: number, delayWarningSeconds: number | undefined): boolean {
  if (!delayWarningSeconds) return false;
  // A warning given before the current receivedAt belongs to an earlier life (the message was requeued).
  const alreadyWarned = job.delayWarnedAt !== undefined && job.delayWarnedAt >= job.receivedAt;
  return !alreadyWarned && now - job.receivedAt >= delayWarningSeconds * 1000;
}

export function settle(job: OutboundJob, results: RecipientResult[], options: SettleOptions): Settlement {
  const { policy, attemptStartedAt, now } = options;
  const attempts = job.attempts + 1;
  const firstAttemptAt = job.firstAttemptAt ?? attemptStartedAt;
  const deadline = job.receivedAt + policy.maxLifetimeSeconds * 1000;

  const verdicts = verdictPerRecipient(job, results);
  const delivered = verdicts.filter((r) => r.outcome === 'delivered');
  const bounced = verdicts.filter((r) => r.outcome === 'bounced');
  const deferred = verdicts.filter((r) => r.outcome === 'deferred');
  const expired = now >= deadline ? deferred : [];
  const stillTrying = now >= deadline ? [] : deferred;

  const failure = (r: RecipientResult, outcome: Failure['outcome']): Failure => ({
    recipient: r.recipient,
    outcome,
    ...(r.responseCode !== undefined ? { responseCode: r.responseCode } : {}),
    ...(r.enhancedCode !== undefined ? { enhancedCode: r.enhancedCode } : {}),
    response: r.response,
    ...(r.mx !== undefined ? { mx: r.mx } : {}),
    attempts,
    firstAttemptAt,
    lastAttemptAt: attemptStartedAt,
  });
  const failures = [...bounced.map((r) => failure(r, 'bounced')), ...expired.map((r) => failure(r, 'expired'))];

  let retry: Settlement['retry'] = null;
  let delayWarning: Settlement['delayWarning'] = null;
  if (stillTrying.length > 0) {
    const greylisted = stillTrying.some((r) => r.greylisted);
    // Never schedule past the deadline: the last attempt happens at the end of the lifetime.
    const untilDeadline = Math.max(1, Math.ceil((deadline - now) / 1000));
    const delaySeconds = Math.min(retryDelaySeconds(policy, job.attempts, greylisted), untilDeadline);
    const warnNow = delayWarningDue(job, now, options.delayWarningSeconds);
    if (warnNow) delayWarning = stillTrying;
    retry = {
      job: {
        ...job,
        rcpttos: stillTrying.map((r) => r.recipient),
        attempts,
        firstAttemptAt,
        lastAttemptAt: attemptStartedAt,
        ...(warnNow ? { delayWarnedAt: now } : {}),
      },
      delaySeconds,
      greylisted,
      recipients: stillTrying,
    };
  }

  return {
    delivered,
    bounced,
    expired,
    failedJob:
      failures.length > 0
        ? {
            v: 1,
            // Only the failed recipients: requeuing this job must not resend to anyone who got it.
            job: { ...job, rcpttos: failures.map((f) => f.recipient), attempts, firstAttemptAt, lastAttemptAt: attemptStartedAt },
            failures,
            failedAt: now,
          }
        : null,
    retry,
    delayWarning,
    retryUntil: deadline,
  };
}
