import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, waitFor } from './ports.ts';

/**
 * A throwaway PostgreSQL (Debian's `postgresql` package) on 127.0.0.1 and a port the OS
 * picked, its data directory in a temp dir. PostgreSQL refuses to run as root, so under root
 * (CI) it runs as the package's `postgres` user. fsync is off: these tests check hedwig's
 * SQL, not the disk's durability (commits are still synchronous: a killed server keeps them).
 */
export interface PostgresProcess {
  url: string;
  port: number;
  /** Immediate shutdown (SIGQUIT: no checkpoint, connections cut), for outage tests. */
  kill(): Promise<void>;
  /** Start again on the same port and data directory. */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

export function postgresBinDir(): string | undefined {
  const root = '/usr/lib/postgresql';
  if (!existsSync(root)) return undefined;
  const versions = readdirSync(root).filter((v) => existsSync(join(root, v, 'bin', 'postgres'))).sort((a, b) => Number(b) - Number(a));
  return versions[0] ? join(root, versions[0], 'bin') : undefined;
}

export function postgresAvailable(): boolean {
  return postgresBinDir() !== undefined;
}

const asRoot = process.getuid?.() === 0;

function asPostgres(command: string, args: string[]): [string, string[]] {
  return asRoot ? ['runuser', ['-u', 'postgres', '--', command, ...args]] : [command, args];
}

/** `durable`: fsync and full-page writes on, as in production (tests turn them off for speed; bench/store-bench.ts does not). */
export async function startPostgres(options: { durable?: boolean } = {}): Promise<PostgresProcess> {
  const bin = postgresBinDir();
  if (!bin) throw new Error('PostgreSQL is not installed (Debian package postgresql; scripts/install-debian-deps.sh)');
  const dir = mkdtempSync(join(tmpdir(), 'hedwig-pg-'));
  const data = join(dir, 'data');
  if (asRoot) {
    const pg = spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' });
    const uid = Number(pg.stdout.trim());
    const gid = Number(spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).stdout.trim());
    chownSync(dir, uid, gid);
  }
  const [initCmd, initArgs] = asPostgres(join(bin, 'initdb'), ['-D', data, '-U', 'hedwig', '--auth=trust', '-E', 'UTF8', '--locale=C']);
  const init = spawnSync(initCmd, initArgs, { encoding: 'utf8' });
  if (init.status !== 0) throw new Error(`initdb failed: ${init.stderr || init.stdout}`);
  const port = await freePort();
  let child: ChildProcess | undefined;
  let stderr = '';

  const start = async (): Promise<void> => {
    const [cmd, args] = asPostgres(join(bin, 'postgres'), ['-D', data, '-h', '127.0.0.1', '-p', String(port), '-k', dir, ...(options.durable ? [] : ['-c', 'fsync=off', '-c', 'full_page_writes=off'])]);
    stderr = '';
    const started = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    started.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child = started;
    await waitFor(() => stderr.includes('ready to accept connections') || started.exitCode !== null, { timeoutMs: 30_000, what: 'postgres to start' });
    if (started.exitCode !== null) throw new Error(`postgres exited: ${stderr}`);
  };
  // Signals go to the postmaster itself (its pid file), not to runuser in front of it.
  const signal = async (sig: NodeJS.Signals): Promise<void> => {
    const running = child;
    if (!running || running.exitCode !== null) return;
    const exited = new Promise((r) => running.once('exit', r));
    const pid = Number(readFileSync(join(data, 'postmaster.pid'), 'utf8').split('\n')[0]);
    process.kill(pid, sig);
    await exited;
  };
  await start();
  const createdb = spawnSync(join(bin, 'createdb'), ['-h', '127.0.0.1', '-p', String(port), '-U', 'hedwig', 'hedwig'], { encoding: 'utf8' });
  if (createdb.status !== 0) throw new Error(`createdb failed: ${createdb.stderr}`);
  return {
    url: `postgres://hedwig@127.0.0.1:${port}/hedwig`,
    port,
    kill: () => signal('SIGQUIT'),
    async restart() {
      await signal('SIGTERM');
      await start();
    },
    async stop() {
      await signal('SIGTERM');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
