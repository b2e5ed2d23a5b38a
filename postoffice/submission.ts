import { createHash } from 'node:crypto';
import { z } from 'zod';
import { domainOf } from '../shared/address.ts';
import { mailbox, reversePath } from '../shared/job.ts';
import { ok, rejection, type OrRejection } from './rejection.ts';

/** A message as submitted, validated, with its raw bytes decoded. */
export interface Submission {
  mailfrom: string;
  rcpttos: string[];
  data: Buffer;
}

export interface SubmissionLimits {
  maxMessageBytes: number;
  maxRecipients: number;
}

// Standard base64 without line breaks: Buffer.from(..., 'base64') would silently skip
// invalid characters, and a message must never be altered in transit.
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

function base64DecodedLength(text: string): number {
  const padding = text.endsWith('==') ? 2 : text.endsWith('=') ? 1 : 0;
  return (text.length / 4) * 3 - padding;
}

function submissionSchema(limits: SubmissionLimits) {
  return z
    .object({
      mailfrom: reversePath,
      rcpttos: z.array(mailbox).min(1).max(limits.maxRecipients),
      data: z.string().optional(),
      data_base64: z.string().regex(BASE64, { message: 'not valid base64 (standard alphabet, padded, no line breaks)' }).optional(),
    })
    .strict()
    .superRefine((body, ctx) => {
      if (body.data === undefined && body.data_base64 === undefined) {
        ctx.addIssue({ code: 'custom', path: ['data'], message: 'one of data or data_base64 is required' });
      } else if (body.data !== undefined && body.data_base64 !== undefined) {
        ctx.addIssue({ code: 'custom', path: ['data_base64'], message: 'give data or data_base64, not both' });
      }
    });
}

function fieldOf(issue: z.core.$ZodIssue): string {
  const path = issue.path.map(String);
  if (issue.code === 'unrecognized_keys' && issue.keys[0] !== undefined) path.push(issue.keys[0]);
  return path.join('.');
}

/**
 * Validates an already JSON-parsed body `{mailfrom, rcpttos, data | data_base64}` and
 * checks the size of the decoded message before decoding it.
 */
export function createSubmissionParser(limits: SubmissionLimits): (body: unknown) => OrRejection<Submission> {
  const schema = submissionSchema(limits);
  return (body) => {
    const result = schema.safeParse(body);
    if (!result.success) {
      const issue = result.error.issues[0]!;
      const field = fieldOf(issue);
      return rejection(400, 'invalid_request', field ? `${field}: ${issue.message}` : issue.message, field || undefined);
    }
    const { mailfrom, rcpttos, data, data_base64: dataBase64 } = result.data;
    const size = dataBase64 !== undefined ? base64DecodedLength(dataBase64) : Buffer.byteLength(data!, 'utf8');
    if (size > limits.maxMessageBytes) {
      return rejection(413, 'message_too_large', `message is ${size} bytes, the limit is ${limits.maxMessageBytes}`);
    }
    return ok({ mailfrom, rcpttos, data: dataBase64 !== undefined ? Buffer.from(dataBase64, 'base64') : Buffer.from(data!, 'utf8') });
  };
}

/**
 * A host may only send as the domains listed for it ('*' = any). Subdomains are not
 * implied. The null sender (bounces) carries no domain and is always allowed.
 */
export function senderAllowed(mailfrom: string, senderDomains: readonly string[]): boolean {
  if (mailfrom === '') return true;
  return senderDomains.includes('*') || senderDomains.includes(domainOf(mailfrom));
}

/** What makes two submissions "the same message" for idempotency. */
export function submissionFingerprint(submission: Submission): string {
  return createHash('sha256')
    .update(JSON.stringify([submission.mailfrom, submission.rcpttos]))
    .update('\n')
    .update(submission.data)
    .digest('hex');
}
