import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, waitFor } from './ports.ts';

export interface BeanstalkdOptions {
  /** Binlog directory; defaults to a fresh temp dir. Reuse one to test recovery. */
  binlogDir?: string;
  /** `-z`: max job size in bytes (beanstalkd's default is 65,535). */
  maxJobSize?: number;
  /** `-f`: fsync interval in ms (0 = fsync on every write). Default 50. */
  fsyncMs?: number;
  /** Defaults to a free port on 127.0.0.1. */
  port?: number;
}

export interface BeanstalkdProcess {
  host: '127.0.0.1';
  port: number;
  binlogDir: string;
  /** "127.0.0.1:PORT" */
  address: string;
  /** SIGTERM and wait for exit (no-op when already stopped). */
  stop(): Promise<void>;
  /** SIGKILL and wait for exit (no-op when already stopped). */
  kill(): Promise<void>;
  /** Start again on the same port with the same binlog (stops the old process first if still running). */
  restart(): Promise<void>;
  /** stderr of the current process, for assertion messages. */
  stderr(): string;
  /** SIGSTOP (true) or SIGCONT (false) the current process: a beanstalkd that stops answering. */
  freeze(frozen: boolean): void;
}

const host = '127.0.0.1';

/** The pid beanstalkd reports in `stats` on this port, or undefined when nothing answers. */
async function pidServing(port: number): Promise<number | undefined> {
  return new Promise((resolve) => {
    let reply = '';
    const socket = connect({ host, port }, () => socket.write('stats\r\n'));
    const finish = (pid: number | undefined): void => {
      socket.destroy();
      resolve(pid);
    };
    socket.setTimeout(2000, () => finish(undefined));
    socket.on('data', (chunk: Buffer) => {
      reply += chunk.toString('latin1');
      const match = /\npid: (\d+)\n/.exec(reply);
      if (match) finish(Number(match[1]));
    });
    socket.once('error', () => finish(undefined));
    socket.once('close', () => finish(undefined));
  });
}

/** Spawns the real `beanstalkd` on loopback and resolves once its port accepts connections. */
export async function startBeanstalkd(options: BeanstalkdOptions = {}): Promise<BeanstalkdProcess> {
  const binlogDir = options.binlogDir ?? mkdtempSync(join(tmpdir(), 'hedwig-beanstalkd-'));
  const port = options.port ?? (await freePort(host));
  const args = ['-l', host, '-p', String(port), '-b', binlogDir, '-f', String(options.fsyncMs ?? 50)];
  if (options.maxJobSize !== undefined) args.push('-z', String(options.maxJobSize));

  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  let stderr = '';

  async function launch(): Promise<void> {
    stderr = '';
    const proc = spawn('beanstalkd', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    child = proc;
    let running = true;
    exited = new Promise<void>((resolve) => {
      proc.once('exit', () => {
        running = false;
        if (child === proc) child = undefined;
        resolve();
      });
    });
    proc.once('error', (err) => {
      stderr += `spawn error: ${err.message}\n`;
    });
    proc.stderr!.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    try {
      // Ready when *this* process answers on the port, not some other listener or a predecessor.
      await waitFor(
        async () => {
          if (!running) throw new Error(`beanstalkd exited: ${stderr.trim()}`);
          return (await pidServing(port)) === proc.pid;
        },
        { timeoutMs: 10_000, intervalMs: 25, what: `beanstalkd on ${host}:${port}` },
      );
    } catch (err) {
      proc.kill('SIGKILL');
      await exited;
      throw err;
    }
  }

  async function signal(sig: NodeJS.Signals): Promise<void> {
    const proc = child;
    if (!proc) return;
    const done = exited;
    proc.kill(sig);
    await done;
  }

  await launch();

  return {
    host,
    port,
    binlogDir,
    address: `${host}:${port}`,
    stop: () => signal('SIGTERM'),
    kill: () => signal('SIGKILL'),
    async restart() {
      await signal('SIGTERM');
      await launch();
    },
    stderr: () => stderr,
    freeze(frozen) {
      child?.kill(frozen ? 'SIGSTOP' : 'SIGCONT');
    },
  };
}
