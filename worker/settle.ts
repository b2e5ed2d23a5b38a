import type { FailedJob, Failure, OutboundJob } from '../shared/job.ts';
import type { RecipientResult } from './deliver.ts';

/**
 * What to do with a job once every recipient has a verdict from this attempt: which
 * recipients are done, which go to the failed tube (bounced now, or expired after the
 * maximum lifetime) and which go back to the queue in a new job, after how long.
 */

export interface RetryPolicy {
  /** Delay after the n-th failed attempt is delaysSeconds[n-1]; the last value repeats. */
  delaysSeconds: number[];
  maxLifetimeSeconds: number;
}

export interface Settlement {
  delivered: RecipientResult[];
  bounced: RecipientResult[];
  expired: RecipientResult[];
  /** Into the failed tube (before the old job is deleted); null when nothing failed. */
  failedJob: FailedJob | null;
  /** Back into the outbound tube; null when nobody is left to try. */
  retry: { job: OutboundJob; delaySeconds: number; greylisted: boolean; recipients: RecipientResult[] } | null;
}

export function retryDelaySeconds(policy: RetryPolicy, previousAttempts: number, greylisted: boolean): number {
  // A greylisting server accepts the retry after a few minutes: do not wait the long schedule.
  if (greylisted) return policy.delaysSeconds[0]!;
  return policy.delaysSeconds[Math.min(previousAttempts, policy.delaysSeconds.length - 1)]!;
}

export function settle(job: OutboundJob, results: RecipientResult[], options: { policy: RetryPolicy; attemptStartedAt: number; now: number }): Settlement {
  const { policy, attemptStartedAt, now } = options;
  const attempts = job.attempts + 1;
  const firstAttemptAt = job.firstAttemptAt ?? attemptStartedAt;
  const deadline = job.receivedAt + policy.maxLifetimeSeconds * 1000;

  const delivered = results.filter((r) => r.outcome === 'delivered');
  const bounced = results.filter((r) => r.outcome === 'bounced');
  const deferred = results.filter((r) => r.outcome === 'deferred');
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
  if (stillTrying.length > 0) {
    const greylisted = stillTrying.some((r) => r.greylisted);
    // Never schedule past the deadline: the last attempt happens at the end of the lifetime.
    const untilDeadline = Math.max(1, Math.ceil((deadline - now) / 1000));
    const delaySeconds = Math.min(retryDelaySeconds(policy, job.attempts, greylisted), untilDeadline);
    retry = {
      job: { ...job, rcpttos: stillTrying.map((r) => r.recipient), attempts, firstAttemptAt, lastAttemptAt: attemptStartedAt },
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
  };
}
