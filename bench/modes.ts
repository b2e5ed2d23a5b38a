import { randomUUID } from 'node:crypto';
import { BeanstalkClient } from '../shared/beanstalk.ts';
import { TUBE, encodeJob, type OutboundJob } from '../shared/job.ts';
import type { BenchArgs } from './args.ts';
import { runHttpLoad } from './http-load.ts';
import { BENCH_SENDER, benchMessage, benchPlan, recipientFor } from './message.ts';
import { BENCH_FQDN, type Pipeline } from './pipeline.ts';
import { round } from './proc.ts';
import { progress } from './report.ts';
import { runSmtpLoad } from './smtp-load.ts';
import { percentiles, perSecond, type Percentiles } from './stats.ts';

/**
 * The single-pipeline modes (`--mode e2e`, `postoffice`, `worker`): each drives one hedwig
 * pipeline (bench/pipeline.ts) and returns what it measured; bench/run.ts adds the CPU and
 * memory figures around it. `--mode matrix` is bench/matrix-mode.ts.
 */

export interface ModeResult {
  accepted: number;
  notAccepted: number;
  failures: Record<string, number>;
  delivered: number | null;
  duplicates: number | null;
  queuedAtEnd: number;
  seconds: { accepting: number; delivering: number | null };
  throughput: { acceptedPerSecond: number | null; deliveredPerSecond: number | null };
  latencyMs: (Percentiles & { from: string; to: string }) | null;
}

async function sleep(ms: number): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
}

/** Waits until the sink holds `target` distinct messages; false on timeout. */
async function waitForDeliveries(pipeline: Pipeline, target: number, deadline: number): Promise<boolean> {
  let lastReport = 0;
  for (;;) {
    const stats = await pipeline.sink!.stats();
    const unique = stats.received - stats.duplicates;
    if (unique >= target) return true;
    if (Date.now() > deadline) return false;
    if (Date.now() - lastReport > 5000) {
      progress(`delivered ${unique}/${target}, queued ${await pipeline.queued()}`);
      lastReport = Date.now();
    }
    await sleep(100);
  }
}

/** Arrival time of the first copy of each measured message (ids 0..n-1), and the copies beyond it. */
async function arrivals(pipeline: Pipeline, n: number): Promise<{ firstArrival: Float64Array; duplicates: number }> {
  const { ids, times, kinds } = await pipeline.sink!.records();
  const firstArrival = new Float64Array(n).fill(NaN);
  let duplicates = 0;
  ids.forEach((id, i) => {
    if (id >= n || kinds[i] !== 'id') return; // warm-up
    if (Number.isNaN(firstArrival[id]!)) firstArrival[id] = times[i]!;
    else duplicates++;
  });
  return { firstArrival, duplicates };
}

function maxOf(values: Float64Array): number {
  let max = -Infinity;
  for (const v of values) if (v > max) max = v;
  return max;
}

function minOf(values: Float64Array): number {
  let min = Infinity;
  for (const v of values) if (v < min) min = v;
  return min;
}

export async function e2e(args: BenchArgs, pipeline: Pipeline, deadline: number, measured: () => void): Promise<ModeResult> {
  await pipeline.startBeanstalkd();
  await pipeline.startSink();
  await pipeline.startPostoffice();
  await pipeline.startWorkers();
  await pipeline.startMailman();
  const smtp = (offset: number, messages: number, rate?: number) =>
    runSmtpLoad({
      host: '127.0.0.1',
      port: pipeline.mailman!.port,
      ...benchPlan(offset, messages, { concurrency: args.concurrency, size: args.size, ratePerSecond: rate }),
      deadlineMs: deadline - Date.now(),
    });

  if (args.warmup > 0) {
    progress(`warm-up: ${args.warmup} messages`);
    const warm = await smtp(args.messages, args.warmup);
    await waitForDeliveries(pipeline, warm.accepted, deadline);
  }
  const already = (await pipeline.sink!.stats()).received;
  measured();
  progress(`measuring: ${args.messages} messages of ${args.size} bytes over ${args.concurrency} SMTP connections${args.rate ? ` at ${args.rate}/s` : ''}`);
  const load = await smtp(0, args.messages, args.rate);
  progress(`accepted ${load.accepted} in ${round((load.finishedAt - load.startedAt) / 1000)} s`);
  const complete = await waitForDeliveries(pipeline, already + load.accepted, deadline);
  if (!complete) progress('timed out waiting for deliveries');
  const { firstArrival, duplicates } = await arrivals(pipeline, args.messages);

  const latency = new Float64Array(args.messages).fill(NaN);
  let delivered = 0;
  for (let id = 0; id < args.messages; id++) {
    if (Number.isNaN(firstArrival[id]!)) continue;
    delivered++;
    // Delivery can beat the 250 to the client (the post office puts before it answers): count that as 0.
    if (!Number.isNaN(load.acceptedAt[id]!)) latency[id] = Math.max(0, firstArrival[id]! - load.acceptedAt[id]!);
  }
  const lastAccepted = maxOf(load.acceptedAt);
  const lastArrival = maxOf(firstArrival);
  const p = percentiles(latency);
  return {
    accepted: load.accepted,
    notAccepted: load.notAccepted,
    failures: load.failures,
    delivered,
    duplicates,
    queuedAtEnd: await pipeline.queued(),
    seconds: { accepting: round((lastAccepted - load.startedAt) / 1000, 2), delivering: round((lastArrival - load.startedAt) / 1000, 2) },
    throughput: { acceptedPerSecond: perSecond(load.accepted, load.startedAt, lastAccepted), deliveredPerSecond: perSecond(delivered, load.startedAt, lastArrival) },
    latencyMs: p && { ...p, from: "mailman's 250 to the client", to: 'arrival at the sink' },
  };
}

export async function postofficeOnly(args: BenchArgs, pipeline: Pipeline, deadline: number, measured: () => void): Promise<ModeResult> {
  await pipeline.startBeanstalkd();
  await pipeline.startPostoffice();
  const http = (offset: number, messages: number, rate?: number) =>
    runHttpLoad({
      url: pipeline.postoffice!.url,
      fqdn: BENCH_FQDN,
      key: pipeline.key,
      ...benchPlan(offset, messages, { concurrency: args.concurrency, size: args.size, ratePerSecond: rate }),
    });
  if (args.warmup > 0) {
    progress(`warm-up: ${args.warmup} requests`);
    await http(args.messages, args.warmup);
  }
  measured();
  progress(`measuring: ${args.messages} signed requests of ${args.size}-byte messages, ${args.concurrency} in flight${args.rate ? ` at ${args.rate}/s` : ''}`);
  const load = await http(0, args.messages, args.rate);
  if (Date.now() > deadline) progress('past the deadline');
  const lastAccepted = maxOf(load.acceptedAt);
  const p = percentiles(load.latencyMs);
  return {
    accepted: load.accepted,
    notAccepted: args.messages - load.accepted,
    failures: load.failures,
    delivered: null,
    duplicates: null,
    queuedAtEnd: await pipeline.queued(),
    seconds: { accepting: round((lastAccepted - load.startedAt) / 1000, 2), delivering: null },
    throughput: { acceptedPerSecond: perSecond(load.accepted, load.startedAt, lastAccepted), deliveredPerSecond: null },
    latencyMs: p && { ...p, from: 'request sent', to: '202 received' },
  };
}

/** Puts `count` jobs as the post office would, over several connections. */
async function prefill(pipeline: Pipeline, args: BenchArgs, count: number): Promise<void> {
  const connections = 8;
  let next = 0;
  await Promise.all(
    Array.from({ length: connections }, async () => {
      const client = new BeanstalkClient({ host: '127.0.0.1', port: pipeline.beanstalkd!.port });
      await client.connect();
      await client.use(TUBE.outbound);
      for (let id = next++; id < count; id = next++) {
        const job: OutboundJob = {
          v: 1,
          id: randomUUID(),
          fqdn: BENCH_FQDN,
          mailfrom: BENCH_SENDER,
          rcpttos: [recipientFor(id)],
          data: benchMessage(id, args.size).toString('base64'),
          receivedAt: Date.now(),
          attempts: 0,
        };
        await client.put(encodeJob(job), { ttrSeconds: 600 });
      }
      await client.close();
    }),
  );
}

export async function workerOnly(args: BenchArgs, pipeline: Pipeline, deadline: number, measured: () => void): Promise<ModeResult> {
  await pipeline.startBeanstalkd();
  await pipeline.startSink();
  progress(`putting ${args.messages} jobs into beanstalkd`);
  await prefill(pipeline, args, args.messages);
  const queued = await pipeline.queued();
  measured();
  progress(`${queued} jobs queued; starting ${args.workers} worker(s) with ${args.workerConcurrency} reserve loops each`);
  await pipeline.startWorkers();
  const complete = await waitForDeliveries(pipeline, args.messages, deadline);
  if (!complete) progress('timed out waiting for deliveries');
  const { firstArrival, duplicates } = await arrivals(pipeline, args.messages);
  const delivered = firstArrival.filter((t) => !Number.isNaN(t)).length;
  const first = minOf(firstArrival);
  const last = maxOf(firstArrival);
  return {
    accepted: queued,
    notAccepted: 0,
    failures: {},
    delivered,
    duplicates,
    queuedAtEnd: await pipeline.queued(),
    seconds: { accepting: 0, delivering: round((last - first) / 1000, 2) },
    // From the first delivery to the last: the worker's start-up is not part of its rate.
    throughput: { acceptedPerSecond: null, deliveredPerSecond: perSecond(delivered - 1, first, last) },
    latencyMs: null,
  };
}
