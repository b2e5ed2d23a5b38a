import { dkimEnrolment } from '../key-generator.ts';
import { workerConfigSchema } from '../worker/config.ts';

/**
 * The worker's `dkim` config block for the bench's sender domain, or undefined when this
 * worker cannot sign (its config schema has no `dkim` key yet). The key is made the way
 * an operator makes it, with key-generator's DKIM enrolment.
 */
export function benchDkimConfig(domain: string, dir: string, baseConfig: Record<string, unknown>): Record<string, unknown> | undefined {
  const selector = 'bench';
  const { keyFile } = dkimEnrolment(domain, selector, 2048, dir);
  const dkim = { [domain]: { selector, keyFile } };
  return workerConfigSchema.safeParse({ ...baseConfig, dkim }).success ? dkim : undefined;
}
