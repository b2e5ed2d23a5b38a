import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { connect } from 'node:net';
import { HedwigError } from '../shared/errors.ts';
import { formatHostPort } from '../shared/host-port.ts';
import type { Logger } from '../shared/logger.ts';

export interface BeanstalkdOptions {
  binary: string;
  host: string;
  port: number;
  binlogDir: string;
  maxJobSize: number;
  /** fsync interval of the binlog in ms; 0 = fsync after every write. */
  fsyncMs: number;
}

export interface RunningBeanstalkd {
  child: ChildProcess;
  stop(): Promise<void>;
}

async function canConnect(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port }, () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** Starts beanstalkd from PATH for the all-in-one local mode, with its binlog under the data directory. */
export async function startBeanstalkd(options: BeanstalkdOptions, logger: Logger): Promise<RunningBeanstalkd> {
  mkdirSync(options.binlogDir, { recursive: true });
  const args = ['-l', options.host, '-p', String(options.port), '-b', options.binlogDir, '-f', String(options.fsyncMs), '-z', String(options.maxJobSize)];
  // Ctrl-C signals the terminal's whole process group, beanstalkd included, and it would exit
  // at once while the tiers still put and delete jobs. Started with SIGINT ignored (kept
  // across exec, and beanstalkd installs no handler for it), it is stopped by stop(), last.
  const child = spawn('/bin/sh', ['-c', 'trap "" INT; exec "$0" "$@"', options.binary, ...args], { stdio: ['ignore', 'inherit', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const spawnError = new Promise<Error>((resolve) => child.once('error', resolve));

  const deadline = Date.now() + 10_000;
  for (;;) {
    const failed = await Promise.race([spawnError, exited.then((code) => new Error(`exited with ${code}: ${stderr.trim()}`)), new Promise<null>((r) => setTimeout(() => r(null), 100))]);
    if (failed) {
      const hint = (failed as NodeJS.ErrnoException).code === 'ENOENT' ? ' (install it: apt-get install beanstalkd)' : '';
      throw new HedwigError('STARTUP_FAILED', `cannot start ${options.binary}${hint}: ${failed.message}`);
    }
    if (await canConnect(options.host, options.port)) break;
    if (Date.now() > deadline) throw new HedwigError('STARTUP_FAILED', `beanstalkd did not listen on ${formatHostPort(options)} within 10 s`);
  }
  logger.info({ event: 'beanstalkd_started', pid: child.pid, args }, 'beanstalkd started');
  return {
    child,
    async stop() {
      if (child.exitCode !== null) return;
      child.kill('SIGTERM');
      await exited;
    },
  };
}
