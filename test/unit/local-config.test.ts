/**
 * `npm start` (local/run.ts with local/*.yaml) keeps everything it writes under ./data/local:
 * the store, the host key, mailman's spool, the worker's stateDir (beanstalkd's binlog is
 * local/run.ts's own). Nothing of it may land in ./data itself, where the tiers' defaults
 * point (data/hedwig.db, data/worker).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, it } from 'node:test';
import { parse } from 'yaml';
import { loadWorkerConfig } from '../../worker/config.ts';

const local = resolve(import.meta.dirname, '..', '..', 'local');

/** Every string value in a config tree, with its path. */
function strings(tree: unknown, path = ''): Array<[string, string]> {
  if (typeof tree === 'string') return [[path, tree]];
  if (tree && typeof tree === 'object') return Object.entries(tree).flatMap(([key, value]) => strings(value, path ? `${path}.${key}` : key));
  return [];
}

describe("local mode's configs", () => {
  it('name only files under data/local', () => {
    for (const tier of ['postoffice', 'worker', 'mailman']) {
      const files = strings(parse(readFileSync(join(local, `${tier}.yaml`), 'utf8'))).filter(([, value]) => /(^|:)(\.\/)?data\//.test(value));
      assert.ok(files.length > 0, `${tier}.yaml names its files`);
      for (const [path, value] of files) assert.match(value, /^(sqlite:)?(\.\/)?data\/local\//, `${tier}.yaml ${path}`);
    }
  });

  it("give the worker's stateDir and store a place under data/local, not the defaults ./data/worker and data/hedwig.db", () => {
    const worker = loadWorkerConfig(join(local, 'worker.yaml'), {});
    assert.match(worker.stateDir, /^(\.\/)?data\/local\//);
    assert.match(worker.store.url, /^sqlite:data\/local\//);
  });
});
