import type { Logger } from '../shared/logger.ts';
import { ownVerdict, type Verdict } from './classify.ts';
import { asksToBackOff, type LimitBucket, type Limiter } from './limits.ts';
import type { ConnectionPool, PooledConnection } from './pool.ts';
import type { MxHost } from './route.ts';
import { SmtpSession, type SessionOptions, type SmtpFailure } from './smtp-session.ts';
import type { SessionTimeouts } from './smtp-timeouts.ts';
import type { Source } from './source-ip.ts';
import type { TlsDecision, TlsPolicy, TlsTarget } from './tls-policy.ts';

/**
 * A delivery step: a session with one MX address that is ready for a transaction. A kept
 * idle one from the pool when there is one for the same server, source and TLS decision;
 * otherwise a connection slot (limits.ts), a new session and its handshake, under the TLS
 * policy's decision (tls-policy.ts), which may ask to try once more in plaintext (`may`).
 */

export interface ConnectionTarget {
  /** Recipient domain (the TLS policy is per domain). */
  domain: string;
  host: MxHost;
  address: string;
  source: Source;
  bucket: LimitBucket;
}

export type Connection =
  | { ok: true; pooled: PooledConnection; reused: boolean; tls: TlsDecision; backOff?: Verdict }
  | {
      ok: false;
      verdict: Verdict;
      /** A limit said no: every other address of this destination would say the same. */
      refused: boolean;
      /** The server asked us to slow down (a 421 greeting, "too many connections"). */
      backOff?: Verdict;
    };

export interface Connector {
  /** `reuse: false` after a kept connection turned out closed: open a new one. Aborting `signal` closes the session being set up. */
  connect(target: ConnectionTarget, options: { reuse: boolean; signal?: AbortSignal }): Promise<Connection>;
}

export interface ConnectorOptions {
  pool: ConnectionPool;
  tlsPolicy: TlsPolicy;
  limiter?: Limiter;
  timeouts: SessionTimeouts;
  logger: Logger;
  /** Every TCP connection attempt (metrics). */
  onConnection?: () => void;
  /** Default: a new SmtpSession (unit tests pass a fake). */
  openSession?: (options: SessionOptions) => SmtpSession;
}

export const SHUTDOWN_VERDICT: Verdict = ownVerdict('deferred', 'delivery interrupted by shutdown');
const FREE_SLOT = { ok: true, release: () => {} } as const;

function poolKey(target: ConnectionTarget, tls: TlsDecision): string {
  return [target.address, target.host.port, target.source.localAddress ?? '', target.source.ehloName, tls.key].join('|');
}

export function createConnector(options: ConnectorOptions): Connector {
  const { pool, tlsPolicy, limiter } = options;
  const openSession = options.openSession ?? ((sessionOptions: SessionOptions) => new SmtpSession(sessionOptions));

  return {
    async connect(target, { reuse, signal }) {
      const { host, address, source, bucket } = target;
      const tlsTarget: TlsTarget = { domain: target.domain, mxName: host.name, address, port: host.port, ...(host.origin ? { origin: host.origin } : {}) };
      let decision = await tlsPolicy.decide(tlsTarget);
      if (decision.refuse) {
        // A policy rules this host out before any connection (MTA-STS enforce, a failed DANE lookup): try the next one.
        options.logger.info({ event: 'attempt', mx: host.name, address, port: host.port, tlsPolicy: decision.mode, stage: 'tls-policy', outcome: decision.refuse.outcome, response: decision.refuse.response });
        return { ok: false, verdict: decision.refuse, refused: false };
      }
      let backOff: Verdict | undefined;
      for (;;) {
        if (signal?.aborted) return { ok: false, verdict: SHUTDOWN_VERDICT, refused: false, ...(backOff ? { backOff } : {}) };
        const key = poolKey(target, decision);
        const idle = reuse ? pool.take(key) : undefined;
        if (idle) return { ok: true, pooled: idle, reused: true, tls: decision };

        const slot = limiter ? await limiter.connectionSlot(bucket, signal, () => pool.closeIdle(bucket.key)) : FREE_SLOT;
        if (!slot.ok) return { ok: false, verdict: slot.verdict, refused: true, ...(backOff ? { backOff } : {}) };
        options.onConnection?.();
        const session = openSession({
          address,
          port: host.port,
          ehloName: source.ehloName,
          ...(source.localAddress ? { localAddress: source.localAddress } : {}),
          tls: decision.options,
          timeouts: options.timeouts,
        });
        const pooled = pool.track(session, key, bucket.key, slot.release);
        const stopClosing = session.closeOnAbort(signal);
        try {
          await session.handshake();
          const judged = tlsPolicy.afterHandshake?.(tlsTarget, decision, session) ?? { ok: true as const };
          if (!judged.ok) {
            // The session is secure but not with this server's certificate (DANE): never used for mail.
            pool.discard(pooled, 'quit');
            options.logger.info({ event: 'attempt', mx: host.name, address, port: host.port, sourceIp: session.localAddress ?? source.localAddress, tlsPolicy: decision.mode, ...session.tlsDetails(), stage: 'tls-policy', outcome: judged.verdict.outcome, response: judged.verdict.response });
            return { ok: false, verdict: judged.verdict, refused: false, ...(backOff ? { backOff } : {}) };
          }
          return { ok: true, pooled, reused: false, tls: decision, ...(backOff ? { backOff } : {}) };
        } catch (err) {
          pool.discard(pooled, 'close');
          const next = tlsPolicy.afterHandshakeFailure(tlsTarget, decision, err as SmtpFailure);
          const verdict = 'verdict' in next ? next.verdict : next.failure;
          options.logger.info({
            event: 'attempt',
            mx: host.name,
            address,
            port: host.port,
            sourceIp: source.localAddress,
            tlsPolicy: decision.mode,
            stage: 'connect',
            outcome: verdict.outcome,
            response: verdict.response,
          });
          if (asksToBackOff(verdict.response)) backOff = verdict;
          if ('retry' in next) {
            decision = next.retry;
            continue;
          }
          return { ok: false, verdict, refused: false, ...(backOff ? { backOff } : {}) };
        } finally {
          stopClosing();
        }
      }
    },
  };
}
