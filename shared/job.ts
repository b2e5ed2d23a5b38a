import { z } from 'zod';
import { isValidDomain, isValidMailbox } from './address.ts';

/**
 * Time-to-run of the outbound and failed jobs hedwig puts (post office, worker, CLI): a
 * ceiling for a worker that crashed holding one; a live worker touches what it holds.
 */
export const JOB_TTR_SECONDS = 600;

/** Tube names shared by the post office (producer) and workers (consumers). */
export const TUBE = {
  outbound: 'hedwig-outbound',
  failed: 'hedwig-failed',
} as const;

export const mailbox = z.string().refine((address) => isValidMailbox(address), { message: 'not a valid RFC 5321 mailbox' });
/**
 * Addresses inside a job: address literals still decode, since jobs queued before the post
 * office refused them may hold one (the worker decides what to do with it).
 */
const queuedMailbox = z.string().refine((address) => isValidMailbox(address, { addressLiteral: true }), { message: 'not a valid RFC 5321 mailbox' });
/** A domain as a config key or value (`dkim.<domain>`, `tls.domains.<domain>`, ...): lower-cased. */
export const domainName = z
  .string()
  .transform((value) => value.toLowerCase())
  .refine(isValidDomain, { message: 'not a domain' });
/** The reverse-path may be null (`<>`), as for bounces. */
const queuedReversePath = z.union([z.literal(''), queuedMailbox]);

/**
 * An outbound job as stored in beanstalkd. `data` is the raw RFC 5322 message,
 * base64-encoded so 8-bit content survives byte for byte.
 */
export const outboundJobSchema = z.object({
  v: z.literal(1),
  id: z.string().min(1),
  fqdn: z.string(),
  mailfrom: queuedReversePath,
  rcpttos: z.array(queuedMailbox).min(1),
  data: z.string(),
  receivedAt: z.number().int(),
  attempts: z.number().int().nonnegative().default(0),
  firstAttemptAt: z.number().int().optional(),
  lastAttemptAt: z.number().int().optional(),
  /** When the worker sent the sender a delay warning (one per message); older than receivedAt means a requeue, warn again. */
  delayWarnedAt: z.number().int().optional(),
  /**
   * The sender domains the submitting host may use, as the post office's config listed them
   * when it queued the message ('*' = any). The worker's DKIM signing stays within them: a
   * parent domain's key, or a signature on null-sender mail, only for a domain listed here.
   * Absent in jobs queued before the field existed: then neither (see domainAllowed).
   */
  senderDomains: z.array(z.string()).optional(),
  /**
   * Set by the worker on the notices it writes itself (bounces, delay warnings), and only
   * there: the post office builds every job from checked fields and never sets it. Only a
   * notice is signed for the domain of the notices' From.
   */
  notice: z.literal(true).optional(),
});
export type OutboundJob = z.infer<typeof outboundJobSchema>;

export const failureSchema = z.object({
  recipient: z.string(),
  outcome: z.enum(['bounced', 'expired']),
  responseCode: z.number().int().optional(),
  enhancedCode: z.string().optional(),
  response: z.string(),
  mx: z.string().optional(),
  attempts: z.number().int(),
  firstAttemptAt: z.number().int(),
  lastAttemptAt: z.number().int(),
});
export type Failure = z.infer<typeof failureSchema>;

/** A record in the failed tube: the original message (so it can be requeued) and why it failed. */
export const failedJobSchema = z.object({
  v: z.literal(1),
  job: outboundJobSchema,
  failures: z.array(failureSchema).min(1),
  failedAt: z.number().int(),
});
export type FailedJob = z.infer<typeof failedJobSchema>;

/**
 * Whether a host whose config lists `senderDomains` may use `domain` (lower case): listed
 * exactly, or '*'. Subdomains are not implied, parents neither. No list, no domain.
 */
export function domainAllowed(domain: string, senderDomains: readonly string[] | undefined): boolean {
  return senderDomains !== undefined && (senderDomains.includes('*') || senderDomains.includes(domain));
}

export function encodeJob(job: OutboundJob | FailedJob): Buffer {
  return Buffer.from(JSON.stringify(job));
}

export function decodeOutboundJob(payload: Buffer): OutboundJob {
  return outboundJobSchema.parse(JSON.parse(payload.toString('utf8')));
}

export function decodeFailedJob(payload: Buffer): FailedJob {
  return failedJobSchema.parse(JSON.parse(payload.toString('utf8')));
}

/** Longest SMTP reply text a worker keeps (in failed records, status updates, events and logs). */
export const MAX_RESPONSE_CHARS = 1000;

/**
 * JSON bytes one recipient can take in a job, at most: in `rcpttos` (254 characters of up to
 * 3 UTF-8 bytes, quotes escaped) and, in a failed record, its failure (the recipient again,
 * a reply of MAX_RESPONSE_CHARS characters of up to 3 bytes, the MX name, codes and times).
 */
const RECIPIENT_BUDGET_BYTES = 768 + 4352;

/**
 * Bytes of beanstalkd job size (`-z`) needed for a message of `messageBytes` with up to
 * `maxRecipients`: base64 data plus the envelope, and room for the failed record of the
 * same message, which carries a failure per recipient on top.
 */
export function jobSizeFor(messageBytes: number, maxRecipients: number): number {
  return Math.ceil(messageBytes / 3) * 4 + maxRecipients * RECIPIENT_BUDGET_BYTES + 4096;
}
