import { domainOf } from '../shared/address.ts';
import { errorMessage } from '../shared/errors.ts';
import type { OutboundJob } from '../shared/job.ts';
import type { Logger } from '../shared/logger.ts';
import { forRecipients, ownVerdict, type RecipientResult } from './classify.ts';
import type { Deliverer } from './deliver.ts';
import type { WorkerMetrics } from './metrics.ts';
import type { RouteResolver } from './route.ts';

/**
 * One delivery attempt of a job: its recipients grouped by domain, each domain's route
 * (route.ts), then one delivery per domain (deliver.ts), domains in parallel. Every
 * recipient comes back with a verdict; nothing here throws.
 */

export interface AttemptDeps {
  router: RouteResolver;
  deliverer: Deliverer;
  metrics: Pick<WorkerMetrics, 'deliveryDuration'>;
  logger: Logger;
}

export function recipientsByDomain(recipients: readonly string[]): Map<string, string[]> {
  const byDomain = new Map<string, string[]>();
  for (const recipient of recipients) {
    const domain = domainOf(recipient);
    const list = byDomain.get(domain);
    if (list) list.push(recipient);
    else byDomain.set(domain, [recipient]);
  }
  return byDomain;
}

export async function attemptDelivery(job: OutboundJob, raw: Buffer, deps: AttemptDeps): Promise<RecipientResult[]> {
  const perDomain = await Promise.all(
    [...recipientsByDomain(job.rcpttos)].map(async ([domain, recipients]): Promise<RecipientResult[]> => {
      const endTimer = deps.metrics.deliveryDuration.startTimer();
      try {
        const route = await deps.router.routeFor(domain);
        if (!route.ok) {
          deps.logger.info({ event: 'attempt', messageId: job.id, domain, stage: 'dns', response: route.verdict.response });
          return forRecipients(recipients, route.verdict);
        }
        return await deps.deliverer.deliver({
          messageId: job.id,
          domain,
          from: job.mailfrom,
          recipients,
          raw,
          hosts: route.hosts,
          receivedAt: job.receivedAt,
          submittedBy: job.fqdn,
          notice: job.notice,
          senderDomains: job.senderDomains,
        });
      } catch (err) {
        // A bug or an unexpected library error: retry later rather than lose the recipients.
        deps.logger.error({ event: 'delivery_error', messageId: job.id, domain, err }, 'unexpected delivery error');
        return forRecipients(recipients, ownVerdict('deferred', `internal error: ${errorMessage(err)}`));
      } finally {
        endTimer();
      }
    }),
  );
  return perDomain.flat();
}
