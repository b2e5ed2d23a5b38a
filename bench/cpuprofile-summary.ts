/**
 * `npx tsx bench/cpuprofile-summary.ts FILE.cpuprofile [TOP]`: what a V8 CPU profile (from
 * `npm run bench -- --profile DIR`, which starts each tier with `--cpu-prof`) spent its time
 * on, as text: the top functions by self time, by file or package, and by total (inclusive)
 * time, each as a share of the time the thread was not idle.
 *
 * V8 samples the JS thread on a wall-clock timer, so "self time" includes time the thread was
 * blocked inside a synchronous native call (node:sqlite waiting for an fsync or a lock, a
 * synchronous log write) or descheduled on a busy machine. `perf record -e cpu-clock` with
 * `NODE_OPTIONS=--perf-basic-prof-only-functions` counts CPU only; compare both before
 * calling a function expensive (the README's "Inline path profile" does).
 */
import { readFileSync } from 'node:fs';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

const root = new URL('..', import.meta.url).pathname;

function shortUrl(url: string): string {
  const path = url.replace(/^file:\/\//, '');
  const nm = path.lastIndexOf('/node_modules/');
  if (nm >= 0) return `nm:${path.slice(nm + '/node_modules/'.length)}`;
  return path.replace(`${root}data/bench/dist/`, '').replace(root, '');
}

function functionKey(frame: CallFrame): string {
  return `${frame.functionName || '(anonymous)'} ${shortUrl(frame.url)}:${frame.lineNumber + 1}`;
}

/** The package (node_modules), the file (ours, node:*), or the function for V8's own entries ((garbage collector), native writes). */
function fileKey(frame: CallFrame): string {
  if (!frame.url) return frame.functionName || '(native)';
  const url = shortUrl(frame.url);
  if (!url.startsWith('nm:')) return url;
  const parts = url.slice(3).split('/');
  return `nm:${parts[0]!.startsWith('@') ? `${parts[0]}/${parts[1]}` : parts[0]}`;
}

export interface ProfileSummary {
  busyMs: number;
  idleMs: number;
  self: Array<[string, number]>;
  files: Array<[string, number]>;
  total: Array<[string, number]>;
}

export function summarize(profile: CpuProfile): ProfileSummary {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  // timeDeltas[i] is the time before sample i: the time of sample i is the next delta.
  const selfById = new Map<number, number>();
  profile.samples.forEach((id, i) => selfById.set(id, (selfById.get(id) ?? 0) + (profile.timeDeltas[i + 1] ?? 0)));
  const self = new Map<string, number>();
  const files = new Map<string, number>();
  const total = new Map<string, number>();
  let idle = 0;
  let busy = 0;
  const add = (m: Map<string, number>, k: string, t: number) => m.set(k, (m.get(k) ?? 0) + t);
  for (const [id, t] of selfById) {
    const frame = byId.get(id)!.callFrame;
    if (frame.functionName === '(idle)') {
      idle += t;
      continue;
    }
    busy += t;
    add(self, functionKey(frame), t);
    add(files, fileKey(frame), t);
    // Inclusive time: each function once per sample, however often it recurses.
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const f = byId.get(cur)!.callFrame;
      if (f.functionName === '(root)') continue;
      const key = functionKey(f);
      if (!seen.has(key)) add(total, key, t);
      seen.add(key);
    }
  }
  const sorted = (m: Map<string, number>) => [...m].sort((a, b) => b[1] - a[1]).map(([k, v]): [string, number] => [k, v / 1000]);
  return { busyMs: busy / 1000, idleMs: idle / 1000, self: sorted(self), files: sorted(files), total: sorted(total) };
}

function print(summary: ProfileSummary, top: number): void {
  const share = (ms: number) => `${((100 * ms) / summary.busyMs).toFixed(1).padStart(5)}%`;
  console.log(`busy ${(summary.busyMs / 1000).toFixed(1)} s, idle ${(summary.idleMs / 1000).toFixed(1)} s (shares below are of busy)`);
  for (const [title, rows] of [
    ['self time by function', summary.self],
    ['self time by file or package', summary.files],
    ['total time by function', summary.total],
  ] as const) {
    console.log(`-- ${title}`);
    for (const [key, ms] of rows.slice(0, top)) console.log(`${share(ms)}  ${key}`);
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [file, top = '25'] = process.argv.slice(2);
  if (!file) {
    console.error('usage: npx tsx bench/cpuprofile-summary.ts FILE.cpuprofile [TOP]');
    process.exit(64);
  }
  print(summarize(JSON.parse(readFileSync(file, 'utf8')) as CpuProfile), Number(top));
}
