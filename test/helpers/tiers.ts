import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { stringify } from 'yaml';
import { waitFor } from './ports.ts';
import { testStateDir, testStoreUrl } from './store.ts';

function has(config: unknown, key: string): boolean {
  return typeof config === 'object' && config !== null && key in config;
}

/** The store (post office, worker) and state directory (worker) of this test file, unless the config names its own. */
function testEnvironment(name: TierName, config: unknown): NodeJS.ProcessEnv {
  const tier = name.toUpperCase();
  return {
    ...(name === 'mailman' || has(config, 'store') ? {} : { [`HEDWIG_${tier}__STORE__URL`]: testStoreUrl() }),
    ...(name === 'worker' && !has(config, 'stateDir') ? { HEDWIG_WORKER__STATE_DIR: testStateDir() } : {}),
  };
}

const root = resolve(import.meta.dirname, '..', '..');

export type TierName = 'mailman' | 'postoffice' | 'worker';

/** One tier running as its own OS process, exactly as `npm run <tier>` would start it. */
export interface TierProcess {
  name: TierName;
  configFile: string;
  child: ChildProcess;
  /** Parsed JSON log lines, in order. */
  logs: Array<Record<string, unknown>>;
  stderr: () => string;
  exited: Promise<number | null>;
  /** SIGTERM and wait for exit. */
  stop(): Promise<number | null>;
  /** SIGKILL and wait for exit. */
  kill(): Promise<void>;
}

async function portOpen(host: string, port: number): Promise<boolean> {
  return new Promise((resolveOpen) => {
    const socket = connect({ host, port }, () => {
      socket.destroy();
      resolveOpen(true);
    });
    socket.once('error', () => resolveOpen(false));
  });
}

/**
 * Writes `config` as YAML into a temp dir and starts `<tier>/main.ts --config FILE`.
 * Resolves when `readyPort` accepts TCP connections (or the `ready` log event appears).
 */
export async function startTier(
  name: TierName,
  config: unknown,
  options: { readyPort?: number; host?: string; env?: NodeJS.ProcessEnv; /** Run the compiled `<distDir>/<tier>/main.js` with plain node instead of the .ts source. */ distDir?: string } = {},
): Promise<TierProcess> {
  const dir = mkdtempSync(join(tmpdir(), `hedwig-${name}-`));
  const configFile = join(dir, `${name}.yaml`);
  writeFileSync(configFile, stringify(config));
  const entry = options.distDir ? [join(options.distDir, name, 'main.js')] : ['--import', 'tsx', join(root, name, 'main.ts')];
  const child = spawn(process.execPath, [...entry, '--config', configFile], {
    cwd: root,
    // Every post office and worker of this test file shares one store and workers one stateDir (test/helpers/store.ts) unless the test names its own.
    env: { ...process.env, LOG_LEVEL: 'info', ...testEnvironment(name, config), ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: Array<Record<string, unknown>> = [];
  let pending = '';
  child.stdout!.on('data', (chunk: Buffer) => {
    pending += chunk.toString();
    const lines = pending.split('\n');
    pending = lines.pop() ?? '';
    for (const line of lines) {
      if (!line.trim()) continue;
      try {
        logs.push(JSON.parse(line));
      } catch {
        logs.push({ unparsed: line });
      }
    }
  });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  let exitCode: number | null | undefined;
  void exited.then((code) => {
    exitCode = code;
  });

  const tier: TierProcess = {
    name,
    configFile,
    child,
    logs,
    stderr: () => stderr,
    exited,
    async stop() {
      if (exitCode === undefined) child.kill('SIGTERM');
      return exited;
    },
    async kill() {
      if (exitCode === undefined) child.kill('SIGKILL');
      await exited;
    },
  };

  try {
    await waitFor(
      async () => {
        if (exitCode !== undefined) return true;
        if (options.readyPort) return portOpen(options.host ?? '127.0.0.1', options.readyPort);
        return logs.some((l) => l.event === 'ready' || l.event === 'started');
      },
      { timeoutMs: 20_000, what: `${name} to start` },
    );
    if (exitCode !== undefined) throw new Error(`${name} exited with ${exitCode}: ${stderr.slice(-2000)} ${JSON.stringify(logs.slice(-5))}`);
  } catch (err) {
    await tier.kill();
    throw err;
  }
  return tier;
}
