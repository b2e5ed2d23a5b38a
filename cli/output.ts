/** Plain-text output helpers: aligned tables, short durations, a progress bar. */

export function table(headers: string[], rows: Array<Array<string | number>>): string {
  const cells = [headers, ...rows.map((row) => row.map(String))];
  const widths = headers.map((_, i) => Math.max(...cells.map((row) => (row[i] ?? '').length)));
  const numeric = headers.map((_, i) => rows.length > 0 && rows.every((row) => typeof row[i] === 'number'));
  return cells
    .map((row) =>
      row
        .map((cell, i) => (numeric[i] ? cell.padStart(widths[i]!) : cell.padEnd(widths[i]!)))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

/** 0s, 45s, 12m, 3h05m, 2d04h: the two largest units, enough to read at a glance. */
export function formatAge(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return '-';
  const seconds = Math.max(0, Math.floor(ms / 1000));
  const d = Math.floor(seconds / 86_400);
  const h = Math.floor((seconds % 86_400) / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  const two = (n: number) => String(n).padStart(2, '0');
  if (d > 0) return `${d}d${two(h)}h`;
  if (h > 0) return `${h}h${two(m)}m`;
  if (m > 0) return `${m}m${two(s)}s`;
  return `${s}s`;
}

export function isoTime(ms: number | undefined): string {
  return ms === undefined ? '-' : new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

export function oneLine(text: string, max = 100): string {
  const flat = text.replace(/[\x00-\x1f\x7f]+/g, ' ').trim();
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
}

export interface Progress {
  tick(count?: number): void;
  done(): void;
}

/**
 * A one-line progress bar on stderr, drawn only on a terminal. Hand-written: it is a dozen
 * lines, and a progress-bar package would be a dependency for one `\r`.
 */
export function progressBar(stream: NodeJS.WritableStream & { isTTY?: boolean }, label: string, total: number): Progress {
  if (!stream.isTTY || total <= 0) return { tick() {}, done() {} };
  const width = 30;
  let count = 0;
  let lastDrawn = -1;
  const draw = () => {
    const shown = Math.min(count, total);
    const filled = Math.round((shown / total) * width);
    if (filled === lastDrawn && shown !== total) return;
    lastDrawn = filled;
    stream.write(`\r${label} [${'#'.repeat(filled)}${' '.repeat(width - filled)}] ${shown}/${total}`);
  };
  draw();
  return {
    tick(n = 1) {
      count += n;
      draw();
    },
    done() {
      stream.write('\n');
    },
  };
}
