import { randomUUID } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import type { Period } from './tls-rpt.ts';

/**
 * The TLS-RPT report (RFC 8460) made from one ended period of counts (`tls-rpt.ts`): the JSON
 * of §4 for one policy domain, gzipped, its §5.3 file name and mail form, and the `_smtp._tls`
 * TXT record that says where a domain wants it.
 */

export interface ReportIdentity {
  organizationName: string;
  contactInfo: string;
  /** The submitter's host name, for the mail subject and the file name (RFC 8460 §5.3). */
  submitter: string;
}

/** The RFC 8460 §4 report of one policy domain for one period. */
export function buildReport(domain: string, period: Period, identity: ReportIdentity, reportId: string = `${new Date(period.start).toISOString().slice(0, 10)}.${randomUUID()}@${identity.submitter}`) {
  const iso = (ms: number) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
  return {
    'organization-name': identity.organizationName,
    'date-range': { 'start-datetime': iso(period.start), 'end-datetime': iso(period.end - 1000) },
    'contact-info': identity.contactInfo,
    'report-id': reportId,
    policies: period.policies
      .filter((p) => p.policy.domain === domain)
      .map((p) => ({
        policy: {
          'policy-type': p.policy.type,
          'policy-string': p.policy.strings,
          'policy-domain': p.policy.domain,
          ...(p.policy.mxHosts.length > 0 ? { 'mx-host': p.policy.mxHosts } : {}),
        },
        summary: { 'total-successful-session-count': p.successes, 'total-failure-session-count': p.failures.reduce((n, f) => n + f.count, 0) },
        ...(p.failures.length > 0
          ? {
              'failure-details': p.failures.map((f) => ({
                'result-type': f.resultType,
                ...(f.sendingMtaIp ? { 'sending-mta-ip': f.sendingMtaIp } : {}),
                ...(f.receivingMxHostname ? { 'receiving-mx-hostname': f.receivingMxHostname } : {}),
                ...(f.receivingIp ? { 'receiving-ip': f.receivingIp } : {}),
                'failed-session-count': f.count,
                ...(f.additionalInformation ? { 'additional-information': f.additionalInformation } : {}),
              })),
            }
          : {}),
      })),
  };
}

export type TlsReport = ReturnType<typeof buildReport>;

export function gzipReport(report: TlsReport): Buffer {
  return gzipSync(Buffer.from(JSON.stringify(report)));
}

/** RFC 8460 §5.3 file name: submitter!policy-domain!begin!end!unique-id.json.gz (Unix seconds). */
export function reportFileName(domain: string, period: Period, identity: ReportIdentity, unique: string): string {
  return `${identity.submitter}!${domain}!${Math.floor(period.start / 1000)}!${Math.floor(period.end / 1000)}!${unique}.json.gz`;
}

/** The report as a mail message (RFC 8460 §5.3): multipart/report; report-type="tlsrpt" with the gzip attachment. CRLF line ends. */
export function reportMessage(options: { domain: string; period: Period; identity: ReportIdentity; report: TlsReport; gzipped: Buffer; from: string; to: string; now: number; messageId: string }): Buffer {
  const { domain, identity, report } = options;
  const boundary = `tlsrpt-${randomUUID()}`;
  const base64 = options.gzipped.toString('base64').replace(/.{1,76}/g, '$&\r\n');
  const name = reportFileName(domain, options.period, identity, report['report-id'].replace(/[^A-Za-z0-9.-]/g, '_').slice(0, 64));
  const lines = [
    `From: ${options.from}`,
    `To: ${options.to}`,
    `Date: ${new Date(options.now).toUTCString().replace('GMT', '+0000')}`,
    `Subject: Report Domain: ${domain} Submitter: ${identity.submitter} Report-ID: <${report['report-id']}>`,
    `Message-ID: <${options.messageId}>`,
    `TLS-Report-Domain: ${domain}`,
    `TLS-Report-Submitter: ${identity.submitter}`,
    'Auto-Submitted: auto-generated',
    'MIME-Version: 1.0',
    `Content-Type: multipart/report; report-type="tlsrpt"; boundary="${boundary}"`,
    '',
    `--${boundary}`,
    'Content-Type: text/plain; charset=us-ascii',
    '',
    `This is an aggregate TLS report (RFC 8460) from ${identity.organizationName} for ${domain},`,
    `${report['date-range']['start-datetime']} to ${report['date-range']['end-datetime']}.`,
    '',
    `--${boundary}`,
    'Content-Type: application/tlsrpt+gzip',
    'Content-Transfer-Encoding: base64',
    `Content-Disposition: attachment; filename="${name}"`,
    '',
    base64.trimEnd(),
    '',
    `--${boundary}--`,
    '',
  ];
  return Buffer.from(lines.join('\r\n'), 'latin1');
}

/** `rua=` of a `_smtp._tls` TXT record (RFC 8460 §3): mailto: and https: URIs; null when the record is not TLSRPTv1. */
export function parseTlsRptRecord(txt: string): { mailto: string[]; https: string[] } | null {
  const fields = txt.split(';').map((f) => f.trim());
  if (fields[0] !== 'v=TLSRPTv1') return null;
  const rua = fields.find((f) => /^rua\s*=/i.test(f));
  if (!rua) return null;
  const uris = rua
    .slice(rua.indexOf('=') + 1)
    .split(',')
    .map((u) => u.trim())
    .filter(Boolean);
  const mailto = uris.filter((u) => /^mailto:/i.test(u)).map((u) => decodeURIComponent(u.slice(7).split('?')[0]!));
  const https = uris.filter((u) => /^https:\/\//i.test(u));
  return { mailto, https };
}
