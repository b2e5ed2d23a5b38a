import { readFileSync } from 'node:fs';
import type { z } from 'zod';

/**
 * Secrets in config files: a key given inline or as a file beside it (`keyFile`, e.g. a Docker
 * secret or a systemd credential), read at start-up, with problems reported as config issues
 * that name the key and never contain the secret. Config loading itself: config.ts.
 */

/** Where a problem with a configured value is: the key path within the config, and what is wrong. */
export interface KeyIssue {
  path: PropertyKey[];
  message: string;
}

/**
 * A secret given inline (`name`) or as a file (`${name}File`, e.g. a Docker secret). A
 * problem is an issue at `[...at, name]` or `[...at, name + "File"]`, so the config error
 * names the key and the file like any other. Trims one trailing newline. Messages never
 * contain the secret, not even one that is too short.
 */
export function readSecret(
  source: { inline: string | undefined; file: string | undefined },
  name: string,
  options: { at?: PropertyKey[]; minLength?: number } = {},
): { ok: true; secret: string } | { ok: false; issue: KeyIssue } {
  const at = options.at ?? [];
  let secret = source.inline;
  if (!secret) {
    if (!source.file) {
      const key = [...at.map(String), name].join('.');
      return { ok: false, issue: { path: [...at, name], message: `either ${key} or ${key}File is required` } };
    }
    try {
      secret = readFileSync(source.file, 'utf8').replace(/\r?\n$/, '');
    } catch (err) {
      return { ok: false, issue: { path: [...at, `${name}File`], message: `cannot read ${source.file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}` } };
    }
  }
  if (options.minLength !== undefined && secret.length < options.minLength) {
    return { ok: false, issue: { path: [...at, name], message: `${name} must be at least ${options.minLength} characters` } };
  }
  return { ok: true, secret };
}

/** readSecret inside a zod transform: a problem becomes an issue of the parse. */
export function resolveSecret(
  source: { inline: string | undefined; file: string | undefined },
  name: string,
  ctx: z.core.$RefinementCtx,
  options: { at?: PropertyKey[]; minLength?: number } = {},
): string | undefined {
  const read = readSecret(source, name, options);
  if (read.ok) return read.secret;
  ctx.addIssue({ code: 'custom', ...read.issue });
  return undefined;
}
