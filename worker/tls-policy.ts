import type { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import type { ConnectionOptions } from 'node:tls';
import { z } from 'zod';
import { domainName } from '../shared/job.ts';
import { classifyError, type Verdict } from './classify.ts';
import type { SessionOptions, SmtpFailure } from './smtp-session.ts';

/**
 * TLS towards receiving servers, per destination domain, in Postfix's terms:
 *  - none:    never STARTTLS;
 *  - may:     STARTTLS when offered, any certificate (RFC 7435 opportunistic security);
 *             a host whose handshake fails is remembered and spoken to in plaintext;
 *  - encrypt: STARTTLS required, any certificate; no TLS means no delivery (deferred);
 *  - verify:  STARTTLS required and the certificate must chain to a trusted CA and name
 *             the MX host.
 *
 * The delivery path asks this module twice per connection (connection.ts): `decide`
 * before it opens one (the mode and the STARTTLS options), and `afterHandshakeFailure`
 * when the handshake failed (try again in plaintext, or the recipients' verdict). A
 * policy source such as MTA-STS or DANE plugs in there.
 */
export const TLS_MODES = ['none', 'may', 'encrypt', 'verify'] as const;
export type TlsMode = (typeof TLS_MODES)[number];

/** `tls`: the policy; `caFile` is read at start-up (loadTrustAnchors), not while parsing. */
export const tlsSchema = z
  .object({
    policy: z.enum(TLS_MODES).default('may'),
    /** Recipient domain -> none | may | encrypt | verify. */
    domains: z.record(domainName, z.enum(TLS_MODES)).default({}),
    /** PEM trust anchors for `verify`; default: Node's bundled Mozilla CA list. */
    caFile: z.string().min(1).optional(),
    brokenHostMemorySeconds: z.number().int().nonnegative().default(3600),
  })
  .strict()
  .prefault({});
export type TlsConfig = z.infer<typeof tlsSchema>;

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

/** The PEM file of `tls.caFile`, checked; a problem names the key. */
export function loadTrustAnchors(caFile: string): { ok: true; ca: Buffer } | { ok: false; message: string } {
  let ca: Buffer;
  try {
    ca = readFileSync(caFile);
  } catch (err) {
    return { ok: false, message: `cannot read ${caFile}: ${(err as NodeJS.ErrnoException).code ?? String(err)}` };
  }
  if (!ca.includes('-----BEGIN CERTIFICATE-----')) return { ok: false, message: `${caFile} holds no PEM certificate` };
  return { ok: true, ca };
}

export function tlsPolicySettingsFrom(config: TlsConfig, ca: Buffer | undefined): TlsPolicySettings {
  return { policy: config.policy, domains: config.domains, ...(ca ? { ca } : {}), brokenHostMemoryMs: config.brokenHostMemorySeconds * 1000 };
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
export function tlsPolicyVerdict(mode: 'encrypt' | 'verify', domain: string, mxName: string, err: unknown, policy: string = `TLS policy ${mode}`): Verdict {
  const detail = failureDetail(err);
  const certificate = isCertificateFailure(detail);
  const enhanced = certificate ? '4.7.5' : '4.7.10';
  const what = certificate ? `the certificate of ${mxName} could not be verified` : `${mxName} did not complete STARTTLS`;
  return {
    outcome: 'deferred',
    greylisted: false,
    responseCode: 451,
    enhancedCode: enhanced,
    response: `451 ${enhanced} ${policy} for ${domain}: ${what} (${detail})`,
  };
}

/** Whether a TLS failure's text is about the certificate (rather than STARTTLS itself). */
export function isCertificateFailure(detail: string): boolean {
  return /certificate|self[- ]signed|issuer|altnames|hostname|CERT_/i.test(detail);
}

/** The text tlsPolicyVerdict quotes, for callers that classify a failure themselves. */
export function tlsFailureDetail(err: unknown): string {
  return failureDetail(err);
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

/** How one connection to one MX address goes about TLS. */
export interface TlsDecision {
  mode: TlsMode;
  /** A `may` host whose TLS is known to be broken: no STARTTLS. */
  plaintext: boolean;
  /** What the session is opened with. */
  options: SessionOptions['tls'];
  /** Part of the connection pool key: connections made under another decision are not reused. */
  key: string;
  /** Do not connect to this host at all (an MX host an MTA-STS policy does not list, a failed DANE lookup): the verdict says why. */
  refuse?: Verdict;
  /** What a policy source (transport-security.ts) needs to judge the session after the handshake. */
  context?: unknown;
}

export interface TlsTarget {
  /** Recipient domain. */
  domain: string;
  mxName: string;
  address: string;
  /** The server's port (DANE's TLSA name is `_<port>._tcp.<mx>`); default 25. */
  port?: number;
  /** Where the host came from (route.ts); MTA-STS and DANE apply to `mx` and `implicit` hosts. */
  origin?: 'mx' | 'implicit' | 'route';
}

/** What the TLS policy may look at in a session whose handshake succeeded. */
export interface TlsSessionView {
  secure: boolean;
  /** The source address the receiver sees. */
  localAddress?: string | undefined;
  peerCertificates(): X509Certificate[];
  peerAuthorization(): { authorized: boolean; error?: string };
}

export interface TlsPolicy {
  decide(target: TlsTarget): Promise<TlsDecision>;
  /** After a failed handshake: open again with `retry` (plaintext under `may`; `failure` says what went wrong), or stop with `verdict`. */
  afterHandshakeFailure(target: TlsTarget, decision: TlsDecision, err: SmtpFailure): { retry: TlsDecision; failure: Verdict } | { verdict: Verdict };
  /** After a handshake that succeeded, before any mail: a `verdict` closes the session unused (DANE: no TLSA record matches). */
  afterHandshake?(target: TlsTarget, decision: TlsDecision, session: TlsSessionView): { ok: true } | { ok: false; verdict: Verdict };
}

export function createTlsPolicy(settings: TlsPolicySettings, now: () => number = Date.now): TlsPolicy {
  const broken = new BrokenTlsHosts(settings.brokenHostMemoryMs, now);
  const decision = (mode: TlsMode, target: TlsTarget, plaintext: boolean): TlsDecision => ({
    mode,
    plaintext,
    options: connectionTlsOptions(mode, target.mxName, settings, plaintext),
    // Under verify the certificate is checked against the MX name, so the name is part of what must match.
    key: `${mode}|${plaintext ? 'plain' : 'tls'}|${mode === 'verify' ? target.mxName : ''}`,
  });
  return {
    async decide(target) {
      const mode = tlsModeFor(settings, target.domain);
      return decision(mode, target, mode === 'may' && broken.has(target.address));
    },
    afterHandshakeFailure(target, current, err) {
      if (current.mode === 'may' && !current.plaintext && isTlsFailure(err)) {
        // Remember the broken TLS and retry this address in plaintext right away.
        broken.remember(target.address);
        return { retry: decision('may', target, true), failure: classifyError(err) };
      }
      if ((current.mode === 'encrypt' || current.mode === 'verify') && isTlsFailure(err)) {
        return { verdict: tlsPolicyVerdict(current.mode, target.domain, target.mxName, err) };
      }
      return { verdict: classifyError(err) };
    },
  };
}
