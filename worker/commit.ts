import type { BeanstalkClient, ReservedJob } from '../shared/beanstalk.ts';
import { errorCode } from '../shared/errors.ts';
import { encodeJob, type OutboundJob } from '../shared/job.ts';
import type { Logger } from '../shared/logger.ts';
import type { WorkerMetrics } from './metrics.ts';
import type { QueuedNotice } from './notices.ts';
import type { OutcomeRecorder } from './outcomes.ts';
import type { Settlement } from './settle.ts';

/**
 * The last step of an attempt: hand its settlement to beanstalkd, put before delete. Every
 * job the settlement turns into (the failed-tube record, the retry job, notices to the
 * sender, webhook events and the status update) is put first, on the reserving connection;
 * only then is the old job deleted. A crash in between repeats a delivery rather than
 * losing one (at-least-once).
 */

export interface CommitDeps {
  logger: Logger;
  metrics: Pick<WorkerMetrics, 'buriedJobs'>;
  tubes: { outbound: string; failed: string };
  /** TTR of the jobs the worker puts (retries, failures, notices). */
  ttrSeconds: number;
  /** How soon a job whose outcome could not be recorded is tried again. */
  releaseDelaySeconds: number;
  /** Latency, webhook events and status updates (outcomes.ts); never throws. */
  outcomes?: OutcomeRecorder;
}

export interface PutIds {
  jobId: string;
  failedJobId?: string;
  retryJobId?: string;
  noticeJobIds: string[];
}

/** Puts every job the settlement turns into, then deletes the old one; throws when beanstalkd refuses (see keepJob). */
export async function commitAttempt(
  client: BeanstalkClient,
  reserved: ReservedJob,
  job: OutboundJob,
  settlement: Settlement,
  notices: QueuedNotice[],
  deps: Pick<CommitDeps, 'tubes' | 'ttrSeconds' | 'outcomes'> & { now: number },
): Promise<PutIds> {
  const putIds: PutIds = { jobId: reserved.id, noticeJobIds: [] };
  const put = { ttrSeconds: deps.ttrSeconds };
  if (settlement.failedJob) putIds.failedJobId = await client.putTo(deps.tubes.failed, encodeJob(settlement.failedJob), put);
  if (settlement.retry) {
    putIds.retryJobId = await client.putTo(deps.tubes.outbound, encodeJob(settlement.retry.job), { ...put, delaySeconds: settlement.retry.delaySeconds });
  }
  for (const notice of notices) putIds.noticeJobIds.push(await client.putTo(deps.tubes.outbound, encodeJob(notice.job), put));
  await deps.outcomes?.record(client, job, settlement, { now: deps.now, ...(putIds.retryJobId ? { retryJobId: putIds.retryJobId } : {}) });
  await reserved.delete();
  return putIds;
}

/** When an attempt could not be committed, the old job must stay: buried when trying again cannot help, else released. */
export async function keepJob(reserved: ReservedJob, job: OutboundJob, err: unknown, deps: Pick<CommitDeps, 'logger' | 'metrics' | 'releaseDelaySeconds'>): Promise<void> {
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
  // Putting the outcome failed (beanstalkd gone?). If the connection is gone the job is back
  // in ready already; otherwise release it to be tried again shortly.
  deps.logger.error({ event: 'settle_failed', messageId: job.id, jobId: reserved.id, code: errorCode(err), err }, 'could not record the outcome; job stays queued');
  await reserved.release({ delaySeconds: deps.releaseDelaySeconds }).catch(() => undefined);
}
