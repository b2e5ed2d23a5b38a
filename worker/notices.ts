import { randomUUID } from 'node:crypto';
import { z } from 'zod';
import { mailbox, type FailedJob, type OutboundJob } from '../shared/job.ts';
import type { RecipientResult } from './classify.ts';
import { buildDsn, type DsnRecipient, type NoticeKind, type NoticeSettings } from './dsn.ts';
import type { Settlement } from './settle.ts';

/**
 * Notices to the envelope sender after an attempt: a failure report for recipients that
 * bounced or expired, and at most one delay warning per message, each queued as an
 * ordinary outbound job (the message itself is dsn.ts).
 *
 * Loops: a notice is sent with the null reverse-path `<>`, and nothing is ever sent about
 * a message whose reverse-path is null, so a notice can never cause another one.
 */

/** `bounces`: delivery status notifications (RFC 3464) to the envelope sender. */
export const bouncesSchema = z
  .object({
    /** Report bounced and expired recipients to the sender (never to a null sender `<>`). */
    enabled: z.boolean().default(true),
    /** From: of notices; unset means MAILER-DAEMON@<ehloName>. */
    from: mailbox.optional(),
    /** Warn the sender once when a message is still undelivered this long after arrival; 0 disables. */
    delayWarningSeconds: z.number().int().nonnegative().default(14_400),
  })
  .strict()
  .prefault({});
export type BouncesConfig = z.infer<typeof bouncesSchema>;

/** The From: of notices: `bounces.from`, else the mailer-daemon of the worker's name. */
export function noticesFrom(bounces: BouncesConfig, ehloName: string): string {
  return bounces.from ?? `MAILER-DAEMON@${ehloName}`;
}


/** Whether a message earns notices at all: never for a null reverse-path (that is a notice itself). */
export function wantsNotices(job: OutboundJob, settings: NoticeSettings | undefined): settings is NoticeSettings {
  return settings !== undefined && settings.enabled && job.mailfrom !== '';
}

function noticeJob(original: OutboundJob, message: Buffer, settings: NoticeSettings, now: number): OutboundJob {
  return {
    v: 1,
    id: randomUUID(),
    // The worker wrote the notice, not the app host (the log line notice_queued links the two).
    fqdn: settings.reportingMta,
    // The null reverse-path: a notice that cannot be delivered is never reported back.
    mailfrom: '',
    rcpttos: [original.mailfrom],
    data: message.toString('base64'),
    receivedAt: now,
    attempts: 0,
    // Marks the worker's own notice: only these are signed for the notices' domain.
    notice: true,
  };
}

/** The failure report for the bounced and expired recipients of a failed-tube record, or null when none is due. */
export async function failureNotice(failed: FailedJob, raw: Buffer, settings: NoticeSettings | undefined, now: number): Promise<OutboundJob | null> {
  if (!wantsNotices(failed.job, settings)) return null;
  const recipients: DsnRecipient[] = failed.failures.map((f) => ({ ...f }));
  const message = await buildDsn({ kind: 'failure', original: failed.job, raw, recipients, settings, now });
  return noticeJob(failed.job, message, settings, now);
}

/** The delay warning for recipients still being retried, or null when none is due. */
export async function delayNotice(
  job: OutboundJob,
  deferred: RecipientResult[],
  options: { raw: Buffer; settings: NoticeSettings | undefined; attemptStartedAt: number; retryUntil: number; now: number },
): Promise<OutboundJob | null> {
  if (!wantsNotices(job, options.settings) || deferred.length === 0) return null;
  const recipients: DsnRecipient[] = deferred.map((r) => ({
    recipient: r.recipient,
    outcome: 'deferred',
    ...(r.responseCode !== undefined ? { responseCode: r.responseCode } : {}),
    ...(r.enhancedCode !== undefined ? { enhancedCode: r.enhancedCode } : {}),
    response: r.response,
    ...(r.mx !== undefined ? { mx: r.mx } : {}),
    lastAttemptAt: options.attemptStartedAt,
  }));
  const message = await buildDsn({ kind: 'delay', original: job, raw: options.raw, recipients, settings: options.settings, now: options.now, retryUntil: options.retryUntil });
  return noticeJob(job, message, options.settings, options.now);
}

export interface QueuedNotice {
  kind: NoticeKind;
  job: OutboundJob;
  recipients: string[];
}

/** The sender's notices for a settlement: a failure report and/or the delay warning it calls for. */
export async function noticesFor(
  job: OutboundJob,
  raw: Buffer,
  settlement: Settlement,
  options: { settings: NoticeSettings | undefined; attemptStartedAt: number; now: number },
): Promise<QueuedNotice[]> {
  const notices: QueuedNotice[] = [];
  if (settlement.failedJob) {
    const notice = await failureNotice(settlement.failedJob, raw, options.settings, options.now);
    if (notice) notices.push({ kind: 'failure', job: notice, recipients: settlement.failedJob.job.rcpttos });
  }
  if (settlement.delayWarning) {
    const notice = await delayNotice(job, settlement.delayWarning, { raw, settings: options.settings, attemptStartedAt: options.attemptStartedAt, retryUntil: settlement.retryUntil, now: options.now });
    if (notice) notices.push({ kind: 'delay', job: notice, recipients: settlement.delayWarning.map((r) => r.recipient) });
  }
  return notices;
}

