import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { mailbox } from '../shared/job.ts';
import type { Logger } from '../shared/logger.ts';
import { writeStateFile } from './state-file.ts';

/**
 * TLS-RPT (RFC 8460): counts of TLS sessions per policy domain and policy (an MTA-STS
 * policy, or the TLSA records of one MX host), successes and each kind of failure, over a
 * reporting period (a UTC day by default). The aggregate report built from an ended period
 * (the JSON of RFC 8460 §4, gzipped, as an HTTPS body or a MIME attachment) is
 * `tls-rpt-report.ts`.
 *
 * The counts live in memory and are saved to the worker's state directory (one file per
 * worker, named by its `reportingId`), so a restart loses nothing of the day; a period that
 * ended while the worker was down is reported at its next start. Each worker reports its
 * own sessions (receivers add up reports by report-id); one aggregate for all workers would
 * need a shared store.
 */

/** `tlsRpt`: aggregate TLS reports to the domains that ask for them (counts live under `stateDir`). */
export const tlsRptSchema = z
  .object({
    enabled: z.boolean().default(false),
    /** The reporting period; RFC 8460 §4.1 reports cover a UTC day. Shorter only for tests. */
    intervalSeconds: z.number().int().min(1).max(86_400).default(86_400),
    /** `organization-name` of the reports; default: the domain of `ehloName`. */
    organizationName: z.string().min(1).max(200).optional(),
    /** `contact-info`; default: `mailto:` the reports' From address. */
    contactInfo: z.string().min(1).max(200).optional(),
    /** From: of report mail; default `tlsrpt@<ehloName>`. Its domain's DKIM key signs the reports. */
    from: mailbox.optional(),
    /** Per HTTPS POST of a report. */
    timeoutMs: z.number().int().positive().default(30_000),
  })
  .strict()
  .prefault({});
export type TlsRptConfig = z.infer<typeof tlsRptSchema>;

export type PolicyType = 'sts' | 'tlsa';

/** RFC 8460 §4.3 result types hedwig reports. */
export type ResultType =
  | 'starttls-not-supported'
  | 'certificate-host-mismatch'
  | 'certificate-expired'
  | 'certificate-not-trusted'
  | 'validation-failure'
  | 'tlsa-invalid'
  | 'dnssec-invalid'
  | 'sts-policy-fetch-error'
  | 'sts-policy-invalid'
  | 'sts-webpki-invalid';

export interface PolicyDescription {
  type: PolicyType;
  /** The recipient domain the policy belongs to. */
  domain: string;
  /** RFC 8460 §4.4 policy-string: the policy's lines, or the TLSA records in presentation form. */
  strings: string[];
  /** The policy's MX patterns (sts), or the MX host the TLSA records are for (tlsa). */
  mxHosts: string[];
}

export interface SessionFailure {
  resultType: ResultType;
  sendingMtaIp?: string;
  receivingMxHostname?: string;
  receivingIp?: string;
  additionalInformation?: string;
}

const failureDetail = z.object({
  resultType: z.string(),
  sendingMtaIp: z.string().optional(),
  receivingMxHostname: z.string().optional(),
  receivingIp: z.string().optional(),
  additionalInformation: z.string().optional(),
  count: z.number().int(),
});
const policyCounts = z.object({
  policy: z.object({ type: z.enum(['sts', 'tlsa']), domain: z.string(), strings: z.array(z.string()), mxHosts: z.array(z.string()) }),
  successes: z.number().int(),
  failures: z.array(failureDetail),
});
const stateFile = z.object({ v: z.literal(1), periodStart: z.number().int(), policies: z.array(policyCounts) });

type PolicyCounts = z.infer<typeof policyCounts>;

export interface Period {
  start: number;
  end: number;
  policies: PolicyCounts[];
}

export interface TlsRptAggregator {
  success(policy: PolicyDescription): void;
  failure(policy: PolicyDescription, failure: SessionFailure): void;
  /** Periods that have ended by now (oldest first), removed from the aggregator. */
  takeEnded(): Period[];
  /** Writes the counts to the state file (also done on every takeEnded and by the caller's timer). */
  save(): void;
}

const MAX_POLICIES = 10_000;
const MAX_FAILURE_DETAILS = 100;

/** The start of the period `at` falls in: periods are aligned to the Unix epoch, so daily ones to UTC midnight. */
export function periodStartOf(at: number, intervalSeconds: number): number {
  const ms = intervalSeconds * 1000;
  return Math.floor(at / ms) * ms;
}

export function createTlsRptAggregator(options: { intervalSeconds: number; stateDir?: string; reportingId: string; logger: Logger; now?: () => number }): TlsRptAggregator {
  const now = options.now ?? Date.now;
  const intervalMs = options.intervalSeconds * 1000;
  const file = options.stateDir ? join(options.stateDir, `tls-rpt-${options.reportingId.replace(/[^A-Za-z0-9._-]/g, '_')}.json`) : undefined;
  let writable = file !== undefined;
  let periodStart = periodStartOf(now(), options.intervalSeconds);
  let counts = new Map<string, PolicyCounts>();
  /** Periods that ended, waiting to be taken. */
  const ended: Period[] = [];

  if (file) {
    try {
      const saved = stateFile.parse(JSON.parse(readFileSync(file, 'utf8')));
      const restored = new Map(saved.policies.map((p) => [keyOf(p.policy), p]));
      if (saved.periodStart === periodStart) counts = restored;
      else if (saved.policies.length > 0) ended.push({ start: saved.periodStart, end: saved.periodStart + intervalMs, policies: saved.policies });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT') options.logger.warn({ event: 'tls_rpt_state_unreadable', file, reason: code ?? (err as Error).message }, 'TLS-RPT counts start from zero');
    }
  }

  function keyOf(policy: PolicyDescription): string {
    return [policy.type, policy.domain, policy.strings.join('\n'), policy.mxHosts.join(',')].join('\0');
  }

  function roll(): void {
    const current = periodStartOf(now(), options.intervalSeconds);
    if (current === periodStart) return;
    if (counts.size > 0) ended.push({ start: periodStart, end: periodStart + intervalMs, policies: [...counts.values()] });
    counts = new Map();
    periodStart = current;
  }

  function entry(policy: PolicyDescription): PolicyCounts | undefined {
    roll();
    const key = keyOf(policy);
    let found = counts.get(key);
    if (!found) {
      if (counts.size >= MAX_POLICIES) return undefined;
      found = { policy: { ...policy, domain: policy.domain.toLowerCase() }, successes: 0, failures: [] };
      counts.set(key, found);
    }
    return found;
  }

  function save(): void {
    if (!file || !writable) return;
    try {
      writeStateFile(options.stateDir!, file, JSON.stringify({ v: 1, periodStart, policies: [...counts.values()] }));
    } catch (err) {
      writable = false;
      options.logger.warn({ event: 'tls_rpt_state_unwritable', file, reason: (err as NodeJS.ErrnoException).code ?? (err as Error).message }, 'TLS-RPT counts are kept in memory only');
    }
  }

  return {
    success(policy) {
      const found = entry(policy);
      if (found) found.successes++;
    },
    failure(policy, failure) {
      const found = entry(policy);
      if (!found) return;
      const same = found.failures.find(
        (f) =>
          f.resultType === failure.resultType &&
          f.sendingMtaIp === failure.sendingMtaIp &&
          f.receivingMxHostname === failure.receivingMxHostname &&
          f.receivingIp === failure.receivingIp &&
          f.additionalInformation === failure.additionalInformation,
      );
      if (same) same.count++;
      else if (found.failures.length < MAX_FAILURE_DETAILS) found.failures.push({ ...failure, count: 1 });
      else found.failures[found.failures.length - 1]!.count++;
    },
    takeEnded() {
      roll();
      const taken = ended.splice(0);
      save();
      return taken;
    },
    save,
  };
}
