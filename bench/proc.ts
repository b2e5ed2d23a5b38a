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
}

function clockTicksPerSecond(): number {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100; // USER_HZ on every mainstream Linux architecture
  }
}

const TICKS = clockTicksPerSecond();

function kbField(status: string, name: string): number {
  const match = new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status);
  return match ? Number(match[1]) : 0;
}

/** Undefined when the process is gone (or this is not Linux). */
export function readProcessFigures(pid: number): ProcessFigures | undefined {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may contain spaces; fields after its closing paren are fixed.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const utime = Number(fields[11]);
    const stime = Number(fields[12]);
    return {
      peakRssMB: round(kbField(status, 'VmHWM') / 1024),
      rssMB: round(kbField(status, 'VmRSS') / 1024),
      cpuSeconds: round((utime + stime) / TICKS),
    };
  } catch {
    return undefined;
  }
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

export function round(value: number, digits = 1): number {
  const factor = 10 ** digits;
  return Math.round(value * factor) / factor;
}

/**
 * Keeps the latest figures of each watched process, sampling once a second, so the
 * figures survive a process that exits (or is killed) before the report is written.
 */
export class ProcessWatcher {
  readonly #pids = new Map<string, number>();
  readonly #last = new Map<string, ProcessFigures>();
  readonly #timer: NodeJS.Timeout;

  constructor(intervalMs = 1000) {
    this.#timer = setInterval(() => this.sample(), intervalMs);
    this.#timer.unref();
  }

  watch(name: string, pid: number): void {
    this.#pids.set(name, pid);
    this.sample();
  }

  sample(): void {
    for (const [name, pid] of this.#pids) {
      const figures = readProcessFigures(pid);
      if (figures) this.#last.set(name, figures);
    }
  }

  report(): Record<string, ProcessFigures> {
    this.sample();
    return Object.fromEntries([...this.#pids.keys()].map((name) => [name, this.#last.get(name)!]).filter(([, f]) => f));
  }

  stop(): void {
    clearInterval(this.#timer);
  }
}
