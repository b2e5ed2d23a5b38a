import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { SUPPRESSION_RULES } from '../../shared/store/suppression-rules.ts';

const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
const section = readme.slice(readme.indexOf('### The suppression list'), readme.indexOf('### The store'));

describe('README: the suppression list table', () => {
  it('has a row per rule, in the code\'s order, with its verdict and reason', () => {
    const rows = section.split('\n').filter((line) => /^\| (enhanced|any other|5\d\d)/.test(line) || /^\| `5/.test(line));
    assert.equal(rows.length, SUPPRESSION_RULES.length);
    SUPPRESSION_RULES.forEach((rule, i) => {
      const row = rows[i]!;
      if (rule.enhanced !== undefined && rule.enhanced !== '*') assert.ok(row.includes(`\`${rule.enhanced}\``), `${row} names ${rule.enhanced}`);
      if (rule.codes) for (const code of rule.codes) assert.ok(row.includes(`\`${code}\``), `${row} names ${code}`);
      assert.ok(row.includes(`| ${rule.suppress ? 'yes' : 'no'} |`), `${row}: ${rule.suppress}`);
      assert.ok(row.endsWith(`| ${rule.reason} |`), `${row} ends with the reason "${rule.reason}"`);
    });
  });
});
