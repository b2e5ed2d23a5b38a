/** Nearest-rank percentiles (no interpolation): p99 is a latency some message really had. */
export interface Percentiles {
  count: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

export function percentiles(values: ArrayLike<number>): Percentiles | null {
  const sorted = Float64Array.from(values).filter((v) => !Number.isNaN(v)).sort();
  if (sorted.length === 0) return null;
  const rank = (p: number) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
  const r = (v: number) => Math.round(v * 10) / 10;
  return { count: sorted.length, p50: r(rank(50)), p90: r(rank(90)), p99: r(rank(99)), max: r(sorted[sorted.length - 1]!) };
}

export function perSecond(count: number, fromMs: number, toMs: number): number {
  const seconds = (toMs - fromMs) / 1000;
  return seconds > 0 ? Math.round(count / seconds) : 0;
}
