import { randomUUID } from 'node:crypto';
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';

/**
 * Writes one file of the worker's state directory (`stateDir`): to a temporary file renamed
 * over the old one, so a crash leaves either the old or the new file. The temporary name is
 * unique per write, not per process: workers that share the directory through one volume
 * are all PID 1 in their containers, and two of them must never write the same temporary file.
 */
export function writeStateFile(dir: string, file: string, data: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const tmp = `${file}.${randomUUID()}.tmp`;
  writeFileSync(tmp, data, { mode: 0o600 });
  renameSync(tmp, file);
}
