import { domainOf } from '../shared/address.ts';
import type { FailedJob, Failure } from '../shared/job.ts';
import { parseDuration, usageError } from './args.ts';

/**
 * Which failed recipients a `failed` command acts on. The reply-code, enhanced-code and
 * domain filters apply to each recipient's failure; `since` to the record. A record
 * matches when at least one of its recipients does, and `failed retry` moves only those.
 */
export interface FailureFilter {
  /** "550", or a class pattern like "5xx" / "55x". */
  code?: string;
  /** "5.1.1", or a prefix like "5.1" (matches 5.1.x). */
  enhanced?: string;
  domain?: string;
  /** Records that failed at or after this time (ms). */
  sinceMs?: number;
}

export const FILTER_OPTIONS = {
  code: { type: 'string' },
  enhanced: { type: 'string' },
  domain: { type: 'string' },
  since: { type: 'string' },
} as const;

export const FILTER_HELP = `  --code CODE          reply code of the recipient's failure: 550, or a class like 5xx or 55x
  --enhanced CODE      enhanced status code: 5.1.1, or a prefix like 5.1 (5.1.x)
  --domain DOMAIN      recipient domain (exact, case-insensitive)
  --since DURATION     failed within the last 30m, 2h, 1d, ...`;

export function parseFilter(values: { code?: string; enhanced?: string; domain?: string; since?: string }, now: number): FailureFilter {
  const filter: FailureFilter = {};
  if (values.code !== undefined) {
    if (!/^[2-5][0-9x]{2}$/i.test(values.code)) throw usageError(`--code: expected a reply code like 550 or 5xx, got ${JSON.stringify(values.code)}`);
    filter.code = values.code.toLowerCase();
  }
  if (values.enhanced !== undefined) {
    if (!/^[245](\.\d{1,3}){0,2}$/.test(values.enhanced)) throw usageError(`--enhanced: expected a code like 5.1.1 or 5.1, got ${JSON.stringify(values.enhanced)}`);
    filter.enhanced = values.enhanced;
  }
  if (values.domain !== undefined) {
    if (values.domain.trim() === '') throw usageError('--domain: empty');
    filter.domain = values.domain.trim().toLowerCase().replace(/^@/, '');
  }
  if (values.since !== undefined) filter.sinceMs = now - parseDuration(values.since, '--since');
  return filter;
}

function codeMatches(pattern: string, code: number | undefined): boolean {
  if (code === undefined) return false;
  const text = String(code);
  return [...pattern].every((c, i) => c === 'x' || c === text[i]);
}

export function failureMatches(failure: Failure, filter: FailureFilter): boolean {
  if (filter.code !== undefined && !codeMatches(filter.code, failure.responseCode)) return false;
  if (filter.enhanced !== undefined) {
    const enhanced = failure.enhancedCode;
    if (enhanced === undefined || (enhanced !== filter.enhanced && !enhanced.startsWith(`${filter.enhanced}.`))) return false;
  }
  if (filter.domain !== undefined && domainOf(failure.recipient) !== filter.domain) return false;
  return true;
}

/** The failures of `record` selected by `filter`; empty when the record does not match. */
export function matchingFailures(record: FailedJob, filter: FailureFilter): Failure[] {
  if (filter.sinceMs !== undefined && record.failedAt < filter.sinceMs) return [];
  return record.failures.filter((f) => failureMatches(f, filter));
}

/** RFC 3463 §3.3: the middle digit of an enhanced status code is the subject. */
const SUBJECTS: Record<string, string> = {
  '0': 'other or undefined status',
  '1': 'addressing (bad mailbox or domain)',
  '2': 'mailbox status (full, disabled)',
  '3': 'mail system status',
  '4': 'network and routing',
  '5': 'mail delivery protocol',
  '6': 'message content or media',
  '7': 'security or policy',
};

/** A coarse reason for grouping: expired recipients together, the rest by enhanced-code subject. */
export function reasonClass(failure: Failure): string {
  if (failure.outcome === 'expired') return 'expired (retried until the maximum lifetime)';
  const subject = failure.enhancedCode?.split('.')[1];
  if (subject !== undefined && SUBJECTS[subject]) return `x.${subject}.x ${SUBJECTS[subject]}`;
  return 'no enhanced status code';
}
