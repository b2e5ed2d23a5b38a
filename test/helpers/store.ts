import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

let url: string | undefined;
let stateDir: string | undefined;

/**
 * The store of this test file: one SQLite file in a temp dir, shared by every tier the file
 * starts (as one installation's tiers share theirs), and by no other test file, so idempotency
 * keys and suppressions never leak between files or runs.
 */
export function testStoreUrl(): string {
  url ??= `sqlite:${join(mkdtempSync(join(tmpdir(), 'hedwig-store-')), 'store.db')}`;
  return url;
}

/**
 * The worker's stateDir of this test file (MTA-STS policies, TLS-RPT counts): a temp dir, since
 * the default ./data/worker is inside the repository (the data/ guard of `npm test` fails then).
 */
export function testStateDir(): string {
  stateDir ??= mkdtempSync(join(tmpdir(), 'hedwig-worker-state-'));
  return stateDir;
}
