import { Gauge, type Registry } from 'prom-client';
import { BeanstalkClient, type BeanstalkAddress } from '../shared/beanstalk.ts';
import { TUBE_STATES, tubeCounts } from '../shared/tube-stats.ts';

/**
 * `hedwig_queue_jobs{server, tube, state}`: jobs per beanstalkd server, tube and state,
 * read with `stats-tube` at scrape time. It has its own connection per server: a reserve
 * loop's connection is busy with a blocking reserve, and a scrape must not wait for it.
 * An unreachable server is left out of the scrape (its series disappear), which is what
 * an alert on `absent()` or on the worker's readiness can catch.
 */
export interface QueueDepthMetric {
  close(): Promise<void>;
}

export function registerQueueDepth(registry: Registry, servers: BeanstalkAddress[], tubes: string[]): QueueDepthMetric {
  const clients = servers.map((address) => new BeanstalkClient(address, { commandTimeoutMs: 2000, connectTimeoutMs: 2000 }));
  const name = 'hedwig_queue_jobs';
  registry.removeSingleMetric(name);
  new Gauge({
    name,
    help: 'Jobs in beanstalkd per server, tube and state (ready, delayed, reserved, buried), read at scrape time.',
    labelNames: ['server', 'tube', 'state'],
    registers: [registry],
    async collect() {
      this.reset();
      await Promise.all(
        clients.map(async (client) => {
          try {
            await client.connect();
            for (const tube of tubes) {
              const counts = await tubeCounts(client, tube);
              for (const state of TUBE_STATES) this.set({ server: client.server, tube, state }, counts[state]);
            }
          } catch {
            // Unreachable now: no series for this server in this scrape.
          }
        }),
      );
    },
  });
  return {
    async close() {
      await Promise.all(clients.map((client) => client.close()));
    },
  };
}
