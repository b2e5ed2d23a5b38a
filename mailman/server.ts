import { readFileSync } from 'node:fs';
import type { Registry } from 'prom-client';
import { HedwigError, errorCode } from '../shared/errors.ts';
import type { Logger } from '../shared/logger.ts';
import { createRegistry, startOpsServer } from '../shared/ops-server.ts';
import type { MailmanConfig } from './config.ts';
import { Forwarder } from './forwarder.ts';
import { createMailmanMetrics } from './metrics.ts';
import { createPostofficeClient } from './postoffice-client.ts';
import { closeSmtp, createSmtpServer, listenSmtp } from './smtp.ts';
import { Spool } from './spool.ts';

export interface Mailman {
  port: number;
  opsPort: number;
  /** Stops accepting SMTP, lets transactions and forwards in flight finish, then stops the ops server. */
  stop(): Promise<void>;
}

function readCa(path: string | undefined): string | undefined {
  if (!path) return undefined;
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw new HedwigError('CONFIG_INVALID', `cannot read postoffice.caFile ${path}: ${errorCode(err) ?? String(err)}`);
  }
}

export async function startMailman(config: MailmanConfig, options: { logger: Logger; registry?: Registry }): Promise<Mailman> {
  const { logger } = options;
  const registry = options.registry ?? createRegistry('mailman');
  const spool = new Spool(config.spool.dir);
  await spool.init();
  const metrics = createMailmanMetrics(registry, () => spool.depth());
  const client = createPostofficeClient({
    url: config.postoffice.url,
    fqdn: config.postoffice.fqdn,
    key: config.postoffice.key,
    ca: readCa(config.postoffice.caFile),
    timeoutMs: config.postoffice.timeoutMs,
  });
  const { maxAgeSeconds, ...pacing } = config.forwarder;
  const forwarder = new Forwarder({ spool, client, logger, metrics, ...pacing, maxAgeMs: maxAgeSeconds * 1000 });
  // Before the listener opens: start() clears tmp/, which must not race a live transaction.
  await forwarder.start();

  const smtp = createSmtpServer({
    config,
    logger,
    client,
    spool,
    metrics,
    postoffice: forwarder,
  });
  let accepting = false;
  let port: number;
  try {
    port = await listenSmtp(smtp, config.listen.host, config.listen.port);
  } catch (err) {
    await forwarder.stop();
    client.close();
    throw err;
  }
  accepting = true;
  let ops;
  try {
    ops = await startOpsServer({ host: config.ops.host, port: config.ops.port, registry, ready: () => accepting });
  } catch (err) {
    await closeSmtp(smtp);
    await forwarder.stop();
    client.close();
    throw new HedwigError('STARTUP_FAILED', `cannot listen on ${config.ops.host}:${config.ops.port} (ops): ${errorCode(err) ?? String(err)}`, { cause: err });
  }
  logger.info({ event: 'listening', host: config.listen.host, port, opsPort: ops.port, postoffice: config.postoffice.url, fqdn: config.postoffice.fqdn });

  let stopping: Promise<void> | undefined;
  return {
    port,
    opsPort: ops.port,
    stop() {
      stopping ??= (async () => {
        accepting = false;
        await closeSmtp(smtp);
        await forwarder.stop();
        client.close();
        await ops.stop();
      })();
      return stopping;
    },
  };
}
