import type { Logger } from '../shared/logger.ts';
import { ownVerdict, type Verdict } from './classify.ts';
import { presentTlsa, verifyDane, type DaneLookup, type TlsaRecord } from './dane.ts';
import { stsPolicyStrings, type MtaSts, type StsPolicy } from './mta-sts.ts';
import type { SmtpFailure } from './smtp-session.ts';
import {
  connectionTlsOptions,
  createTlsPolicy,
  isTlsFailure,
  tlsFailureDetail,
  tlsPolicyVerdict,
  type TlsDecision,
  type TlsMode,
  type TlsPolicy,
  type TlsPolicySettings,
  type TlsSessionView,
  type TlsTarget,
} from './tls-policy.ts';
import type { PolicyDescription, ResultType, SessionFailure } from './tls-rpt.ts';

/**
 * The TLS-policy decision with the receiving domain's own policies on top of the
 * configured one (tls-policy.ts): DANE (RFC 7672) and MTA-STS (RFC 8461). They only ever
 * raise what the configuration asks, never lower it, so a stricter per-domain `tls`
 * setting still wins:
 *
 *  - DANE first (RFC 8461 §2: where validated TLSA records exist, DANE decides and MTA-STS
 *    does not override it): TLS is required (encrypt, or verify when configured) and after
 *    the handshake the certificate must match a TLSA record; a host whose TLSA lookup
 *    failed (bogus, SERVFAIL) is not used. Without validated TLSA records nothing changes.
 *  - MTA-STS `enforce`: only MX hosts the policy lists are used, with a verified certificate
 *    (verify, servername = the MX host); a failure defers the recipients, never plaintext.
 *    `testing`: delivery as configured, and what would have failed is reported.
 *
 * Every session under a policy counts for TLS-RPT (`report`): a success, or a failure with
 * its RFC 8460 result type. Static routes are the operator's choice: no policies there.
 */

export interface TransportSecurityOptions {
  settings: TlsPolicySettings;
  mtaSts?: MtaSts;
  dane?: DaneLookup;
  /** A session under a policy: success, or a failure (TLS-RPT, metrics). */
  report?: (policy: PolicyDescription, result: 'success' | SessionFailure) => void;
  logger: Logger;
  now?: () => number;
}

type Context =
  | { kind: 'dane'; records: TlsaRecord[]; usable: boolean; policy: PolicyDescription }
  | { kind: 'sts'; mode: 'enforce' | 'testing'; policy: PolicyDescription; mxListed: boolean };

const STRICTNESS: Record<TlsMode, number> = { none: 0, may: 1, encrypt: 2, verify: 3 };
const stricter = (a: TlsMode, b: TlsMode): TlsMode => (STRICTNESS[a] >= STRICTNESS[b] ? a : b);

/** RFC 8460 §4.3 result type of a TLS failure's text (nodemailer and OpenSSL messages). */
export function resultTypeOf(detail: string): ResultType {
  if (/CERT_HAS_EXPIRED|expired|not yet valid|CERT_NOT_YET_VALID/i.test(detail)) return 'certificate-expired';
  if (/ALTNAME|Hostname\/IP does not match|does not match certificate/i.test(detail)) return 'certificate-host-mismatch';
  if (/SELF_SIGNED|self[- ]signed|UNABLE_TO_(GET|VERIFY)|unable to (get|verify)|untrusted|issuer/i.test(detail)) return 'certificate-not-trusted';
  if (/STARTTLS|ETLS|initiating TLS/i.test(detail)) return 'starttls-not-supported';
  return 'validation-failure';
}

function stsDescription(policy: StsPolicy): PolicyDescription {
  return { type: 'sts', domain: policy.domain, strings: stsPolicyStrings(policy), mxHosts: policy.mx };
}

export function createTransportSecurity(options: TransportSecurityOptions): TlsPolicy {
  const base = createTlsPolicy(options.settings, options.now);
  const report = options.report ?? (() => {});

  function decision(mode: TlsMode, target: TlsTarget, context: Context): TlsDecision {
    return {
      mode,
      plaintext: false,
      options: connectionTlsOptions(mode, target.mxName, options.settings, false),
      // A session judged for one host's policy is only reused for the same host and policy.
      key: `${mode}|tls|${target.mxName}|${context.kind}${context.kind === 'sts' ? `:${context.mode}` : ''}`,
      context,
    };
  }

  function failureOf(target: TlsTarget, session: TlsSessionView | undefined, resultType: ResultType, additionalInformation?: string): SessionFailure {
    return {
      resultType,
      ...(session?.localAddress ? { sendingMtaIp: session.localAddress } : {}),
      receivingMxHostname: target.mxName,
      receivingIp: target.address,
      ...(additionalInformation ? { additionalInformation: additionalInformation.slice(0, 300) } : {}),
    };
  }

  async function daneDecision(target: TlsTarget, configured: TlsMode): Promise<{ decision: TlsDecision } | { refuse: Verdict } | undefined> {
    if (!options.dane) return undefined;
    const port = target.port ?? 25;
    const requirement = await options.dane.requirementFor(target.domain, target.mxName, port, target.origin === 'mx');
    const tlsaName = `_${port}._tcp.${target.mxName}`;
    if (requirement.kind === 'failed') {
      report({ type: 'tlsa', domain: target.domain, strings: [], mxHosts: [target.mxName] }, failureOf(target, undefined, 'dnssec-invalid', requirement.message));
      return { refuse: ownVerdict('deferred', `DANE for ${target.domain}: ${requirement.message}; ${target.mxName} is not used`, { code: 451, enhanced: '4.7.5' }) };
    }
    if (requirement.kind === 'none') return undefined;
    const policy: PolicyDescription = { type: 'tlsa', domain: target.domain, strings: requirement.records.map((r) => presentTlsa(tlsaName, r)), mxHosts: [target.mxName] };
    // TLS is mandatory; the certificate is judged against the TLSA records after the handshake.
    return { decision: decision(configured === 'verify' ? 'verify' : 'encrypt', target, { kind: 'dane', records: requirement.records, usable: requirement.kind === 'match', policy }) };
  }

  return {
    async decide(target) {
      const configured = await base.decide(target);
      if (target.origin !== 'mx' && target.origin !== 'implicit') return configured;
      const dane = await daneDecision(target, configured.mode);
      if (dane && 'refuse' in dane) return { ...configured, refuse: dane.refuse };
      if (dane) return dane.decision;

      if (!options.mtaSts) return configured;
      const sts = await options.mtaSts.policyFor(target.domain);
      if (sts.kind === 'failed') {
        report({ type: 'sts', domain: target.domain, strings: [], mxHosts: [] }, failureOf(target, undefined, sts.resultType, sts.message));
        return configured;
      }
      if (sts.kind !== 'policy') return configured;
      const { policy } = sts;
      const description = stsDescription(policy);
      const mxListed = options.mtaSts.mxMatches(policy, target.mxName);
      if (policy.mode === 'enforce') {
        if (!mxListed) {
          report(description, failureOf(target, undefined, 'validation-failure', `${target.mxName} is not an MX host of the policy`));
          return {
            ...configured,
            refuse: ownVerdict('deferred', `MTA-STS policy enforce for ${target.domain}: ${target.mxName} is not among the policy's MX hosts (${policy.mx.join(', ')})`, { code: 451, enhanced: '4.7.5' }),
          };
        }
        return decision(stricter(configured.mode, 'verify'), target, { kind: 'sts', mode: 'enforce', policy: description, mxListed });
      }
      // testing: as configured; the session is judged afterwards and only reported.
      return { ...configured, key: `${configured.key}|sts:testing|${target.mxName}`, context: { kind: 'sts', mode: 'testing', policy: description, mxListed } satisfies Context };
    },

    afterHandshake(target, current, session) {
      const context = current.context as Context | undefined;
      if (!context) return { ok: true };
      if (context.kind === 'dane') {
        if (context.usable) {
          const verdict = verifyDane(session.peerCertificates(), context.records, target.mxName, (options.now ?? Date.now)());
          if (!verdict.ok) {
            report(context.policy, failureOf(target, session, verdict.resultType, verdict.message));
            return { ok: false, verdict: ownVerdict('deferred', `DANE for ${target.domain}: the certificate of ${target.mxName} matches no TLSA record (${verdict.message})`, { code: 451, enhanced: '4.7.5' }) };
          }
        }
        report(context.policy, 'success');
        return { ok: true };
      }
      if (context.mode === 'enforce') {
        report(context.policy, 'success');
        return { ok: true };
      }
      // testing: what enforce would have said, reported; the delivery goes on.
      if (current.plaintext) return { ok: true };
      const authorization = session.peerAuthorization();
      if (!context.mxListed) report(context.policy, failureOf(target, session, 'validation-failure', `${target.mxName} is not an MX host of the policy`));
      else if (!session.secure) report(context.policy, failureOf(target, session, 'starttls-not-supported'));
      else if (!authorization.authorized) report(context.policy, failureOf(target, session, resultTypeOf(authorization.error ?? ''), authorization.error));
      else report(context.policy, 'success');
      return { ok: true };
    },

    afterHandshakeFailure(target, current, err: SmtpFailure) {
      const next = base.afterHandshakeFailure(target, current, err);
      const context = current.context as Context | undefined;
      if (!context || !isTlsFailure(err)) return next;
      const detail = tlsFailureDetail(err);
      const failure = failureOf(target, undefined, resultTypeOf(`${err.code ?? ''} ${detail}`), detail);
      if (context.kind === 'dane') {
        report(context.policy, failure);
        return { verdict: tlsPolicyVerdict(current.mode === 'verify' ? 'verify' : 'encrypt', target.domain, target.mxName, err, 'DANE') };
      }
      if (context.mode === 'enforce') {
        report(context.policy, failure);
        return { verdict: tlsPolicyVerdict('verify', target.domain, target.mxName, err, 'MTA-STS policy enforce') };
      }
      if (!current.plaintext) report(context.policy, failure);
      return next;
    },
  };
}
