import { domainOf } from '../shared/address.ts';
import { keysFor, signMessage, type DkimKey, type DkimKeys } from './dkim.ts';
import { editHeaders, normalizeLineEnds } from './headers.ts';

/**
 * What the worker does to a message before it goes out: normalize line ends, edit the
 * headers, sign. One pure step (no I/O beyond the CPU work of signing) that the delivery
 * path calls for every message it sends, notices (bounces) included.
 */

export interface OutgoingSettings {
  /** The worker's name: generated Message-IDs of null-sender mail, the Received "by" clause. */
  hostname: string;
  dkim: DkimKeys;
  /**
   * The domain that signs mail with the null reverse-path (the worker's own notices):
   * the domain of the notices' From. Other mail is signed for its envelope sender's
   * domain, which the post office has checked the submitting host may use, so no host
   * can get a signature for another host's domain by writing its From: header.
   */
  nullSenderDomain?: string;
  /** Add a Received trace field. */
  received: boolean;
}

export interface OutgoingMessage {
  /** hedwig's message id. */
  messageId: string;
  /** Envelope sender; '' for the null reverse-path. */
  from: string;
  raw: Buffer;
  /** When hedwig accepted it (ms). */
  receivedAt: number;
  /** The submitting host's fqdn, for the Received trace field. */
  submittedBy?: string;
  now: number;
}

export type Prepared =
  | { ok: true; raw: Buffer; signedBy?: Array<{ domain: string; selector: string; algorithm: DkimKey['algorithm'] }> }
  | { ok: false; code: 'DKIM_SIGN_FAILED'; message: string };

export function signingDomainOf(from: string, settings: Pick<OutgoingSettings, 'hostname' | 'nullSenderDomain'>): string {
  return from === '' ? (settings.nullSenderDomain ?? settings.hostname) : domainOf(from);
}

/** The keys that sign mail from `from`: none, one, or an RSA and an Ed25519 key of the same domain. */
export function signingKeysFor(from: string, settings: OutgoingSettings): readonly DkimKey[] {
  if (from === '' && settings.nullSenderDomain === undefined) return [];
  return keysFor(settings.dkim, signingDomainOf(from, settings));
}

export async function prepareMessage(message: OutgoingMessage, settings: OutgoingSettings): Promise<Prepared> {
  const edited = editHeaders(normalizeLineEnds(message.raw), {
    messageId: message.messageId,
    messageIdDomain: signingDomainOf(message.from, settings),
    receivedAt: message.receivedAt,
    ...(settings.received ? { received: { submittedBy: message.submittedBy ?? 'unknown', by: settings.hostname, at: message.now } } : {}),
  });
  const keys = signingKeysFor(message.from, settings);
  if (keys.length === 0) return { ok: true, raw: edited };
  const signed = await signMessage(edited, keys);
  if (!signed.ok) return signed;
  return { ok: true, raw: signed.raw, signedBy: keys.map((key) => ({ domain: key.domain, selector: key.selector, algorithm: key.algorithm })) };
}
