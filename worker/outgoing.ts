import { domainOf } from '../shared/address.ts';
import type { Failed } from '../shared/errors.ts';
import { comparableDomain, fieldAddresses } from '../shared/header-addresses.ts';
import { domainAllowed } from '../shared/job.ts';
import { keysFor, signMessage, type DkimKey, type DkimKeys } from './dkim.ts';
import { editHeaders, normalizeLineEnds, splitMessage } from './headers.ts';
import { convertTo7bit } from './seven-bit.ts';

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
   * The domain that signs the worker's own notices (bounces, delay warnings): the domain
   * of the notices' From. Nothing else is signed for it (see signingKeysFor).
   */
  nullSenderDomain?: string;
  /** Add a Received trace field. */
  received: boolean;
}

/** The message as it was queued, with what preparing it needs to know. */
export interface QueuedMessage {
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
  /** The worker's own notice (job.notice): signed for nullSenderDomain. */
  notice?: boolean;
  /** The domains the submitting host may use (job.senderDomains); absent for jobs from before the field. */
  senderDomains?: readonly string[];
}

export type Prepared =
  | { ok: true; raw: Buffer; signedBy?: Array<{ domain: string; selector: string; algorithm: DkimKey['algorithm'] }> }
  | Failed<'DKIM_SIGN_FAILED' | 'EIGHTBIT_UNCONVERTIBLE'>;

export function signingDomainOf(from: string, settings: Pick<OutgoingSettings, 'hostname' | 'nullSenderDomain'>): string {
  return from === '' ? (settings.nullSenderDomain ?? settings.hostname) : domainOf(from);
}

/** The domain of the one author of a message (its single From mailbox), if it has exactly one. */
function authorDomain(raw: Buffer): string | undefined {
  const from = fieldAddresses(splitMessage(raw).fields, 'from');
  if (!from.ok || from.addresses.length !== 1 || !from.addresses[0]!.domain) return undefined;
  return comparableDomain(from.addresses[0]!.domain);
}

/**
 * The keys a message is signed with (none, one, or an RSA and an Ed25519 key of the same
 * domain), within what the submitting host may use (issue 12: no enrolled host may get a
 * signature for the operator's or another host's domain):
 * - a notice of the worker's own: the notices' domain;
 * - mail with an envelope sender: its domain (the post office checked that the host may
 *   use it), or a parent domain's keys only when the host may use the parent too;
 * - a client's null-sender mail: its From domain when the host may use it, else unsigned.
 */
export function signingKeysFor(message: Pick<QueuedMessage, 'from' | 'raw' | 'notice' | 'senderDomains'>, settings: OutgoingSettings): readonly DkimKey[] {
  if (message.notice) return settings.nullSenderDomain === undefined ? [] : keysFor(settings.dkim, settings.nullSenderDomain);
  const mayUse = (domain: string) => domainAllowed(domain, message.senderDomains);
  const domain = message.from === '' ? authorDomain(message.raw) : domainOf(message.from);
  if (domain === undefined || (message.from === '' && !mayUse(domain))) return [];
  return keysFor(settings.dkim, domain, mayUse);
}

/** The identity settings from the config: the worker's name, the keys, who signs the worker's notices (their From domain). */
export function outgoingSettingsFrom(config: { ehloName: string; noticesFrom: string; dkim: DkimKeys; received: boolean }): OutgoingSettings {
  return { hostname: config.ehloName, dkim: config.dkim, nullSenderDomain: domainOf(config.noticesFrom), received: config.received };
}

/**
 * `sevenBit`: for a server without 8BITMIME, 8-bit parts are re-encoded (seven-bit.ts)
 * after the header edits and before signing, so the signature covers what is sent.
 */
export async function prepareMessage(message: QueuedMessage, settings: OutgoingSettings, options: { sevenBit?: boolean } = {}): Promise<Prepared> {
  const headed = editHeaders(normalizeLineEnds(message.raw), {
    messageId: message.messageId,
    messageIdDomain: signingDomainOf(message.from, settings),
    receivedAt: message.receivedAt,
    ...(settings.received ? { received: { submittedBy: message.submittedBy ?? 'unknown', by: settings.hostname, at: message.now } } : {}),
  });
  const converted = options.sevenBit ? convertTo7bit(headed) : { ok: true as const, raw: headed };
  if (!converted.ok) return converted;
  const edited = converted.raw;
  const keys = signingKeysFor({ ...message, raw: edited }, settings);
  if (keys.length === 0) return { ok: true, raw: edited };
  const signed = await signMessage(edited, keys);
  if (!signed.ok) return signed;
  return { ok: true, raw: signed.raw, signedBy: keys.map((key) => ({ domain: key.domain, selector: key.selector, algorithm: key.algorithm })) };
}
