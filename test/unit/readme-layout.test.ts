import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, it } from 'node:test';

const root = join(import.meta.dirname, '..', '..');
const readme = readFileSync(join(root, 'README.md'), 'utf8');
/** README "Development": from "### Layout" to "### Commands" (the module map). */
const map = readme.slice(readme.indexOf('### Layout'), readme.indexOf('### Commands'));
const named = new Set([...map.matchAll(/`([^`\s]+\.(?:ts|mjs))`/g)].map((m) => m[1]!));

function sources(dir: string): string[] {
  return readdirSync(join(root, dir), { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile() && /\.(ts|mjs)$/.test(entry.name))
    .map((entry) => relative(root, join(entry.parentPath, entry.name)));
}

describe("README's module map", () => {
  it('names every source file of worker/, shared/ and cli/ (by its path, or its path inside that directory)', () => {
    assert.ok(map.length > 1000, 'the Layout section is found');
    const missing = ['worker', 'shared', 'cli'].flatMap(sources).filter((file) => !named.has(file) && !named.has(file.slice(file.indexOf('/') + 1)));
    assert.deepEqual(missing, [], 'files the README module map does not name');
  });

  it('names only files that exist', () => {
    const stale = [...named].filter((path) => path.includes('/') && /^(worker|shared|cli|bench|scripts|mailman|postoffice|deploy|local)\//.test(path) && !existsSync(join(root, path)));
    assert.deepEqual(stale, []);
  });
});
