import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { errorBody, REJECTION_CODES } from '../../postoffice/rejection.ts';

describe('post office answer codes (postoffice/rejection.ts)', () => {
  it('the README answers table lists exactly the codes of REJECTION_CODES', () => {
    const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
    const start = readme.indexOf('Answers (always JSON');
    const table = readme.slice(start, readme.indexOf('\n\n', readme.indexOf('| status |', start)));
    const listed = table
      .split('\n')
      .filter((line) => line.startsWith('|') && !line.startsWith('| status'))
      .flatMap((line) => [...(line.split('|')[2] ?? '').matchAll(/`([a-z0-9_]+)`/g)].map((m) => m[1]!));
    assert.deepEqual([...new Set(listed)].sort(), Object.keys(REJECTION_CODES).sort());
  });

  it('never sends what is for the log only', () => {
    assert.deepEqual(errorBody({ status: 401, code: 'bad_signature', message: 'no', detail: 'unknown_fqdn', retryAfterSeconds: 5 }), { error: 'bad_signature', message: 'no' });
  });
});
