import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { BeanstalkError } from '../../shared/beanstalk-protocol.ts';
import { ERROR_CODES, errorCode, HedwigError } from '../../shared/errors.ts';

describe('error codes', () => {
  it('the README lists exactly the codes of ERROR_CODES, each with its meaning', () => {
    const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
    const section = readme.slice(readme.indexOf('### Error codes'), readme.indexOf('<!-- /section:development -->'));
    const rows = [...section.matchAll(/^\| `([A-Z_]+)` \| (.*) \|$/gm)].map((m) => [m[1]!, m[2]!] as const);
    assert.deepEqual(rows.map(([code]) => code).sort(), Object.keys(ERROR_CODES).sort());
    assert.deepEqual(Object.fromEntries(rows), { ...ERROR_CODES });
  });

  it('errorCode reads the code of ours and of library errors alike', () => {
    assert.equal(errorCode(new HedwigError('STARTUP_FAILED', 'x')), 'STARTUP_FAILED');
    assert.equal(errorCode(new BeanstalkError('NOT_FOUND', 'x')), 'NOT_FOUND');
    assert.equal(errorCode(Object.assign(new Error('x'), { code: 'ECONNECTION' })), 'ECONNECTION');
    assert.equal(errorCode('plain string'), undefined);
  });
});
