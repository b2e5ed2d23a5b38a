import { z } from 'zod';
import { domainOf, isValidDomain } from '../shared/address.ts';
import type { WorkerConfig } from './config.ts';
import { loadDkimPrivateKey, type DkimKey } from './dkim.ts';
import type { OutgoingSettings } from './outgoing.ts';

/**
 * Config schemas for the worker's sending identity and traffic shaping (DKIM, headers,
 * TLS policy, source addresses, connection reuse, per-destination limits). worker/config.ts
 * puts them under their keys; they live here to keep that file about the whole.
 */

const domainKey = z
  .string()
  .transform((value) => value.toLowerCase())
  .refine(isValidDomain, { message: 'not a domain' });

const selector = z.string().regex(/^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$/, {
  message: 'a DKIM selector: letters, digits, hyphens (dot-separated labels)',
});

/**
 * `dkim.<domain>: {selector, keyFile}` (what `key-generator.ts --dkim` prints). Keys are
 * read and checked here, so a missing, broken or non-RSA key stops start-up with the
 * config error naming the key.
 */
export const dkimSchema = z
  .record(domainKey, z.object({ selector, keyFile: z.string().min(1) }).strict())
  .default({})
  .transform((entries, ctx): Map<string, DkimKey> => {
    const keys = new Map<string, DkimKey>();
    for (const [domain, entry] of Object.entries(entries)) {
      const loaded = loadDkimPrivateKey(entry.keyFile);
      if (!loaded.ok) {
        ctx.addIssue({ code: 'custom', path: [domain, 'keyFile'], message: loaded.message });
        continue;
      }
      keys.set(domain, { domain, selector: entry.selector, privateKey: loaded.key });
    }
    return keys;
  });

export const headersSchema = z
  .object({
    /** Add a Received trace field (it names the submitting host's fqdn). */
    received: z.boolean().default(false),
  })
  .strict()
  .prefault({});

/** The deliverer's identity settings from the validated config (server.ts spreads them into createDeliverer). */
export function outgoingSettingsFrom(config: Pick<WorkerConfig, 'ehloName' | 'dkim' | 'headers' | 'bounces'>): OutgoingSettings {
  const noticesFrom = config.bounces.from ?? `MAILER-DAEMON@${config.ehloName}`;
  return { hostname: config.ehloName, dkim: config.dkim, nullSenderDomain: domainOf(noticesFrom), received: config.headers.received };
}
