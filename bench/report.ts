import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release } from 'node:os';
import { dirname, resolve } from 'node:path';
import { round } from './proc.ts';

/** What every bench mode's report says about itself: the commit, the machine, progress on stderr, the JSON on stdout and in --out. */

/** The commit measured, and whether the working tree differed from it. */
export function revision(): { commit: string; dirty: boolean } | null {
  try {
    const commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], { encoding: 'utf8' }).trim() !== '';
    return { commit, dirty };
  } catch {
    return null;
  }
}

export function progress(line: string): void {
  process.stderr.write(`bench: ${line}\n`);
}

export function writeReport(report: unknown, out: string): void {
  const json = JSON.stringify(report, null, 2);
  process.stdout.write(`${json}\n`);
  const file = resolve(out);
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, `${json}\n`);
  progress(`written to ${file}`);
}

export function machineInfo(): Record<string, unknown> {
  return { cpus: cpus().length, cpuModel: cpus()[0]?.model ?? 'unknown', node: process.version, kernel: release(), loadAverageAtStart: loadavg().map((l) => round(l, 2)) };
}
