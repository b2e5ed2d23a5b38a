import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readdirSync, readFileSync, rmdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { waitFor } from './ports.ts';

/**
 * A Docker engine of the test's own: Debian's dockerd started by hand with its data root,
 * exec root (and with it its own containerd), pidfile and socket under a temp dir, no bridge,
 * no iptables, no IP forwarding or masquerading, and cgroups under a parent of its own. So it
 * shares nothing with a Docker the machine may run, and changes nothing in the host's network:
 * containers use host networking. `stop()` stops it by its PID.
 */
export interface DockerEngine {
  dir: string;
  /** `unix://<dir>/docker.sock`, for DOCKER_HOST. */
  host: string;
  pid: number;
  env: NodeJS.ProcessEnv;
  log(): string;
  stop(): Promise<void>;
}

export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

export const DOCKERD = '/usr/sbin/dockerd';
/** Debian's client, whatever else is first on PATH. */
export const DOCKER = '/usr/bin/docker';
export const DOCKER_COMPOSE = '/usr/bin/docker-compose';

export function run(command: string, args: string[], options: { env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number; input?: string } = {}): Promise<CommandResult> {
  return new Promise((resolve) => {
    const child = execFile(command, args, { env: options.env ?? process.env, cwd: options.cwd, timeout: options.timeoutMs ?? 60_000, maxBuffer: 64 * 1024 * 1024, encoding: 'utf8' }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : 1) : 0;
      resolve({ code, stdout, stderr: err && code === 1 && !stderr ? String(err.message) : stderr });
    });
    // A command that exits without reading its input must not fail the writer (EPIPE).
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(options.input ?? '');
  });
}

/** Why no engine can run here, or undefined when it might. */
export function dockerUnavailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'dockerd needs root';
  for (const file of [DOCKERD, DOCKER, DOCKER_COMPOSE]) {
    if (!existsSync(file)) return `${file} is missing (scripts/install-docker.sh installs docker.io and docker-compose)`;
  }
  return undefined;
}

/** Starts the engine; resolves once it answers, or rejects with the end of its log. */
export async function startDockerEngine(): Promise<DockerEngine> {
  const dir = mkdtempSync('/tmp/hedwig-dockerd-');
  const host = `unix://${dir}/docker.sock`;
  const logFile = join(dir, 'dockerd.log');
  const cgroupParent = `hedwig-test-${process.pid}`;
  const fd = openSync(logFile, 'a');
  const child: ChildProcess = spawn(
    DOCKERD,
    [
      '--bridge=none', '--iptables=false', '--ip6tables=false', '--ip-forward=false', '--ip-masq=false',
      '--data-root', join(dir, 'data'), '--exec-root', join(dir, 'exec'), '--pidfile', join(dir, 'dockerd.pid'),
      '--host', host, '--exec-opt', 'native.cgroupdriver=cgroupfs', '--cgroup-parent', cgroupParent,
      '--storage-driver', 'overlay2', '--log-level', 'warn',
    ],
    { stdio: ['ignore', fd, fd] },
  );
  closeSync(fd);
  let exited: number | null | undefined;
  const gone = new Promise<void>((resolve) => child.once('exit', (code) => ((exited = code), resolve())));
  const env = { ...process.env, DOCKER_HOST: host };
  const log = () => (existsSync(logFile) ? readFileSync(logFile, 'utf8') : '');

  async function stop(): Promise<void> {
    if (exited === undefined) {
      child.kill('SIGTERM');
      const killed = setTimeout(() => child.kill('SIGKILL'), 30_000);
      await gone;
      clearTimeout(killed);
    }
    // Empty cgroups its containers left behind, then the engine's files.
    for (const controller of existsSync('/sys/fs/cgroup') ? readdirSync('/sys/fs/cgroup') : []) {
      const parent = join('/sys/fs/cgroup', controller, cgroupParent);
      if (!existsSync(parent)) continue;
      for (const entry of readdirSync(parent, { withFileTypes: true })) if (entry.isDirectory()) rmdirQuietly(join(parent, entry.name));
      rmdirQuietly(parent);
    }
    // dockerd leaves its netns/default bind mount (and, when killed, overlay mounts) behind.
    const mounts = readFileSync('/proc/self/mounts', 'utf8').split('\n').map((line) => line.split(' ')[1] ?? '').filter((point) => point.startsWith(`${dir}/`));
    for (const point of mounts.sort((a, b) => b.length - a.length)) await run('umount', ['-l', point], { timeoutMs: 10_000 });
    try {
      rmSync(dir, { recursive: true, force: true });
    } catch {
      // A mount left by a killed engine; the temp dir stays for a human to look at.
    }
  }

  try {
    await waitFor(async () => exited !== undefined || (await run(DOCKER, ['version', '--format', '{{.Server.Version}}'], { env, timeoutMs: 5_000 })).code === 0, {
      timeoutMs: 60_000,
      intervalMs: 250,
      what: 'dockerd to answer',
    });
    if (exited !== undefined) throw new Error(`dockerd exited with ${exited}`);
  } catch (err) {
    const tail = log().split('\n').slice(-15).join('\n');
    await stop();
    throw new Error(`${(err as Error).message}\n${tail}`);
  }
  return { dir, host, pid: child.pid!, env, log, stop };
}

function rmdirQuietly(path: string): void {
  try {
    rmdirSync(path);
  } catch {
    // still in use or already gone
  }
}
