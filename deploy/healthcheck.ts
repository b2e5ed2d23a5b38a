/**
 * Container health check for every hedwig tier: `node dist/deploy/healthcheck.js`.
 *
 * It asks the tier's own `/readyz` and exits 0 (ready) or 1 (not ready). Which tier,
 * which config file and which environment overrides apply are read from the tier's
 * process (`/proc/<pid>/cmdline` and `/proc/<pid>/environ`, PID 1 in a container), and the
 * URL comes from that config through the tier's own loader. So the probe follows the
 * config: turning on TLS or moving a port cannot leave a stale URL in docker-compose.yml.
 *
 *   healthcheck.js [--pid PID] [--timeout-ms MS]
 *
 * Hand-written rather than curl: the runtime image has no curl, and curl could not
 * derive the URL. The post office's certificate is not verified: the probe talks to its
 * own container over loopback, where a certificate issued for the public name cannot match.
 */
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { readFileSync, readlinkSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { configFileFromArgs } from '../shared/config.ts';
import { loadMailmanConfig } from '../mailman/config.ts';
import { loadPostofficeConfig } from '../postoffice/config.ts';
import { loadWorkerConfig } from '../worker/config.ts';

type Tier = 'mailman' | 'postoffice' | 'worker';

interface TierProcess {
  tier: Tier;
  argv: string[];
  env: NodeJS.ProcessEnv;
  /** Relative paths in the command line and the config (keyFile, tls) are relative to this. */
  cwd: string;
}

type Result<T> = { ok: true; value: T } | { ok: false; reason: string };

const TIER_ENTRY = /(?:^|\/)(mailman|postoffice|worker)\/main\.(?:js|ts)$/;

function readNulSeparated(path: string): string[] {
  return readFileSync(path, 'latin1').split('\0').filter((part) => part.length > 0);
}

function inspectProcess(pid: number): Result<TierProcess> {
  let argv: string[];
  try {
    argv = readNulSeparated(`/proc/${pid}/cmdline`);
  } catch (err) {
    return { ok: false, reason: `cannot read process ${pid}: ${(err as NodeJS.ErrnoException).code ?? String(err)}` };
  }
  const entry = argv.map((arg) => TIER_ENTRY.exec(arg)).find((match) => match !== null);
  if (!entry) return { ok: false, reason: `process ${pid} is not a hedwig tier: ${argv.join(' ')}` };
  // environ and cwd need ptrace-read access to the process (same user, dumpable). Where a
  // runtime denies it, our own environment and directory are the next best thing: a health
  // check runs in the tier's container with the container's environment and working directory.
  let env: NodeJS.ProcessEnv = process.env;
  let cwd = process.cwd();
  try {
    env = {};
    for (const pair of readNulSeparated(`/proc/${pid}/environ`)) {
      const eq = pair.indexOf('=');
      if (eq > 0) env[pair.slice(0, eq)] = pair.slice(eq + 1);
    }
    cwd = readlinkSync(`/proc/${pid}/cwd`);
  } catch {
    env = process.env;
    cwd = process.cwd();
  }
  return { ok: true, value: { tier: entry[1] as Tier, argv, env, cwd } };
}

/** Wildcard listen addresses are probed on loopback of the same family. */
function probeHost(listenHost: string): string {
  if (listenHost === '0.0.0.0') return '127.0.0.1';
  if (listenHost === '::') return '[::1]';
  return listenHost.includes(':') ? `[${listenHost}]` : listenHost;
}

function readinessUrl(target: TierProcess): Result<string> {
  const file = configFileFromArgs(target.argv, target.tier, target.env);
  try {
    switch (target.tier) {
      case 'postoffice': {
        const config = loadPostofficeConfig(file, target.env);
        return { ok: true, value: `${config.tls ? 'https' : 'http'}://${probeHost(config.listen.host)}:${config.listen.port}/readyz` };
      }
      case 'mailman': {
        const config = loadMailmanConfig(file, target.env);
        return { ok: true, value: `http://${probeHost(config.ops.host)}:${config.ops.port}/readyz` };
      }
      case 'worker': {
        const config = loadWorkerConfig(file, target.env);
        return { ok: true, value: `http://${probeHost(config.ops.host)}:${config.ops.port}/readyz` };
      }
    }
  } catch (err) {
    return { ok: false, reason: (err as Error).message };
  }
}

function probe(url: string, timeoutMs: number): Promise<Result<number>> {
  return new Promise((resolve) => {
    const request = url.startsWith('https:') ? httpsRequest(url, { rejectUnauthorized: false }) : httpRequest(url);
    request.setTimeout(timeoutMs, () => request.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    request.once('error', (err) => resolve({ ok: false, reason: err.message }));
    request.once('response', (response) => {
      response.resume();
      const status = response.statusCode ?? 0;
      resolve(status >= 200 && status < 300 ? { ok: true, value: status } : { ok: false, reason: `status ${status}` });
    });
    request.end();
  });
}

async function main(): Promise<number> {
  const { values } = parseArgs({ options: { pid: { type: 'string', default: '1' }, 'timeout-ms': { type: 'string', default: '3000' } } });
  const target = inspectProcess(Number(values.pid));
  if (!target.ok) {
    process.stdout.write(`unhealthy: ${target.reason}\n`);
    return 1;
  }
  process.chdir(target.value.cwd);
  const url = readinessUrl(target.value);
  if (!url.ok) {
    process.stdout.write(`unhealthy: ${target.value.tier}: ${url.reason}\n`);
    return 1;
  }
  const answer = await probe(url.value, Number(values['timeout-ms']));
  process.stdout.write(answer.ok ? `healthy: ${target.value.tier} ${url.value}\n` : `unhealthy: ${target.value.tier} ${url.value}: ${answer.reason}\n`);
  return answer.ok ? 0 : 1;
}

process.exitCode = await main();
