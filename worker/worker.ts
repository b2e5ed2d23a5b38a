import type { BeanstalkClient, ReservedJob } from '../shared/beanstalk.ts';
import { domainOf } from '../shared/address.ts';
import { errorCode, errorMessage } from '../shared/errors.ts';
import { decodeOutboundJob, encodeJob, type OutboundJob } from '../shared/job.ts';
import type { Logger } from '../shared/logger.ts';
import type { Deliverer, RecipientResult } from './deliver.ts';
import type { WorkerMetrics } from './metrics.ts';
import type { MxResolver } from './mx.ts';
import type { OutcomeRecorder } from './outcomes.ts';
import { delayNotice, failureNotice, type NoticeKind, type NoticeSettings } from './dsn.ts';
import { settle, type RetryPolicy, type Settlement } from './settle.ts';
import { runReserveLoop } from '../shared/reserve-loop.ts';

/**
 * The life of one reserved job: decode, deliver to every destination domain, then hand
 * the outcome back to beanstalkd. A job is deleted only after every recipient has either
 * been delivered or been written into a new job (retry) or the failed tube: put before
 * delete, so a crash in between repeats a delivery rather than losing one (at-least-once).
 * Notices to the sender (bounces, delay warnings) are jobs too, put before the delete.
 */

export interface WorkerDeps {
  resolver: MxResolver;
  deliverer: Deliverer;
  metrics: WorkerMetrics;
  logger: Logger;
  policy: RetryPolicy;
  tubes: { outbound: string; failed: string };
  /** TTR of the jobs the worker puts (retries, failures). */
  ttrSeconds: number;
  /** Delivery status notifications to senders; absent means none are sent. */
  notices?: NoticeSettings & { delayWarningSeconds: number };
  /** Latency, webhook events and status updates for each settlement (worker/outcomes.ts); never throws. */
  outcomes?: OutcomeRecorder;
  now?: () => number;
}

const FALLBACK_TTR_SECONDS = 120;
/**
 * A job reserved this many times without being settled keeps killing or wedging whoever
 * holds it (a crash loop): bury it for an operator rather than loop forever.
 */
const MAX_UNSETTLED_RESERVES = 20;

interface QueuedNotice {
  kind: NoticeKind;
  job: OutboundJob;
  recipients: string[];
}

/** Delivers one attempt for every recipient: one transaction per domain, domains in parallel. */
export async function attemptDelivery(job: OutboundJob, raw: Buffer, deps: WorkerDeps): Promise<RecipientResult[]> {
  const byDomain = new Map<string, string[]>();
  for (const recipient of job.rcpttos) {
    const domain = domainOf(recipient);
    byDomain.set(domain, [...(byDomain.get(domain) ?? []), recipient]);
  }
  const perDomain = await Promise.all(
    [...byDomain].map(async ([domain, recipients]): Promise<RecipientResult[]> => {
      const endTimer = deps.metrics.deliveryDuration.startTimer();
      try {
        const destination = await deps.resolver.resolveDestination(domain);
        if (!destination.ok) {
          deps.logger.info({ event: 'attempt', messageId: job.id, domain, stage: 'dns', response: destination.message });
          return recipients.map((recipient) => ({
            recipient,
            outcome: destination.temporary ? 'deferred' : 'bounced',
            greylisted: false,
            responseCode: destination.code,
            enhancedCode: destination.enhanced,
            response: `${destination.code} ${destination.enhanced} ${destination.message}`,
          }));
        }
        return await deps.deliverer.deliver({
          messageId: job.id,
          domain,
          from: job.mailfrom,
          recipients,
          raw,
          hosts: destination.hosts,
          receivedAt: job.receivedAt,
          submittedBy: job.fqdn,
          notice: job.notice,
          senderDomains: job.senderDomains,
        });
      } catch (err) {
        // A bug or an unexpected library error: retry later rather than lose the recipients.
        deps.logger.error({ event: 'delivery_error', messageId: job.id, domain, err }, 'unexpected delivery error');
        return recipients.map((recipient) => ({ recipient, outcome: 'deferred', greylisted: false, response: `internal error: ${errorMessage(err)}` }));
      } finally {
        endTimer();
      }
    }),
  );
  return perDomain.flat();
}

function logSettlement(job: OutboundJob, settlement: Settlement, deps: WorkerDeps, now: number, putIds: { jobId: string; failedJobId?: string; retryJobId?: string }): void {
  const base = { messageId: job.id, jobId: putIds.jobId, attempts: job.attempts + 1 };
  const describe = (r: RecipientResult) => ({ recipient: r.recipient, domain: domainOf(r.recipient), mx: r.mx, response: r.response });
  for (const r of settlement.delivered) deps.logger.info({ event: 'delivered', ...base, ...describe(r) });
  for (const r of settlement.bounced) deps.logger.warn({ event: 'bounced', ...base, ...describe(r), failedJobId: putIds.failedJobId });
  for (const r of settlement.expired) deps.logger.warn({ event: 'expired', ...base, ...describe(r), failedJobId: putIds.failedJobId });
  if (settlement.retry) {
    const nextAttemptAt = new Date(now + settlement.retry.delaySeconds * 1000).toISOString();
    for (const r of settlement.retry.recipients) {
      deps.logger.info({ event: 'deferred', ...base, ...describe(r), greylisted: r.greylisted, nextAttemptAt, retryJobId: putIds.retryJobId });
    }
  }
  deps.metrics.deliveries.inc({ outcome: 'delivered' }, settlement.delivered.length);
  deps.metrics.deliveries.inc({ outcome: 'bounced' }, settlement.bounced.length);
  deps.metrics.deliveries.inc({ outcome: 'expired' }, settlement.expired.length);
  deps.metrics.deliveries.inc({ outcome: 'deferred' }, settlement.retry?.recipients.length ?? 0);
}

/** TTR and reserve count of a reserved job; fallbacks when beanstalkd cannot say. */
async function reservedJobStats(client: BeanstalkClient, reserved: ReservedJob, logger: Logger): Promise<{ ttrSeconds: number; reserves: number }> {
  try {
    const stats = await client.statsJob(reserved.id);
    return { ttrSeconds: Number(stats.ttr) || FALLBACK_TTR_SECONDS, reserves: Number(stats.reserves) || 1 };
  } catch (err) {
    logger.warn({ event: 'stats_job_failed', jobId: reserved.id, code: errorCode(err) }, 'cannot read the job TTR; touching on a fallback interval');
    return { ttrSeconds: FALLBACK_TTR_SECONDS, reserves: 1 };
  }
}

/** Touches the job at half its TTR so a long SMTP transaction never lets it go back to ready. */
function keepReserved(reserved: ReservedJob, ttrSeconds: number, logger: Logger): () => void {
  const timer = setInterval(
    () => {
      reserved.touch().catch((err: unknown) => logger.warn({ event: 'touch_failed', jobId: reserved.id, code: errorCode(err) }));
    },
    Math.max(250, (ttrSeconds * 1000) / 2),
  );
  return () => clearInterval(timer);
}

/** Why a payload is not a job, without quoting it: JSON.parse messages echo the input. */
function undecodableReason(err: unknown): string {
  if (err instanceof SyntaxError) return 'not JSON';
  const issues = (err as { issues?: Array<{ path?: PropertyKey[]; message?: string }> }).issues;
  if (Array.isArray(issues)) return issues.slice(0, 5).map((i) => `${(i.path ?? []).map(String).join('.') || '(root)'}: ${i.message}`).join('; ');
  return errorCode(err) ?? 'unknown';
}

export async function handleReservedJob(client: BeanstalkClient, reserved: ReservedJob, deps: WorkerDeps): Promise<void> {
  const now = deps.now ?? Date.now;
  let job: OutboundJob;
  try {
    job = decodeOutboundJob(reserved.payload);
  } catch (err) {
    // Never delete what we cannot read: bury it for an operator (peek-buried, kick).
    deps.logger.error(
      { event: 'undecodable_job', jobId: reserved.id, server: reserved.server, bytes: reserved.payload.length, reason: undecodableReason(err) },
      'job cannot be decoded; buried',
    );
    deps.metrics.buriedJobs.inc();
    await reserved.bury();
    return;
  }

  const { ttrSeconds, reserves } = await reservedJobStats(client, reserved, deps.logger);
  if (reserves > MAX_UNSETTLED_RESERVES) {
    deps.logger.error(
      { event: 'job_reserved_too_often', messageId: job.id, jobId: reserved.id, server: reserved.server, reserves },
      'job was reserved again and again without an outcome (crash loop?); buried',
    );
    deps.metrics.buriedJobs.inc();
    await reserved.bury();
    return;
  }

  const stopKeeping = keepReserved(reserved, ttrSeconds, deps.logger);
  let settlement: Settlement;
  let notices: QueuedNotice[] = [];
  const putIds: { jobId: string; failedJobId?: string; retryJobId?: string; noticeJobIds: string[] } = { jobId: reserved.id, noticeJobIds: [] };
  try {
    const attemptStartedAt = now();
    const raw = Buffer.from(job.data, 'base64');
    const results = await attemptDelivery(job, raw, deps);
    settlement = settle(job, results, { policy: deps.policy, attemptStartedAt, now: now(), delayWarningSeconds: deps.notices?.delayWarningSeconds });
    notices = await buildNotices(job, raw, settlement, deps, attemptStartedAt, now());

    if (settlement.failedJob) {
      putIds.failedJobId = await client.putTo(deps.tubes.failed, encodeJob(settlement.failedJob), { ttrSeconds: deps.ttrSeconds });
    }
    if (settlement.retry) {
      putIds.retryJobId = await client.putTo(deps.tubes.outbound, encodeJob(settlement.retry.job), {
        delaySeconds: settlement.retry.delaySeconds,
        ttrSeconds: deps.ttrSeconds,
      });
    }
    for (const notice of notices) {
      putIds.noticeJobIds.push(await client.putTo(deps.tubes.outbound, encodeJob(notice.job), { ttrSeconds: deps.ttrSeconds }));
    }
    await deps.outcomes?.record(client, job, settlement, { now: now(), ...(putIds.retryJobId ? { retryJobId: putIds.retryJobId } : {}) });
    await reserved.delete();
  } catch (err) {
    if (errorCode(err) === 'JOB_TOO_BIG') {
      // beanstalkd's -z is below jobSizeFor(): trying again cannot help, so keep the job buried
      // (nothing is lost) and say what to fix.
      deps.logger.error(
        { event: 'settle_failed', messageId: job.id, jobId: reserved.id, code: 'JOB_TOO_BIG', err },
        "an outcome record is larger than beanstalkd's -z allows; job buried (raise -z, then kick it)",
      );
      deps.metrics.buriedJobs.inc();
      await reserved.bury().catch(() => undefined);
      return;
    }
    // Putting the outcome failed (beanstalkd gone?): the old job must stay. If the connection is
    // gone it is back in ready already; otherwise release it to be tried again shortly.
    deps.logger.error({ event: 'settle_failed', messageId: job.id, jobId: reserved.id, code: errorCode(err), err }, 'could not record the outcome; job stays queued');
    await reserved.release({ delaySeconds: deps.policy.delaysSeconds[0] }).catch(() => undefined);
    return;
  } finally {
    stopKeeping();
  }
  logSettlement(job, settlement, deps, now(), putIds);
  logNotices(job, notices, putIds.noticeJobIds, deps);
}

/** The sender's notices for this settlement. A notice that cannot be built is logged, never a reason to keep the job. */
async function buildNotices(job: OutboundJob, raw: Buffer, settlement: Settlement, deps: WorkerDeps, attemptStartedAt: number, now: number): Promise<QueuedNotice[]> {
  const notices: QueuedNotice[] = [];
  try {
    if (settlement.failedJob) {
      const notice = await failureNotice(settlement.failedJob, raw, deps.notices, now);
      if (notice) notices.push({ kind: 'failure', job: notice, recipients: settlement.failedJob.job.rcpttos });
    }
    if (settlement.delayWarning) {
      const notice = await delayNotice(job, settlement.delayWarning, { raw, settings: deps.notices, attemptStartedAt, retryUntil: settlement.retryUntil, now });
      if (notice) notices.push({ kind: 'delay', job: notice, recipients: settlement.delayWarning.map((r) => r.recipient) });
    }
  } catch (err) {
    deps.logger.error({ event: 'notice_failed', messageId: job.id, err }, 'could not build the delivery status notification');
  }
  return notices;
}

function logNotices(job: OutboundJob, notices: QueuedNotice[], jobIds: string[], deps: WorkerDeps): void {
  for (const [i, notice] of notices.entries()) {
    deps.logger.info({ event: 'notice_queued', kind: notice.kind, messageId: job.id, noticeMessageId: notice.job.id, noticeJobId: jobIds[i], recipients: notice.recipients });
    deps.metrics.notices.inc({ kind: notice.kind });
  }
}

/** The delivery loop of one reserve connection (shared/reserve-loop.ts) until `stopping` is aborted. */
export function runDeliveryLoop(client: BeanstalkClient, deps: WorkerDeps, stopping: AbortSignal): Promise<void> {
  const log = deps.logger.child({ server: client.server });
  return runReserveLoop(client, {
    tube: deps.tubes.outbound,
    stopping,
    handle: (reserved) => handleReservedJob(client, reserved, deps),
    onUnavailable: (err) => log.warn({ event: 'reserve_failed', code: errorCode(err) ?? 'UNKNOWN', message: errorMessage(err) }, 'beanstalkd unavailable; retrying'),
    onRecovered: () => log.info({ event: 'reserve_recovered' }, 'beanstalkd reachable again'),
  });
}
