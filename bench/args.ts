import { parseArgs } from 'node:util';
import { z } from 'zod';
import { DEFAULT_CELLS, parseCells, parseRelays } from './cells.ts';

export const USAGE = `usage: npm run bench -- [--mode e2e|postoffice|worker|matrix] [--messages N] [--size BYTES]
                     [--concurrency C] [--rate MSGS_PER_S] [--workers W] [--worker-concurrency L]
                     [--warmup N] [--fsync-ms MS] [--runtime build|tsx] [--log-level LEVEL] [--timeout-s S] [--out FILE] [--profile DIR] [--keep]
                     [--cells LIST] [--relays LIST] [--probe-rate MSGS_PER_S]

  e2e         SMTP into mailman -> post office -> beanstalkd (binlog) -> worker (DKIM) -> SMTP sink
  postoffice  signed HTTP requests straight into the post office -> beanstalkd; nothing drains the queue
  worker      N jobs put into beanstalkd first, then the worker(s) deliver them to the sink
  matrix      real clients (smtp-source, msmtp) into hedwig and into a private Postfix relay, one
              after the other, both relaying to the same sink; --cells (default
              ${DEFAULT_CELLS}),
              --relays (default hedwig,postfix; also hedwig-nodkim), --messages per cell`;

const int = (min: number) => z.coerce.number().int().min(min);

/** A comma-separated list flag, parsed by `parse` (which throws `--flag: message` on a bad item). */
const list = <T>(fallback: string, parse: (list: string) => T) =>
  z
    .string()
    .default(fallback)
    .transform((value, ctx) => {
      try {
        return parse(value);
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: (err as Error).message.replace(/^--[a-z-]+: /, '') });
        return z.NEVER;
      }
    });

export const benchArgsSchema = z
  .object({
    mode: z.enum(['e2e', 'postoffice', 'worker', 'matrix']).default('e2e'),
    messages: int(1).default(10_000),
    size: int(200).max(10_000_000).default(2048),
    /** SMTP connections (e2e) or HTTP requests in flight (postoffice). */
    concurrency: int(1).max(1000).default(50),
    /** Open-loop submission rate in messages/s; unset = as fast as the pipeline accepts. */
    rate: int(1).optional(),
    workers: int(1).max(16).default(1),
    workerConcurrency: int(1).max(256).default(64),
    /** Messages sent and delivered before the measured run, so the JIT is warm. */
    warmup: int(0).default(5000),
    /** beanstalkd -f; 0 (fsync every write) is what docker-compose.yml runs. */
    fsyncMs: int(0).default(0),
    /** build: compiled JS as in the Docker image; tsx: as `npm run <tier>` in development. */
    runtime: z.enum(['build', 'tsx']).default('build'),
    logLevel: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
    timeoutS: int(10).default(900),
    out: z.string().min(1).optional(),
    /** Write a V8 CPU profile of each tier into this directory (open in Chrome DevTools). */
    profile: z.string().min(1).optional(),
    keep: z.boolean().default(false),
    /** matrix: the cells (bench/cells.ts), in order. */
    cells: list(DEFAULT_CELLS, parseCells),
    /** matrix: the relays each cell drives. */
    relays: list('hedwig,postfix', parseRelays),
    /** matrix: latency probes per second alongside the real clients (the bench's load generator, same connection shape). */
    probeRate: int(1).max(1000).default(20),
  })
  .strict();

export type BenchArgs = z.infer<typeof benchArgsSchema>;

export function parseBenchArgs(argv: string[]): BenchArgs {
  const { values } = parseArgs({
    args: argv,
    options: {
      mode: { type: 'string' },
      messages: { type: 'string' },
      size: { type: 'string' },
      concurrency: { type: 'string' },
      rate: { type: 'string' },
      workers: { type: 'string' },
      'worker-concurrency': { type: 'string' },
      warmup: { type: 'string' },
      'fsync-ms': { type: 'string' },
      'log-level': { type: 'string' },
      runtime: { type: 'string' },
      'timeout-s': { type: 'string' },
      out: { type: 'string' },
      profile: { type: 'string' },
      keep: { type: 'boolean' },
      cells: { type: 'string' },
      relays: { type: 'string' },
      'probe-rate': { type: 'string' },
      help: { type: 'boolean' },
    },
    strict: true,
  });
  if (values.help) throw new Error(USAGE);
  const camel = Object.fromEntries(Object.entries(values).map(([k, v]) => [k.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase()), v]));
  const parsed = benchArgsSchema.safeParse(camel);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new Error(`--${issue.path.join('.').replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}: ${issue.message}\n${USAGE}`);
  }
  return parsed.data;
}
