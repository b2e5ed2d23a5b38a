import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

/**
 * Resource figures of any process on this machine, read from /proc so that every process
 * (node tiers, beanstalkd, the sink) is measured the same way and none has to cooperate.
 */
export interface ProcessFigures {
  /** VmHWM: the highest resident set size the process ever had. */
  peakRssMB: number;
  /** VmRSS at the moment of reading. */
  rssMB: number;
  /** User plus system CPU time since the process started. */
  cpuSeconds: number;
  /** read- and write-type system calls (/proc/PID/io syscr + syscw; 0 when not readable). */
  syscalls?: number;
  /** Voluntary plus involuntary context switches: how often the process went to sleep or was preempted. */
  contextSwitches?: number;
}

function clockTicksPerSecond(): number {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100; // USER_HZ on every mainstream Linux architecture
  }
}

const TICKS = clockTicksPerSecond();

function numberField(status: string, name: string): number {
  const match = new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(status);
  return match ? Number(match[1]) : 0;
}

/** /proc/PID/io needs the right to trace the process (same user, or root): 0 when it is not ours. */
function ioSyscalls(pid: number): number {
  try {
    const io = readFileSync(`/proc/${pid}/io`, 'utf8');
    return numberField(io, 'syscr') + numberField(io, 'syscw');
  } catch {
    return 0;
  }
}

function kbField(status: string, name: string): number {
  const match = new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status);
  return match ? Number(match[1]) : 0;
}

interface StatFields {
  comm: string;
  ppid: number;
  /** utime + stime, seconds. */
  cpuSeconds: number;
  /** cutime + cstime: children that exited and were waited for, seconds. */
  reapedChildrenCpuSeconds: number;
}

function readStat(pid: number | 'self'): StatFields | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may contain spaces; fields after its closing paren are fixed.
    const close = stat.lastIndexOf(')');
    const fields = stat.slice(close + 2).split(' ');
    return {
      comm: stat.slice(stat.indexOf('(') + 1, close),
      ppid: Number(fields[1]),
      cpuSeconds: (Number(fields[11]) + Number(fields[12])) / TICKS,
      reapedChildrenCpuSeconds: (Number(fields[13]) + Number(fields[14])) / TICKS,
    };
  } catch {
    return undefined;
  }
}

/** CPU seconds of this process's children that have exited and been waited for (clients the bench ran). */
export function reapedChildrenCpuSeconds(): number {
  return readStat('self')?.reapedChildrenCpuSeconds ?? 0;
}

/** Undefined when the process is gone (or this is not Linux). */
export function readProcessFigures(pid: number): ProcessFigures | undefined {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const stat = readStat(pid);
    if (!stat) return undefined;
    return {
      peakRssMB: round(kbField(status, 'VmHWM') / 1024),
      rssMB: round(kbField(status, 'VmRSS') / 1024),
      cpuSeconds: round(stat.cpuSeconds, 2),
      syscalls: ioSyscalls(pid),
      contextSwitches: numberField(status, 'voluntary_ctxt_switches') + numberField(status, 'nonvoluntary_ctxt_switches'),
    };
  } catch {
    return undefined;
  }
}

/** The pids whose parent is `ppid`, by command name (from the kernel's list of its children, no /proc scan). */
function childrenOf(ppid: number): Array<{ pid: number; comm: string }> {
  let list: string;
  try {
    list = readFileSync(`/proc/${ppid}/task/${ppid}/children`, 'utf8');
  } catch {
    return [];
  }
  return list
    .split(' ')
    .filter(Boolean)
    .flatMap((entry) => {
      const stat = readStat(Number(entry));
      return stat ? [{ pid: Number(entry), comm: stat.comm }] : [];
    });
}

/** CPU seconds the whole machine spent busy (all processes, all cores) since boot, from /proc/stat. */
export function machineBusySeconds(): number | undefined {
  try {
    const [, ...fields] = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/);
    const [user, nice, system, , , irq, softirq, steal] = fields.map(Number);
    return (user! + nice! + system! + irq! + softirq! + steal!) / TICKS;
  } catch {
    return undefined;
  }
}

/** Whether a process with this pid exists (EPERM: it does, owned by someone else). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export function round(value: number, digits = 1): number {
  const factor = 10 ** digits;
  return Math.round(value * factor) / factor;
}

/** A group of processes (a daemon and the children it runs) as one entry of the report. */
export interface GroupFigures extends ProcessFigures {
  /** Processes seen in the group over its life. */
  processes: number;
}

interface Tree {
  prefix: string;
  rootPid: number;
  /** Last figures of every child ever seen, by pid (kept after the child exits). */
  children: Map<number, { name: string; figures: ProcessFigures; live: boolean }>;
  /** Children's CPU the samples missed (the part after a child's last sample, before it exited). */
  unsampledCpuSeconds: number;
}

/**
 * Keeps the latest figures of each watched process, sampling at `intervalMs`, so the
 * figures survive a process that exits (or is killed) before the report is written.
 * `watchChildren` follows a daemon that runs short-lived children (Postfix's master):
 * children are grouped by command name, and what they used after their last sample is
 * recovered from the daemon's own count of its reaped children (cutime + cstime).
 */
export class ProcessWatcher {
  readonly #pids = new Map<string, number>();
  readonly #last = new Map<string, ProcessFigures>();
  readonly #trees: Tree[] = [];
  readonly #timer: NodeJS.Timeout;

  constructor(intervalMs = 250) {
    this.#timer = setInterval(() => this.sample(), intervalMs);
    this.#timer.unref();
  }

  watch(name: string, pid: number): void {
    this.#pids.set(name, pid);
    this.sample();
  }

  /** Watches `rootPid` as `<prefix>.<its command>` and each child as `<prefix>.<child command>`. */
  watchChildren(prefix: string, rootPid: number): void {
    this.#trees.push({ prefix, rootPid, children: new Map(), unsampledCpuSeconds: 0 });
    this.sample();
  }

  sample(): void {
    for (const [name, pid] of this.#pids) {
      const figures = readProcessFigures(pid);
      if (figures) this.#last.set(name, figures);
    }
    for (const tree of this.#trees) this.#sampleTree(tree);
  }

  #sampleTree(tree: Tree): void {
    const root = readStat(tree.rootPid);
    if (!root) return;
    const rootFigures = readProcessFigures(tree.rootPid);
    if (rootFigures) this.#last.set(`${tree.prefix}.${root.comm}`, rootFigures);
    for (const child of tree.children.values()) child.live = false;
    for (const { pid, comm } of childrenOf(tree.rootPid)) {
      const figures = readProcessFigures(pid);
      if (figures) tree.children.set(pid, { name: `${tree.prefix}.${comm}`, figures, live: true });
    }
    // Exact CPU of the children that exited = what the root reaped; the samples saw part of it.
    let sampledExited = 0;
    for (const child of tree.children.values()) if (!child.live) sampledExited += child.figures.cpuSeconds;
    tree.unsampledCpuSeconds = Math.max(0, root.reapedChildrenCpuSeconds - sampledExited);
  }

  report(): Record<string, ProcessFigures | GroupFigures> {
    this.sample();
    const out: Record<string, ProcessFigures | GroupFigures> = Object.fromEntries([...this.#pids.keys()].map((name) => [name, this.#last.get(name)!]).filter(([, f]) => f));
    for (const tree of this.#trees) {
      for (const [name, figures] of this.#last) if (name.startsWith(`${tree.prefix}.`)) out[name] = { ...figures, processes: 1 };
      for (const { name, figures, live } of tree.children.values()) {
        // rssMB of a group: its live processes now; peakRssMB: the largest any one of them had.
        const rssMB = live ? figures.rssMB : 0;
        const group = out[name] as GroupFigures | undefined;
        out[name] = group
          ? {
              peakRssMB: Math.max(group.peakRssMB, figures.peakRssMB),
              rssMB: round(group.rssMB + rssMB),
              cpuSeconds: round(group.cpuSeconds + figures.cpuSeconds, 2),
              syscalls: (group.syscalls ?? 0) + (figures.syscalls ?? 0),
              contextSwitches: (group.contextSwitches ?? 0) + (figures.contextSwitches ?? 0),
              processes: group.processes + 1,
            }
          : { ...figures, rssMB, processes: 1 };
      }
      out[`${tree.prefix}.exited-unsampled`] = { peakRssMB: 0, rssMB: 0, cpuSeconds: round(tree.unsampledCpuSeconds, 2), processes: 0 };
    }
    return out;
  }

  stop(): void {
    clearInterval(this.#timer);
  }
}
