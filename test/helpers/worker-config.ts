import { workerConfigSchema, type WorkerConfig } from '../../worker/config.ts';
import { testStateDir, testStoreUrl } from './store.ts';

/**
 * The config of an in-process worker for tests that look at the queue and the tiers
 * around delivery rather than at delivery itself: one reserve loop, short timeouts, one
 * retry a minute later (so a deferred job stays visible), and no notices to the sender, so
 * the outbound tube and the sink hold only what the test put there. Ops on an OS-chosen
 * loopback port.
 */
export function testWorkerConfig(beanstalkAddress: string, settings: Record<string, unknown>): WorkerConfig {
  return workerConfigSchema.parse({ store: { url: testStoreUrl() },
    stateDir: testStateDir(),
    beanstalk: { servers: [beanstalkAddress] },
    concurrency: 1,
    ehloName: 'worker.hedwig.test',
    timeouts: { connectMs: 3000, greetingMs: 3000, socketMs: 5000 },
    retry: { delaysSeconds: [60], maxLifetimeSeconds: 3600 },
    bounces: { enabled: false },
    ops: { host: '127.0.0.1', port: 0 },
    shutdownGraceMs: 2000,
    ...settings,
  });
}
