import { createHash } from 'node:crypto';
import { z } from 'zod';
import { domainOf, hasAddressLiteral, isValidMailbox } from '../shared/address.ts';
import { domainAllowed } from '../shared/job.ts';
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

/**
 * Standard base64 without line breaks, strictly: Buffer.from(..., 'base64') silently skips
 * invalid characters and accepts base64url, and a message must never be altered in
 * transit, so the decoded bytes must encode back to exactly the text. A round trip is
 * linear; a regular expression with a quantified group made V8 throw "Maximum call stack
 * size exceeded" from about 3.5 MiB of message on (issue 12.1, DESIGN.md).
 */
function decodeStrictBase64(text: string): Buffer | undefined {
  if (text.length % 4 !== 0) return undefined;
  const bytes = Buffer.from(text, 'base64');
  return bytes.toString('base64') === text ? bytes : undefined;
}

function base64DecodedLength(text: string): number {
  const padding = text.endsWith('==') ? 2 : text.endsWith('=') ? 1 : 0;
  return Math.floor(text.length / 4) * 3 - padding;
}

const NOT_BASE64 = 'not valid base64 (standard alphabet, padded, no line breaks)';

/** An envelope address as a submission may give it: a mailbox with a domain name. */
const mailbox = z.string().superRefine((address, ctx) => {
  if (isValidMailbox(address)) return;
  const literal = hasAddressLiteral(address) && isValidMailbox(address, { addressLiteral: true });
  ctx.addIssue({ code: 'custom', message: literal ? 'address literals (user@[192.0.2.1]) are not accepted: hedwig delivers to domain names' : 'not a valid RFC 5321 mailbox' });
});
/** The reverse-path may be null (`<>`), as for bounces. */
const reversePath = z.union([z.literal(''), mailbox]);

function submissionSchema(limits: SubmissionLimits) {
  return z
    .object({
      mailfrom: reversePath,
      rcpttos: z.array(mailbox).min(1).max(limits.maxRecipients),
      data: z.string().optional(),
      data_base64: z.string().optional(),
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
    if (dataBase64 === undefined) return ok({ mailfrom, rcpttos, data: Buffer.from(data!, 'utf8') });
    const bytes = decodeStrictBase64(dataBase64);
    if (!bytes) return rejection(400, 'invalid_request', `data_base64: ${NOT_BASE64}`, 'data_base64');
    return ok({ mailfrom, rcpttos, data: bytes });
  };
}

/**
 * A host may only send as the domains listed for it ('*' = any). Subdomains are not
 * implied. The null sender (bounces) carries no domain and is always allowed.
 */
export function senderAllowed(mailfrom: string, senderDomains: readonly string[]): boolean {
  return mailfrom === '' || domainAllowed(domainOf(mailfrom), senderDomains);
}

/** What makes two submissions "the same message" for idempotency. */
export function submissionFingerprint(submission: Submission): string {
  return createHash('sha256')
    .update(JSON.stringify([submission.mailfrom, submission.rcpttos]))
    .update('\n')
    .update(submission.data)
    .digest('hex');
}
