import type { Registry } from 'prom-client';
import { BeanstalkClient } from '../shared/beanstalk.ts';
import type { Logger } from '../shared/logger.ts';
import type { WorkerConfig } from './config.ts';
import { createOperationsMetrics } from './ops-metrics.ts';
import { createOutcomeRecorder, type OutcomeRecorder } from './outcomes.ts';
import { registerQueueDepth } from './queue-metrics.ts';
import { runWebhookLoop } from './webhook.ts';

/**
 * The worker's operations side, started next to its delivery loops: metrics beyond
 * per-attempt outcomes, the queue-depth gauge, the outcome recorder (latency, webhook
 * events, status updates) and, when a webhook is configured, one webhook dispatcher per
 * beanstalkd server on its own connection.
 */
export interface WorkerOperations {
  outcomes: OutcomeRecorder;
  onTransaction(info: { tls: boolean; dkimSigned: boolean; reused?: boolean }): void;
  /** After the delivery loops stopped: stops the dispatchers (an event being posted returns to the queue) and closes connections. */
  stop(): Promise<void>;
}

export function startOperations(config: WorkerConfig, options: { registry: Registry; logger: Logger; stopping: AbortSignal }): WorkerOperations {
  const { registry, logger } = options;
  const metrics = createOperationsMetrics(registry);
  const servers = config.beanstalk.servers;
  const webhook = config.webhook;
  const tubes = [config.beanstalk.tube, config.beanstalk.failedTube, ...(webhook ? [webhook.tube] : [])];
  const queueDepth = registerQueueDepth(registry, servers, tubes);

  const webhookClients = webhook ? servers.map((address) => new BeanstalkClient(address)) : [];
  const webhookLoops = webhook ? webhookClients.map((client) => runWebhookLoop(client, { config: webhook, logger, metrics }, options.stopping)) : [];

  return {
    outcomes: createOutcomeRecorder({ logger, metrics, ...(webhook ? { webhook } : {}) }),
    onTransaction({ tls, dkimSigned, reused }) {
      metrics.smtpTransactions.inc({ tls: String(tls), connection: reused ? 'reused' : 'new' });
      metrics.dkimSignatures.inc({ result: dkimSigned ? 'signed' : 'unsigned' });
    },
    async stop() {
      await Promise.all(webhookClients.map((client) => client.close()));
      await Promise.all(webhookLoops);
      await queueDepth.close();
    },
  };
}
