import { join } from 'node:path';
import { freePort } from '../test/helpers/ports.ts';
import type { BenchArgs } from './args.ts';
import type { RelayName } from './cells.ts';
import { Pipeline } from './pipeline.ts';
import { startPostfixRelay } from './postfix.ts';
import type { ProcessWatcher } from './proc.ts';
import type { SinkProcess } from './sink-process.ts';

/** A relay the matrix drives: an SMTP listener on loopback that relays everything to the shared sink. */
export interface MatrixRelay {
  name: RelayName;
  /** The SMTP port the clients connect to. */
  port: number;
  /** The EHLO name it gives the sink, by which the sink counts its arrivals. */
  ehloName: string;
  /** Its processes in the watcher's report start with this. */
  prefix: string;
  dkim: boolean;
  /** How it is set up, for the report. */
  about: Record<string, unknown>;
  /** Messages it still holds (beanstalkd's tube, Postfix's queue); null when unknown. */
  queued(): Promise<number | null>;
  stop(): Promise<void>;
}

/** hedwig as `--mode e2e` runs it (mailman, post office, beanstalkd with fsync, worker(s)), delivering to `sink`. */
async function startHedwig(name: 'hedwig' | 'hedwig-nodkim', args: BenchArgs, dir: string, watcher: ProcessWatcher, sink: SinkProcess, maxSessions: number): Promise<MatrixRelay> {
  const dkim = name === 'hedwig';
  const prefix = dkim ? 'hedwig.' : 'nodkim.';
  const ehloName = dkim ? 'hedwig.bench.example' : 'hedwig-nodkim.bench.example';
  const pipeline = new Pipeline(args, join(dir, name), watcher, { prefix, dkim, ehloName, maxClients: maxSessions + 20 });
  try {
    await pipeline.startBeanstalkd();
    await pipeline.startSink(sink);
    await pipeline.startPostoffice();
    await pipeline.startWorkers();
    await pipeline.startMailman();
  } catch (err) {
    await pipeline.stop();
    throw err;
  }
  if (dkim && !pipeline.dkim) throw new Error('hedwig: the worker would not sign (its config has no dkim key)');
  return {
    name,
    port: pipeline.mailman!.port,
    ehloName,
    prefix,
    dkim: pipeline.dkim,
    about: { workers: args.workers, workerConcurrency: args.workerConcurrency, beanstalkdFsyncMs: args.fsyncMs, dkim: pipeline.dkim ? 'RSA-2048, relaxed/relaxed' : 'off', runtime: args.runtime },
    queued: () => pipeline.queued(),
    stop: () => pipeline.stop(),
  };
}

async function startPostfix(dir: string, watcher: ProcessWatcher, sink: SinkProcess): Promise<MatrixRelay> {
  const ehloName = 'postfix.bench.example';
  const relay = await startPostfixRelay({ dir: join(dir, 'postfix'), relayhost: { host: '127.0.0.1', port: sink.port }, myhostname: ehloName, port: await freePort() });
  watcher.watchChildren('postfix', relay.masterPid);
  return {
    name: 'postfix',
    port: relay.port,
    ehloName,
    prefix: 'postfix.',
    dkim: false,
    about: {
      version: relay.version,
      startedAs: relay.privilege,
      configDirectory: relay.configDir,
      queue: 'on disk (queue_directory in the run directory; cleanup fsyncs each message before the 250)',
      dkim: 'none (Postfix signs nothing without a milter)',
      tuning: 'Postfix defaults apart from what a relay needs (mydestination empty, relayhost = the sink, no chroot, log file instead of syslog)',
    },
    queued: async () => relay.queued(),
    stop: () => relay.stop(),
  };
}

/** Starts every relay the run asks for, all delivering to `sink`; on a failure stops the ones already up. */
export async function startRelays(names: RelayName[], args: BenchArgs, dir: string, watcher: ProcessWatcher, sink: SinkProcess, maxSessions: number): Promise<MatrixRelay[]> {
  const relays: MatrixRelay[] = [];
  try {
    for (const name of names) relays.push(name === 'postfix' ? await startPostfix(dir, watcher, sink) : await startHedwig(name, args, dir, watcher, sink, maxSessions));
  } catch (err) {
    for (const relay of relays.reverse()) await relay.stop().catch(() => undefined);
    throw err;
  }
  return relays;
}
