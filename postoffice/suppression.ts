import { randomUUID } from 'node:crypto';
import { domainOf } from '../shared/address.ts';
import type { BeanstalkClient } from '../shared/beanstalk.ts';
import { errorCode } from '../shared/errors.ts';
import type { Logger } from '../shared/logger.ts';
import type { SuppressionConfig } from '../shared/store/config.ts';
import type { StoreHealth } from '../shared/store/health.ts';
import { normalizeAddress, type Store, type SuppressionEntry } from '../shared/store/store.ts';

/**
 * The submission side of the suppression list: which recipients of a submission are on it
 * (unless the host or the sender domain is exempt). A store that does not answer lets every
 * recipient through: mail keeps flowing, and the `store_unavailable` warning says why a
 * suppressed address may get mail meanwhile.
 */
export async function suppressedAmong(
  recipients: readonly string[],
  context: { fqdn: string; mailfrom: string; now: number },
  deps: { store: Store | undefined; config: SuppressionConfig; health: StoreHealth | undefined },
): Promise<Map<string, SuppressionEntry>> {
  const { store, config, health } = deps;
  const found = new Map<string, SuppressionEntry>();
  if (!store || !config.enabled || config.exemptHosts.includes(context.fqdn.toLowerCase())) return found;
  if (context.mailfrom !== '' && config.exemptSenderDomains.includes(domainOf(context.mailfrom).toLowerCase())) return found;
  let entries: SuppressionEntry[];
  try {
    entries = await store.suppressed(recipients, context.now);
    health?.worked();
  } catch (err) {
    health?.failed('suppression_check', err);
    return found;
  }
  const byAddress = new Map(entries.map((e) => [e.address, e]));
  for (const recipient of recipients) {
    const entry = byAddress.get(normalizeAddress(recipient));
    if (entry) found.set(recipient, entry);
  }
  return found;
}

const WATCHER_CACHE_MS = 10_000;
const EVENT_TTR_SECONDS = 120;

/**
 * `suppressed` webhook events: put into the workers' webhook tube (worker/webhook.ts posts
 * them like delivery events), only while a dispatcher watches it, so they never pile up
 * where no webhook is configured. Never fails a submission.
 */
export function createSuppressionEvents(options: { clients: readonly BeanstalkClient[]; tube: string; logger: Logger; now?: () => number }) {
  const now = options.now ?? Date.now;
  let watched: { value: boolean; until: number } = { value: false, until: 0 };
  async function dispatcherWatching(client: BeanstalkClient): Promise<boolean> {
    if (watched.until > now()) return watched.value;
    let value = false;
    try {
      value = Number((await client.statsTube(options.tube))['current-watching'] ?? 0) > 0;
    } catch (err) {
      if (errorCode(err) !== 'NOT_FOUND') throw err;
    }
    watched = { value, until: now() + WATCHER_CACHE_MS };
    return value;
  }
  return async function queue(context: { messageId: string | null; fqdn: string; mailfrom: string }, suppressed: ReadonlyMap<string, SuppressionEntry>): Promise<void> {
    const client = options.clients.find((c) => c.connected);
    if (!client || suppressed.size === 0) return;
    try {
      if (!(await dispatcherWatching(client))) return;
      for (const [recipient, entry] of suppressed) {
        const event = {
          id: randomUUID(),
          type: 'suppressed',
          occurredAt: new Date(now()).toISOString(),
          messageId: context.messageId ?? '',
          fqdn: context.fqdn,
          mailfrom: context.mailfrom,
          recipient,
          ...(entry.responseCode !== null ? { responseCode: entry.responseCode } : {}),
          ...(entry.enhancedCode !== null ? { enhancedCode: entry.enhancedCode } : {}),
          response: entry.response ?? `suppressed (${entry.source})`,
          attempts: 0,
          suppressedUntil: entry.expiresAt === null ? null : new Date(entry.expiresAt).toISOString(),
        };
        await client.putTo(options.tube, Buffer.from(JSON.stringify({ v: 1, createdAt: now(), event })), { ttrSeconds: EVENT_TTR_SECONDS });
      }
    } catch (err) {
      options.logger.warn({ event: 'webhook_queue_failed', messageId: context.messageId, code: errorCode(err) }, 'could not queue the suppressed events');
    }
  };
}
