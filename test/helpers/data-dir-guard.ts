/**
 * `npm test`'s global setup (node --test-global-setup): no test may leave files in the
 * repository's data/, which belongs to `npm start` (data/local/) and `npm run bench`
 * (data/bench/). A tier started in a test without its own store once wrote data/hedwig.db
 * there (the default store.url is relative to the working directory), which every later run,
 * and every tier of a developer's `npm start` that used the default, then shared.
 *
 * The directory is listed before the first test file and after the last: a file that is new or
 * was modified in between fails the run (exit code 1) and is named.
 */
import { readdirSync, statSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';

const ROOT = resolve(import.meta.dirname, '..', '..');
const DATA = join(ROOT, 'data');

/** path (relative to the repository) -> mtime in ms, of every file under data/. */
export function listDataDir(dir = DATA): Map<string, number> {
  const files = new Map<string, number>();
  const walk = (at: string): void => {
    let entries;
    try {
      entries = readdirSync(at, { withFileTypes: true });
    } catch {
      return;
    }
    for (const entry of entries) {
      const path = join(at, entry.name);
      if (entry.isDirectory()) walk(path);
      else {
        try {
          files.set(relative(ROOT, path), statSync(path).mtimeMs);
        } catch {
          // removed while we looked
        }
      }
    }
  };
  walk(dir);
  return files;
}

/** The files in `after` that are not in `before` or changed since. */
export function writtenSince(before: ReadonlyMap<string, number>, after: ReadonlyMap<string, number>): string[] {
  return [...after].filter(([path, mtime]) => before.get(path) !== mtime).map(([path]) => path).sort();
}

let before: Map<string, number> | undefined;

export function globalSetup(): void {
  before = listDataDir();
}

export function globalTeardown(): void {
  if (!before) return;
  const written = writtenSince(before, listDataDir());
  if (written.length === 0) return;
  process.stderr.write(
    `\nthe tests wrote into the repository's data/ (a tier or command without a store, spool or state directory of its own; give it a temp dir, test/helpers/store.ts):\n${written.map((p) => `  ${p}`).join('\n')}\n`,
  );
  process.exitCode = 1;
}
