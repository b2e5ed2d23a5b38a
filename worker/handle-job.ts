import type { BeanstalkClient, ReservedJob } from '../shared/beanstalk.ts';
import { domainOf } from '../shared/address.ts';
import { errorCode, errorMessage } from '../shared/errors.ts';
import { decodeOutboundJob, type OutboundJob } from '../shared/job.ts';
import type { Logger } from '../shared/logger.ts';
import { runReserveLoop } from '../shared/reserve-loop.ts';
import { attemptDelivery, type AttemptDeps } from './attempt.ts';
import type { RecipientResult } from './classify.ts';
import { commitAttempt, keepJob, type CommitDeps, type PutIds } from './commit.ts';
import type { WorkerMetrics } from './metrics.ts';
import type { NoticeSettings } from './dsn.ts';
import { noticesFor, type QueuedNotice } from './notices.ts';
import { settle, type RetryPolicy, type Settlement } from './settle.ts';

/**
 * The life of one reserved job, top to bottom: decode it (or bury what cannot be read),
 * keep it reserved while it is worked on, attempt delivery to every recipient
 * (attempt.ts: route, then deliver), settle what the verdicts mean (settle.ts), build the
 * sender's notices (notices.ts), commit it all to beanstalkd, put before delete
 * (commit.ts), then log each recipient's outcome.
 */

export interface WorkerDeps extends AttemptDeps, Omit<CommitDeps, 'metrics' | 'releaseDelaySeconds'> {
  metrics: WorkerMetrics;
  policy: RetryPolicy;
  /** Delivery status notifications to senders; absent means none are sent. */
  notices?: NoticeSettings & { delayWarningSeconds: number };
  /**
   * Before the first attempt of a message (attempts 0): whether this job owns it, or is a second
   * copy of a job already attempted (a put the post office repeated after an ambiguous answer,
   * shared/store/store.ts firstAttempt). Absent, or the store unavailable: 'first'.
   */
  firstAttempt?: (job: OutboundJob, reserved: ReservedJob) => Promise<'first' | 'duplicate'>;
  now?: () => number;
}

const FALLBACK_TTR_SECONDS = 120;
/**
 * A job reserved this many times without being settled keeps killing or wedging whoever
 * holds it (a crash loop): bury it for an operator rather than loop forever.
 */
const MAX_UNSETTLED_RESERVES = 20;

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

/** The job, or undefined after it was buried: undecodable, or reserved again and again without an outcome. */
async function jobToWorkOn(client: BeanstalkClient, reserved: ReservedJob, deps: WorkerDeps): Promise<{ job: OutboundJob; ttrSeconds: number } | undefined> {
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
    return undefined;
  }
  const { ttrSeconds, reserves } = await reservedJobStats(client, reserved, deps.logger);
  if (reserves > MAX_UNSETTLED_RESERVES) {
    deps.logger.error(
      { event: 'job_reserved_too_often', messageId: job.id, jobId: reserved.id, server: reserved.server, reserves },
      'job was reserved again and again without an outcome (crash loop?); buried',
    );
    deps.metrics.buriedJobs.inc();
    await reserved.bury();
    return undefined;
  }
  return { job, ttrSeconds };
}

export async function handleReservedJob(client: BeanstalkClient, reserved: ReservedJob, deps: WorkerDeps): Promise<void> {
  const now = deps.now ?? Date.now;
  const found = await jobToWorkOn(client, reserved, deps);
  if (!found) return;
  const { job } = found;
  if (job.attempts === 0 && deps.firstAttempt && (await deps.firstAttempt(job, reserved)) === 'duplicate') {
    // The other copy is (or was) delivered; this one must not be. Nothing is lost: the owner job carries every recipient.
    deps.logger.warn({ event: 'duplicate_job', messageId: job.id, jobId: reserved.id, server: reserved.server }, 'a copy of a job already attempted; deleted without delivering');
    deps.metrics.duplicateJobs.inc();
    await reserved.delete();
    return;
  }

  const stopKeeping = keepReserved(reserved, found.ttrSeconds, deps.logger);
  let settlement: Settlement;
  let notices: QueuedNotice[];
  let putIds: PutIds;
  try {
    const attemptStartedAt = now();
    const raw = Buffer.from(job.data, 'base64');
    const results = await attemptDelivery(job, raw, deps);
    settlement = settle(job, results, { policy: deps.policy, attemptStartedAt, now: now(), delayWarningSeconds: deps.notices?.delayWarningSeconds });
    notices = await buildNotices(job, raw, settlement, deps, attemptStartedAt, now());
    putIds = await commitAttempt(client, reserved, job, settlement, notices, { ...deps, now: now() });
  } catch (err) {
    await keepJob(reserved, job, err, { ...deps, releaseDelaySeconds: deps.policy.delaysSeconds[0]! });
    return;
  } finally {
    stopKeeping();
  }
  logSettlement(job, settlement, deps, now(), putIds);
  logNotices(job, notices, putIds.noticeJobIds, deps);
}

/** A notice that cannot be built is logged, never a reason to keep the job. */
async function buildNotices(job: OutboundJob, raw: Buffer, settlement: Settlement, deps: WorkerDeps, attemptStartedAt: number, now: number): Promise<QueuedNotice[]> {
  try {
    return await noticesFor(job, raw, settlement, { settings: deps.notices, attemptStartedAt, now });
  } catch (err) {
    deps.logger.error({ event: 'notice_failed', messageId: job.id, err }, 'could not build the delivery status notification');
    return [];
  }
}

function logSettlement(job: OutboundJob, settlement: Settlement, deps: WorkerDeps, now: number, putIds: PutIds): void {
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
