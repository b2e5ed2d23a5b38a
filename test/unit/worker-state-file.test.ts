import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { writeStateFile } from '../../worker/state-file.ts';

describe('writeStateFile', () => {
  it('creates the directory (0700) and the file (0600), and leaves no temporary file', () => {
    const dir = join(mkdtempSync(join(tmpdir(), 'hedwig-state-')), 'worker');
    const file = join(dir, 'state.json');
    writeStateFile(dir, file, '{"v":1}');
    writeStateFile(dir, file, '{"v":2}');
    assert.equal(readFileSync(file, 'utf8'), '{"v":2}');
    assert.equal(statSync(dir).mode & 0o777, 0o700);
    assert.equal(statSync(file).mode & 0o777, 0o600);
    assert.deepEqual(readdirSync(dir), ['state.json']);
  });

  it('never writes the temporary file of another process with the same PID (workers in containers are all PID 1)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'hedwig-state-'));
    const file = join(dir, 'state.json');
    // Another container's worker, also PID 1, in the middle of its write: a per-PID name would collide.
    mkdirSync(`${file}.${process.pid}.tmp`);
    writeStateFile(dir, file, 'mine');
    assert.equal(readFileSync(file, 'utf8'), 'mine');
  });
});
