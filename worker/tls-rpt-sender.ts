import { randomUUID } from 'node:crypto';
import { request } from 'node:https';
import type { LookupFunction } from 'node:net';
import { domainOf } from '../shared/address.ts';
import type { OutboundJob } from '../shared/job.ts';
import type { Logger } from '../shared/logger.ts';
import type { Period, TlsRptAggregator } from './tls-rpt.ts';
import { buildReport, gzipReport, parseTlsRptRecord, reportMessage, type ReportIdentity } from './tls-rpt-report.ts';

/**
 * Sends the aggregate reports of ended periods to every address a policy domain publishes in
 * its `_smtp._tls` TXT record (RFC 8460 §3): `https:` URIs get the gzipped JSON POSTed as
 * `application/tlsrpt+gzip` (§5.4), `mailto:` URIs get a report message queued in the
 * outbound tube like any other mail (§5.3), so the worker's own delivery (DKIM signing,
 * retries, TLS policy) carries it. Reports go out with the null reverse-path: a report that
 * cannot be delivered never causes another message. One attempt per HTTPS URI: a failed
 * POST is logged and counted (RFC 8460 lets senders give up).
 */

export interface TlsRptSenderOptions {
  aggregator: TlsRptAggregator;
  resolveTxt: (name: string) => Promise<string[][]>;
  identity: ReportIdentity;
  /** From: of report mail (its domain's DKIM key signs it). */
  from: string;
  /** Puts a job into the outbound tube; resolves with its id. */
  queue: (job: OutboundJob) => Promise<string>;
  lookup: LookupFunction;
  ca?: Buffer;
  timeoutMs: number;
  logger: Logger;
  onReport?: (via: 'mailto' | 'https', result: 'sent' | 'failed') => void;
  now?: () => number;
}

function post(url: string, body: Buffer, options: TlsRptSenderOptions): Promise<{ ok: true } | { ok: false; reason: string }> {
  return new Promise((resolve) => {
    let settled = false;
    const done = (result: { ok: true } | { ok: false; reason: string }) => {
      if (!settled) {
        settled = true;
        clearTimeout(timer);
        req.destroy();
        resolve(result);
      }
    };
    const target = new URL(url);
    const req = request(
      target,
      {
        method: 'POST',
        headers: { 'content-type': 'application/tlsrpt+gzip', 'content-length': body.length, 'user-agent': 'hedwig (TLS-RPT)' },
        lookup: options.lookup,
        ...(options.ca ? { ca: options.ca } : {}),
        agent: false,
      },
      (res) => {
        res.resume();
        res.on('end', () => done(res.statusCode !== undefined && res.statusCode >= 200 && res.statusCode < 300 ? { ok: true } : { ok: false, reason: `HTTP ${res.statusCode}` }));
      },
    );
    const timer = setTimeout(() => done({ ok: false, reason: `no answer within ${options.timeoutMs} ms` }), options.timeoutMs);
    req.on('error', (err) => done({ ok: false, reason: err.message }));
    req.end(body);
  });
}

async function reportAddresses(domain: string, options: TlsRptSenderOptions): Promise<{ mailto: string[]; https: string[] } | null> {
  let records: string[][];
  try {
    records = await options.resolveTxt(`_smtp._tls.${domain}`);
  } catch {
    return null;
  }
  // RFC 8460 §3: exactly one TLSRPTv1 record, else no reporting.
  const parsed = records.map((r) => parseTlsRptRecord(r.join(''))).filter((r) => r !== null);
  return parsed.length === 1 ? parsed[0]! : null;
}

export async function sendPeriod(period: Period, options: TlsRptSenderOptions): Promise<void> {
  const now = options.now ?? Date.now;
  const log = options.logger;
  const domains = [...new Set(period.policies.map((p) => p.policy.domain))];
  for (const domain of domains) {
    const addresses = await reportAddresses(domain, options);
    if (!addresses || addresses.mailto.length + addresses.https.length === 0) {
      log.debug({ event: 'tls_rpt_no_record', domain }, 'no _smtp._tls record: no report');
      continue;
    }
    const report = buildReport(domain, period, options.identity);
    const gzipped = gzipReport(report);
    for (const url of addresses.https) {
      const result = await post(url, gzipped, options);
      options.onReport?.('https', result.ok ? 'sent' : 'failed');
      if (result.ok) log.info({ event: 'tls_rpt_sent', domain, via: 'https', url, reportId: report['report-id'] }, 'TLS report POSTed');
      else log.warn({ event: 'tls_rpt_failed', domain, via: 'https', url, reportId: report['report-id'], reason: result.reason }, 'TLS report not accepted');
    }
    for (const to of addresses.mailto) {
      const messageId = `${randomUUID()}@${options.identity.submitter}`;
      const message = reportMessage({ domain, period, identity: options.identity, report, gzipped, from: options.from, to, now: now(), messageId });
      const job: OutboundJob = {
        v: 1,
        id: randomUUID(),
        fqdn: options.identity.submitter,
        mailfrom: '',
        rcpttos: [to],
        data: message.toString('base64'),
        receivedAt: now(),
        attempts: 0,
        // Null-sender mail is signed for its From domain when listed here (worker/outgoing.ts).
        senderDomains: [domainOf(options.from)],
      };
      try {
        const jobId = await options.queue(job);
        options.onReport?.('mailto', 'sent');
        log.info({ event: 'tls_rpt_sent', domain, via: 'mailto', to, reportId: report['report-id'], messageId: job.id, jobId }, 'TLS report queued');
      } catch (err) {
        options.onReport?.('mailto', 'failed');
        log.warn({ event: 'tls_rpt_failed', domain, via: 'mailto', to, reportId: report['report-id'], reason: (err as Error).message }, 'TLS report not queued');
      }
    }
  }
}

export interface TlsRptSender {
  /** Reports every period that has ended (and saves the counts). */
  flush(): Promise<void>;
  stop(): Promise<void>;
}

/** Checks every `checkMs` (and at start, for a period that ended while the worker was down) whether a period ended. */
export function startTlsRptSender(options: TlsRptSenderOptions & { checkMs: number }): TlsRptSender {
  let running: Promise<void> = Promise.resolve();
  const flush = () => {
    running = running.then(async () => {
      for (const period of options.aggregator.takeEnded()) await sendPeriod(period, options);
    }).catch((err: unknown) => options.logger.error({ event: 'tls_rpt_failed', reason: (err as Error).message }, 'TLS reporting failed'));
    return running;
  };
  const timer = setInterval(() => {
    options.aggregator.save();
    void flush();
  }, options.checkMs);
  timer.unref();
  void flush();
  return {
    flush,
    async stop() {
      clearInterval(timer);
      await running;
      options.aggregator.save();
    },
  };
}
