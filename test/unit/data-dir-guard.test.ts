/** test/helpers/data-dir-guard.ts, npm test's check that no test writes into the repository's data/. */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { listDataDir, writtenSince } from '../helpers/data-dir-guard.ts';

describe("npm test's data/ guard (test/helpers/data-dir-guard.ts)", () => {
  it('names files that are new or modified since the first listing, and nothing else', () => {
    const dir = mkdtempSync(join(tmpdir(), 'hedwig-guard-'));
    mkdirSync(join(dir, 'local'));
    writeFileSync(join(dir, 'local', 'kept'), 'x');
    writeFileSync(join(dir, 'local', 'touched'), 'x');
    const before = listDataDir(dir);
    writeFileSync(join(dir, 'hedwig.db'), 'x');
    utimesSync(join(dir, 'local', 'touched'), new Date(), new Date(Date.now() + 5000));
    const written = writtenSince(before, listDataDir(dir)).map((p) => p.slice(p.lastIndexOf('hedwig-guard-')).replace(/^hedwig-guard-[^/]+\//, ''));
    assert.deepEqual(written, ['hedwig.db', 'local/touched']);
  });
});
