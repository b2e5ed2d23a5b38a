import type { ConnectionOptions } from 'node:tls';
import { isIP } from 'node:net';
import type { Verdict } from './classify.ts';

/**
 * TLS towards receiving servers, per destination domain, in Postfix's terms:
 *  - none:    never STARTTLS;
 *  - may:     STARTTLS when offered, any certificate (RFC 7435 opportunistic security);
 *             a host whose handshake fails is remembered and spoken to in plaintext;
 *  - encrypt: STARTTLS required, any certificate; no TLS means no delivery (deferred);
 *  - verify:  STARTTLS required and the certificate must chain to a trusted CA and name
 *             the MX host.
 */
export const TLS_MODES = ['none', 'may', 'encrypt', 'verify'] as const;
export type TlsMode = (typeof TLS_MODES)[number];

export interface TlsPolicySettings {
  /** Mode for domains not listed. */
  policy: TlsMode;
  /** Recipient domain (lower case) -> mode. */
  domains: Readonly<Record<string, TlsMode>>;
  /** Trust anchors for `verify` (PEM); default: Node's bundled Mozilla CAs. */
  ca?: Buffer;
  /** How long a host whose TLS handshake failed is spoken to in plaintext (under `may`). */
  brokenHostMemoryMs: number;
}

export function tlsModeFor(settings: Pick<TlsPolicySettings, 'policy' | 'domains'>, domain: string): TlsMode {
  return settings.domains[domain.toLowerCase()] ?? settings.policy;
}

/** nodemailer SMTPConnection options for one connection. `plaintext`: a `may` host remembered as broken. */
export function connectionTlsOptions(
  mode: TlsMode,
  mxName: string,
  settings: Pick<TlsPolicySettings, 'ca'>,
  plaintext: boolean,
): { ignoreTLS: boolean; requireTLS: boolean; opportunisticTLS: boolean; tls: ConnectionOptions } {
  // SNI and, under verify, the name the certificate must carry: the MX host name, never an IP literal.
  const servername = isIP(mxName) === 0 ? { servername: mxName } : {};
  switch (mode) {
    case 'none':
      return { ignoreTLS: true, requireTLS: false, opportunisticTLS: false, tls: {} };
    case 'may':
      // An unverifiable certificate still beats plaintext; a 4xx/5xx to STARTTLS goes on in plaintext.
      return { ignoreTLS: plaintext, requireTLS: false, opportunisticTLS: true, tls: { rejectUnauthorized: false, ...servername } };
    case 'encrypt':
      return { ignoreTLS: false, requireTLS: true, opportunisticTLS: false, tls: { rejectUnauthorized: false, ...servername } };
    case 'verify':
      return {
        ignoreTLS: false,
        requireTLS: true,
        opportunisticTLS: false,
        // For an IP literal (a route) Node checks the certificate against the address itself.
        tls: { rejectUnauthorized: true, ...servername, ...(settings.ca ? { ca: settings.ca } : {}) },
      };
  }
}

export function isTlsFailure(err: unknown): boolean {
  const e = err as { code?: unknown; command?: unknown; timeoutType?: unknown; tlsHandshake?: unknown };
  return e?.code === 'ETLS' || e?.command === 'STARTTLS' || e?.timeoutType === 'UPGRADE_TIMEOUT' || e?.tlsHandshake === true;
}

/** The reply-like text of a nodemailer TLS failure, for the reason we record. */
function failureDetail(err: unknown): string {
  const e = err as { response?: unknown; message?: unknown };
  if (typeof e?.response === 'string' && e.response.length > 0) return `STARTTLS answered: ${e.response}`;
  return typeof e?.message === 'string' ? e.message : String(err);
}

/**
 * Under encrypt/verify a failed or missing STARTTLS is never the recipient's fault, and
 * never a reason to go on in plaintext: the recipients are deferred with the policy named.
 * RFC 3463/5248: X.7.10 encryption needed, X.7.5 cryptographic failure (the certificate).
 */
export function tlsPolicyVerdict(mode: 'encrypt' | 'verify', domain: string, mxName: string, err: unknown): Verdict {
  const detail = failureDetail(err);
  const certificate = /certificate|self[- ]signed|issuer|altnames|hostname/i.test(detail);
  const enhanced = certificate ? '4.7.5' : '4.7.10';
  const what = certificate ? `the certificate of ${mxName} could not be verified` : `${mxName} did not complete STARTTLS`;
  return {
    outcome: 'deferred',
    greylisted: false,
    responseCode: 451,
    enhancedCode: enhanced,
    response: `451 ${enhanced} TLS policy ${mode} for ${domain}: ${what} (${detail})`,
  };
}

/** Hosts (IP addresses) whose TLS handshake failed, and until when they get plaintext. */
export class BrokenTlsHosts {
  private readonly until = new Map<string, number>();
  constructor(
    private readonly memoryMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  has(address: string): boolean {
    const until = this.until.get(address);
    if (until === undefined) return false;
    if (until > this.now()) return true;
    this.until.delete(address);
    return false;
  }

  remember(address: string): void {
    this.until.set(address, this.now() + this.memoryMs);
  }
}

/** Protocol and cipher of a secured nodemailer connection, for the delivery log. */
export function tlsDetails(socket: unknown): { tlsVersion?: string; tlsCipher?: string } {
  const s = socket as { getProtocol?: () => string | null; getCipher?: () => { name?: string } | undefined } | null | undefined;
  if (typeof s?.getProtocol !== 'function') return {};
  const version = s.getProtocol() ?? undefined;
  const cipher = typeof s.getCipher === 'function' ? s.getCipher()?.name : undefined;
  return { ...(version ? { tlsVersion: version } : {}), ...(cipher ? { tlsCipher: cipher } : {}) };
}
