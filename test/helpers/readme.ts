import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';

const README = resolve(import.meta.dirname, '..', '..', 'README.md');

/**
 * The README's shell line that signs `message.json` and posts it with curl, exactly as
 * written there (tests run it with bash: FQDN, KEY and URL from the environment, the
 * body in ./message.json). Read from the README so the documented recipe is the tested one.
 */
export function readmeSignedCurl(): string {
  const line = readFileSync(README, 'utf8')
    .split('\n')
    .find((l) => l.startsWith('ts=$(date +%s); digest='));
  if (!line) throw new Error('README.md has no signed curl recipe (a line starting with ts=$(date +%s); digest=)');
  return line;
}
