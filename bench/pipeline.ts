import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { BeanstalkClient } from '../shared/beanstalk.ts';
import { TUBE, jobSizeFor } from '../shared/job.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../test/helpers/beanstalkd.ts';
import { freePort } from '../test/helpers/ports.ts';
import type { BenchArgs } from './args.ts';
import { benchDkimConfig } from './dkim.ts';
import { BENCH_RECIPIENT_DOMAIN, BENCH_SENDER_DOMAIN } from './message.ts';
import type { ProcessWatcher } from './proc.ts';
import { startSinkProcess, type SinkProcess } from './sink-process.ts';
import { startBenchTier, type BenchTier } from './tiers.ts';

export const BENCH_FQDN = 'app.bench.example';
const MAX_RECIPIENTS = 10;
const FORWARDER_CONCURRENCY = 16;

export interface PipelineOptions {
  /** Prefix of every process name this pipeline gives the watcher ('hedwig.' in the matrix). Default ''. */
  prefix?: string;
  /** Sign with DKIM when the worker can (default true). */
  dkim?: boolean;
  /** The workers' EHLO name: how the sink tells this pipeline's deliveries apart. */
  ehloName?: string;
  /** mailman's maxClients; default --concurrency + 20. */
  maxClients?: number;
}

/** The parts of the relay a bench mode starts; each start records its process with the watcher. */
export class Pipeline {
  readonly key = randomBytes(32).toString('hex');
  readonly maxMessageBytes: number;
  beanstalkd?: BeanstalkdProcess;
  sink?: SinkProcess;
  postoffice?: BenchTier & { url: string };
  mailman?: BenchTier & { port: number };
  workers: BenchTier[] = [];
  /** Whether the workers sign with DKIM (false when this worker has no `dkim` config yet). */
  dkim = false;
  /** Prometheus /metrics of each tier process, by the name the watcher knows it by. */
  readonly metricsUrls: Record<string, string> = {};

  readonly prefix: string;
  readonly ehloName: string;
  ownsSink = false;
  /** SMTP sessions mailman takes, all from 127.0.0.1 as on an app host. */
  readonly maxClients: number;

  constructor(
    readonly args: BenchArgs,
    readonly dir: string,
    readonly watcher: ProcessWatcher,
    readonly options: PipelineOptions = {},
  ) {
    this.maxMessageBytes = Math.max(1_048_576, args.size * 2);
    this.prefix = options.prefix ?? '';
    this.ehloName = options.ehloName ?? 'relay.bench.example';
    this.maxClients = options.maxClients ?? args.concurrency + 20;
    mkdirSync(dir, { recursive: true });
  }


  /**
   * The shared store of this pipeline's post office and worker(s): an SQLite file in the run
   * directory, the embedded default a single host runs (never the repository's data/hedwig.db,
   * which another run or the other relay of the matrix would share).
   */
  get store(): { url: string } {
    return { url: `sqlite:${join(this.dir, 'store', 'hedwig.db')}` };
  }

  get beanstalkAddress(): string {
    return this.beanstalkd!.address;
  }

  async startBeanstalkd(): Promise<void> {
    const binlogDir = join(this.dir, 'binlog');
    mkdirSync(binlogDir);
    this.beanstalkd = await startBeanstalkd({
      binlogDir,
      // Each job also carries the host's senderDomains, as the post office's start-up check counts them.
      maxJobSize: jobSizeFor(this.maxMessageBytes, MAX_RECIPIENTS) + JSON.stringify([BENCH_SENDER_DOMAIN]).length,
      fsyncMs: this.args.fsyncMs,
    });
    const probe = new BeanstalkClient({ host: '127.0.0.1', port: this.beanstalkd.port });
    await probe.connect();
    this.watcher.watch(`${this.prefix}beanstalkd`, Number((await probe.stats()).pid));
    await probe.close();
  }

  /** Starts the bench sink, or (matrix) uses one the caller shares between relays. */
  async startSink(shared?: SinkProcess): Promise<void> {
    if (shared) {
      this.sink = shared;
      return;
    }
    this.ownsSink = true;
    this.sink = await startSinkProcess(await freePort());
    this.watcher.watch('sink', this.sink.pid);
  }

  async startPostoffice(): Promise<void> {
    const port = await freePort();
    const tier = await startBenchTier(
      'postoffice',
      {
        listen: { host: '127.0.0.1', port },
        beanstalk: { servers: [this.beanstalkAddress] },
        store: this.store,
        limits: { maxMessageBytes: this.maxMessageBytes, maxRecipients: MAX_RECIPIENTS },
        // One mailman sends every request from one address: at most one body per SMTP session
        // (inline forward) plus the forwarder's. The defaults (64, 8 per address) answer a busier
        // mailman 503, which sends it into spool-and-retry (README, Benchmark).
        uploads: { maxPendingBodies: Math.max(64, this.maxClients + FORWARDER_CONCURRENCY), maxPendingBodiesPerAddress: this.maxClients + FORWARDER_CONCURRENCY },
        clients: { [BENCH_FQDN]: { key: this.key, senderDomains: [BENCH_SENDER_DOMAIN] } },
      },
      { dir: this.dir, readyPort: port, logLevel: this.args.logLevel, runtime: this.args.runtime, profileDir: this.args.profile },
    );
    this.postoffice = { ...tier, url: `http://127.0.0.1:${port}` };
    this.watcher.watch(`${this.prefix}postoffice`, tier.pid);
    this.metricsUrls[`${this.prefix}postoffice`] = `${this.postoffice.url}/metrics`;
  }

  async startWorkers(): Promise<void> {
    const base = {
      beanstalk: { servers: [this.beanstalkAddress] },
      store: this.store,
      concurrency: this.args.workerConcurrency,
      ehloName: this.ehloName,
      routes: { [BENCH_RECIPIENT_DOMAIN]: `127.0.0.1:${this.sink!.port}` },
      timeouts: { connectMs: 5000, greetingMs: 5000, socketMs: 30_000 },
      retry: { delaysSeconds: [1], maxLifetimeSeconds: 3600 },
      shutdownGraceMs: 2000,
    };
    const dkim = this.options.dkim === false ? undefined : benchDkimConfig(BENCH_SENDER_DOMAIN, join(this.dir, 'dkim'), base);
    this.dkim = dkim !== undefined;
    for (let i = 0; i < this.args.workers; i++) {
      const opsPort = await freePort();
      const tier = await startBenchTier(
        'worker',
        { ...base, ...(dkim ? { dkim } : {}), ops: { host: '127.0.0.1', port: opsPort } },
        { dir: join(this.dir, `worker-${i}`), readyPort: opsPort, logLevel: this.args.logLevel, runtime: this.args.runtime, profileDir: this.args.profile },
      );
      this.workers.push(tier);
      const name = `${this.prefix}${this.args.workers === 1 ? 'worker' : `worker-${i}`}`;
      this.watcher.watch(name, tier.pid);
      this.metricsUrls[name] = `http://127.0.0.1:${opsPort}/metrics`;
    }
  }

  async startMailman(): Promise<void> {
    const port = await freePort();
    const opsPort = await freePort();
    const tier = await startBenchTier(
      'mailman',
      {
        listen: { host: '127.0.0.1', port },
        allowedNetworks: ['127.0.0.0/8'],
        hostname: 'mailman.bench.example',
        maxMessageBytes: this.maxMessageBytes,
        maxRecipients: MAX_RECIPIENTS,
        maxClients: this.maxClients,
        // Every client of the bench connects from 127.0.0.1, as the programs of one app host do.
        maxClientsPerAddress: this.maxClients,
        postoffice: { url: this.postoffice!.url, fqdn: BENCH_FQDN, key: this.key },
        spool: { dir: join(this.dir, 'spool') },
        forwarder: { concurrency: FORWARDER_CONCURRENCY },
        ops: { host: '127.0.0.1', port: opsPort },
      },
      { dir: this.dir, readyPort: port, logLevel: this.args.logLevel, runtime: this.args.runtime, profileDir: this.args.profile },
    );
    this.mailman = { ...tier, port };
    this.watcher.watch(`${this.prefix}mailman`, tier.pid);
    this.metricsUrls[`${this.prefix}mailman`] = `http://127.0.0.1:${opsPort}/metrics`;
  }

  /** V8 heap in use per tier (from its own /metrics): how much of the RSS is live JavaScript data. */
  async heapUsedMB(): Promise<Record<string, number>> {
    const entries = await Promise.all(
      Object.entries(this.metricsUrls).map(async ([name, url]) => {
        try {
          const text = await (await fetch(url)).text();
          const match = /^nodejs_heap_size_used_bytes(?:\{[^}]*\})? (\d+(?:\.\d+)?(?:e\+\d+)?)$/m.exec(text);
          return match ? [[name, Math.round(Number(match[1]) / 104857.6) / 10] as const] : [];
        } catch {
          return [];
        }
      }),
    );
    return Object.fromEntries(entries.flat());
  }

  /** Jobs in the outbound tube that no worker has finished yet. */
  async queued(): Promise<number> {
    const probe = new BeanstalkClient({ host: '127.0.0.1', port: this.beanstalkd!.port });
    try {
      await probe.connect();
      const stats = await probe.statsTube(TUBE.outbound);
      return Number(stats['current-jobs-ready']) + Number(stats['current-jobs-reserved']) + Number(stats['current-jobs-delayed']);
    } catch {
      return 0;
    } finally {
      await probe.close();
    }
  }

  /** Listeners first, the queue last, each with SIGTERM. */
  async stop(): Promise<void> {
    await this.mailman?.stop();
    await this.postoffice?.stop();
    await Promise.all(this.workers.map((w) => w.stop()));
    if (this.ownsSink) await this.sink?.stop();
    await this.beanstalkd?.stop();
  }
}
