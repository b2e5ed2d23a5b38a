import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join, resolve } from 'node:path';
import { stringify } from 'yaml';

const root = resolve(import.meta.dirname, '..');

export type TierName = 'mailman' | 'postoffice' | 'worker';

/**
 * One tier as its own OS process, started like `npm run <tier>`. Unlike the test harness
 * (test/helpers/tiers.ts), logs go straight to a file: a benchmark of 100,000 messages
 * writes a million log lines, which the bench itself must not parse or hold.
 */
export interface BenchTier {
  name: TierName;
  pid: number;
  logFile: string;
  exited: Promise<number | null>;
  /** SIGTERM and wait for the exit. */
  stop(): Promise<number | null>;
}

/** Whether something accepts TCP connections on 127.0.0.1:port. */
export function portOpen(port: number): Promise<boolean> {
  return new Promise((resolvePort) => {
    const socket = connect({ host: '127.0.0.1', port }, () => {
      socket.destroy();
      resolvePort(true);
    });
    socket.once('error', () => resolvePort(false));
  });
}

function tail(file: string): string {
  try {
    return readFileSync(file, 'utf8').slice(-2000);
  } catch {
    return '';
  }
}

/**
 * How the tiers run: `build` is what the Docker image runs (tsc output, NODE_ENV=production);
 * `tsx` is the development way (`npm run <tier>`), which costs tens of MB of RSS per process.
 */
export type Runtime = 'build' | 'tsx';

export const BUILD_DIR = join(root, 'data', 'bench', 'dist');

/** Compiles the tiers as the Dockerfile does (tsconfig.build.json), into data/bench/dist. */
export function buildTiers(): void {
  execFileSync(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(root, 'tsconfig.build.json'), '--outDir', BUILD_DIR], { cwd: root, stdio: 'inherit' });
}

const TIER_V8_FLAG = '--max-semi-space-size=16';

export async function startBenchTier(name: TierName, config: unknown, options: { dir: string; readyPort: number; logLevel: string; runtime: Runtime; profileDir?: string | undefined }): Promise<BenchTier> {
  mkdirSync(options.dir, { recursive: true });
  const configFile = join(options.dir, `${name}.yaml`);
  const logFile = join(options.dir, `${name}.log`);
  writeFileSync(configFile, stringify(config));
  const log = openSync(logFile, 'a');
  let child: ChildProcess;
  try {
    const entry = options.runtime === 'build' ? [join(BUILD_DIR, name, 'main.js')] : ['--import', 'tsx', join(root, name, 'main.ts')];
    const profile = options.profileDir ? ['--cpu-prof', '--cpu-prof-dir', join(options.profileDir, name)] : [];
    // As the image and the systemd unit run the tiers (Dockerfile: Node 24's young generation is sized from the machine's memory).
    child = spawn(process.execPath, [TIER_V8_FLAG, ...profile, ...entry, '--config', configFile], {
      cwd: root,
      env: { ...process.env, LOG_LEVEL: options.logLevel, ...(options.runtime === 'build' ? { NODE_ENV: 'production' } : {}) },
      stdio: ['ignore', log, log],
    });
  } finally {
    closeSync(log);
  }
  let exitCode: number | null | undefined;
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r((exitCode = code))));
  const deadline = Date.now() + 30_000;
  while (!(await portOpen(options.readyPort))) {
    if (exitCode !== undefined) throw new Error(`${name} exited with ${exitCode} during start-up:\n${tail(logFile)}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`${name} did not open port ${options.readyPort} within 30 s:\n${tail(logFile)}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    name,
    pid: child.pid!,
    logFile,
    exited,
    stop() {
      if (exitCode === undefined) child.kill('SIGTERM');
      return exited;
    },
  };
}
