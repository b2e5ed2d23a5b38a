import { execFile } from 'node:child_process';
import { accessSync, chmodSync, constants, existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { processAlive as alive } from './proc.ts';
import { portOpen } from './tiers.ts';

const run = promisify(execFile);

/**
 * A private Postfix instance as a relay beside hedwig, for side-by-side figures: its own
 * config_directory and queue_directory under the bench's run directory, one smtpd on a
 * loopback port, `relayhost` pointing at the bench sink, no local delivery. Started with
 * `postfix -c DIR start` and stopped with `postfix -c DIR stop`; the system's own Postfix
 * (if any) is not touched.
 *
 * Postfix needs root to start: `postfix` and `master` refuse any other user ("the postfix
 * command is reserved for the superuser") and the daemons drop to `mail_owner`. As a
 * normal user the bench runs it through `sudo -n`, so it needs passwordless sudo for
 * /usr/sbin/postfix (and for the clean-up of the queue, which mail_owner owns).
 */
export const POSTFIX = '/usr/sbin/postfix';

export interface PostfixRelayOptions {
  /** The instance's own directory: etc/ (config), queue/, data/ and postfix.log go here. */
  dir: string;
  /** Where it relays everything (the sink). */
  relayhost: { host: string; port: number };
  /** Its EHLO name towards the sink, so the sink can count its arrivals apart. */
  myhostname: string;
  /** The loopback port its smtpd listens on. */
  port: number;
  /** Extra main.cf lines (`name = value`), after the bench's own. */
  mainCf?: Record<string, string>;
}

export interface PostfixRelay {
  port: number;
  configDir: string;
  queueDir: string;
  logFile: string;
  /** The master daemon (its children are smtpd, cleanup, qmgr, smtp, ...). */
  masterPid: number;
  version: string;
  /** How it was started: as root, or through `sudo -n`. */
  privilege: 'root' | 'sudo';
  /** Messages in its queue (incoming, active, deferred, hold); null when the queue is not readable. */
  queued(): number | null;
  /** `postfix -c DIR stop`, then waits for the master to exit; through sudo, also removes what mail_owner owns. */
  stop(): Promise<void>;
  /** The last lines of its log, for error messages. */
  logTail(): string;
}

/** Why Postfix cannot run here, or undefined when it can. */
export async function postfixUnavailable(): Promise<string | undefined> {
  if (!existsSync(POSTFIX)) return `${POSTFIX} is not installed (Debian package postfix: scripts/install-bench-deps.sh)`;
  if (process.getuid?.() === 0) return undefined;
  try {
    await run('sudo', ['-n', POSTFIX, 'status'], { timeout: 10_000 }).catch((err: { code?: unknown; stderr?: string }) => {
      // `postfix status` of the default instance exits 1 when it is not running: sudo itself worked.
      if (typeof err.code === 'number' && !/sudo:/.test(err.stderr ?? '')) return;
      throw err;
    });
    return undefined;
  } catch {
    return 'Postfix must be started as root (its master refuses other users): run the bench as root, or allow passwordless `sudo -n /usr/sbin/postfix` (and `rm` of the run directory) for this user';
  }
}

function mainCf(options: PostfixRelayOptions, queueDir: string, dataDir: string, logFile: string, mailOwner: string): string {
  const settings: Record<string, string> = {
    compatibility_level: '3.6',
    queue_directory: queueDir,
    data_directory: dataDir,
    mail_owner: mailOwner,
    myhostname: options.myhostname,
    myorigin: '$myhostname',
    // A relay only: nothing is delivered on this machine.
    mydestination: '',
    local_transport: 'error:local delivery is disabled',
    local_recipient_maps: '',
    alias_maps: '',
    alias_database: '',
    biff: 'no',
    inet_interfaces: '127.0.0.1',
    inet_protocols: 'ipv4',
    mynetworks: '127.0.0.0/8',
    smtpd_relay_restrictions: 'permit_mynetworks, reject',
    relayhost: `[${options.relayhost.host}]:${options.relayhost.port}`,
    // There is no syslog daemon to count on: log to a file in the instance's directory.
    maillog_file: logFile,
    maillog_file_prefixes: dirname(logFile),
    ...options.mainCf,
  };
  return `${Object.entries(settings)
    .map(([k, v]) => `${k} = ${v}`)
    .join('\n')}\n`;
}

/** Debian's master.cf without chroot (the instance has no copy of /etc in its queue) and with smtpd on one loopback port. */
function masterCf(port: number): string {
  const services = [
    `127.0.0.1:${port} inet n - n - - smtpd`,
    'pickup unix n - n 60 1 pickup',
    'cleanup unix n - n - 0 cleanup',
    'qmgr unix n - n 300 1 qmgr',
    'rewrite unix - - n - - trivial-rewrite',
    'bounce unix - - n - 0 bounce',
    'defer unix - - n - 0 bounce',
    'trace unix - - n - 0 bounce',
    'verify unix - - n - 1 verify',
    'flush unix n - n 1000? 0 flush',
    'proxymap unix - - n - - proxymap',
    'smtp unix - - n - - smtp',
    'relay unix - - n - - smtp',
    'showq unix n - n - - showq',
    'error unix - - n - - error',
    'retry unix - - n - - error',
    'discard unix - - n - - discard',
    'anvil unix - - n - 1 anvil',
    'scache unix - - n - 1 scache',
    'postlog unix-dgram n - n - 1 postlogd',
  ];
  return `${services.join('\n')}\n`;
}

/** Postfix's daemons run as mail_owner and must reach the queue: every directory above it needs o+x. */
function checkTraversable(dir: string): void {
  for (let d = resolve(dir); d !== dirname(d); d = dirname(d)) {
    if ((statSync(d).mode & 0o001) === 0) throw new Error(`postfix: ${d} is not searchable by other users (chmod o+x), so Postfix's mail_owner cannot reach its queue`);
  }
}

function countFiles(dir: string): number {
  let n = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) n += entry.isDirectory() ? countFiles(join(dir, entry.name)) : 1;
  return n;
}

export async function startPostfixRelay(options: PostfixRelayOptions): Promise<PostfixRelay> {
  const why = await postfixUnavailable();
  if (why) throw new Error(`postfix: ${why}`);
  const privilege = process.getuid?.() === 0 ? 'root' : 'sudo';
  const postfix = (args: string[]) => (privilege === 'root' ? run(POSTFIX, args, { timeout: 60_000 }) : run('sudo', ['-n', POSTFIX, ...args], { timeout: 60_000 }));
  const configDir = join(options.dir, 'etc');
  const queueDir = join(options.dir, 'queue');
  const dataDir = join(options.dir, 'data');
  const logFile = join(options.dir, 'log', 'postfix.log');
  mkdirSync(configDir, { recursive: true });
  mkdirSync(queueDir, { recursive: true });
  mkdirSync(dirname(logFile), { recursive: true });
  chmodSync(options.dir, 0o755);
  checkTraversable(queueDir);
  // Postfix's own account when it is installed (Debian's package makes `postfix`).
  writeFileSync(join(configDir, 'main.cf'), mainCf(options, queueDir, dataDir, logFile, 'postfix'));
  writeFileSync(join(configDir, 'master.cf'), masterCf(options.port));
  const logTail = () => {
    try {
      return readFileSync(logFile, 'utf8').split('\n').slice(-15).join('\n');
    } catch {
      return '';
    }
  };
  try {
    await postfix(['-c', configDir, 'start']);
  } catch (err) {
    throw new Error(`postfix -c ${configDir} start failed: ${(err as { stderr?: string }).stderr ?? String(err)}\n${logTail()}`);
  }
  // The master's pid from its start line in the log, which (unlike queue/pid/master.pid) any user may read.
  const masterStarted = () => [...readFileSync(logFile, 'utf8').matchAll(/ postfix\/master\[(\d+)\]: daemon started/g)].pop()?.[1];
  const deadline = Date.now() + 30_000;
  let masterPid = 0;
  while (!masterPid || !(await portOpen(options.port))) {
    if (Date.now() > deadline) throw new Error(`postfix did not listen on 127.0.0.1:${options.port} within 30 s\n${logTail()}`);
    if (!masterPid && existsSync(logFile)) masterPid = Number(masterStarted() ?? 0);
    await new Promise((r) => setTimeout(r, 50));
  }
  const { stdout } = await run('/usr/sbin/postconf', ['-c', configDir, '-h', 'mail_version']);
  return {
    port: options.port,
    configDir,
    queueDir,
    logFile,
    masterPid,
    version: stdout.trim(),
    privilege,
    queued() {
      try {
        accessSync(join(queueDir, 'active'), constants.R_OK);
        return ['incoming', 'active', 'deferred', 'hold'].reduce((sum, q) => sum + countFiles(join(queueDir, q)), 0);
      } catch {
        return null;
      }
    },
    async stop() {
      if (!alive(masterPid)) return;
      await postfix(['-c', configDir, 'stop']).catch(() => undefined);
      const until = Date.now() + 20_000;
      while (alive(masterPid) && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
      if (alive(masterPid)) await postfix(['-c', configDir, 'abort']).catch(() => undefined);
      // The queue belongs to mail_owner: a normal user could not remove the run directory afterwards.
      if (privilege === 'sudo') await run('sudo', ['-n', 'rm', '-rf', queueDir, dataDir]).catch(() => undefined);
    },
    logTail,
  };
}
