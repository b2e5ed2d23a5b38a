import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { HedwigError } from './errors.ts';
import { parseHostPort } from './host-port.ts';

/**
 * Configuration is read once at start-up: a YAML file, then environment overrides,
 * then one zod parse. Everything after this point works with the typed result.
 *
 * Environment overrides: `<PREFIX>_<PATH>` where nested keys are joined by `__` and
 * each segment is SCREAMING_SNAKE for a camelCase key, e.g.
 * `POSTOFFICE_LISTEN__PORT=8080` sets `listen.port`. Values are parsed as YAML
 * scalars/flow collections, so `8080`, `true` and `[a, b]` keep their types.
 */
export class ConfigError extends HedwigError {
  readonly file: string;
  readonly key: string;
  constructor(file: string, key: string, message: string) {
    super('CONFIG_INVALID', `config error in ${file}: ${key}: ${message}`);
    this.name = 'ConfigError';
    this.file = file;
    this.key = key;
  }
}

export interface LoadConfigOptions {
  /** Path of the YAML file; omitted means defaults plus environment only. */
  file?: string | undefined;
  /** Environment variable prefix without the trailing underscore, e.g. `POSTOFFICE`. */
  envPrefix: string;
  env?: NodeJS.ProcessEnv;
}

type Tree = Record<string, unknown>;

function snakeToCamel(segment: string): string {
  return segment.toLowerCase().replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

function setPath(tree: Tree, path: string[], value: unknown): void {
  let node = tree;
  for (const [i, key] of path.entries()) {
    if (i === path.length - 1) {
      node[key] = value;
      return;
    }
    const next = node[key];
    if (next === null || typeof next !== 'object' || Array.isArray(next)) node[key] = {};
    node = node[key] as Tree;
  }
}

export function loadConfig<S extends z.ZodType>(schema: S, options: LoadConfigOptions): z.infer<S> {
  const env = options.env ?? process.env;
  const file = options.file ? resolve(options.file) : '(defaults)';
  let tree: Tree = {};
  if (options.file) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw new ConfigError(file, '(file)', `cannot read: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
    }
    let parsed: unknown;
    try {
      parsed = parseYaml(text);
    } catch (err) {
      throw new ConfigError(file, '(file)', `invalid YAML: ${(err as Error).message.split('\n')[0]}`);
    }
    if (parsed !== null && parsed !== undefined) {
      if (typeof parsed !== 'object' || Array.isArray(parsed)) throw new ConfigError(file, '(root)', 'expected a mapping');
      tree = parsed as Tree;
    }
  }

  const fromEnv = new Map<string, string>();
  const prefix = `${options.envPrefix}_`;
  for (const [name, raw] of Object.entries(env)) {
    if (!name.startsWith(prefix) || raw === undefined || name === `${options.envPrefix}_CONFIG`) continue;
    const path = name.slice(prefix.length).split('__').map(snakeToCamel);
    let value: unknown;
    try {
      value = parseYaml(raw);
    } catch {
      value = raw;
    }
    setPath(tree, path, value ?? raw);
    fromEnv.set(path.join('.'), name);
  }

  const result = schema.safeParse(tree);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    const key = issue.path.map(String).join('.') || '(root)';
    const envName = [...fromEnv.entries()].find(([p]) => key === p || key.startsWith(`${p}.`))?.[1];
    throw new ConfigError(envName ? `environment ${envName}` : file, key, issue.message);
  }
  return result.data;
}

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

/** A `host[:port]` config value, parsed into an address with the port in range. */
export function hostPortSchema(defaultPort: number) {
  return z.string().transform((value, ctx) => {
    try {
      const address = parseHostPort(value, defaultPort);
      if (!Number.isInteger(address.port) || address.port < 1 || address.port > 65535) throw new Error('port out of range');
      return address;
    } catch {
      ctx.addIssue({ code: 'custom', message: `not a host[:port]: ${value}` });
      return z.NEVER;
    }
  });
}

/** `--config FILE` on the command line, else `<PREFIX>_CONFIG`, else none. */
export function configFileFromArgs(argv: string[], envPrefix: string, env: NodeJS.ProcessEnv = process.env): string | undefined {
  const i = argv.indexOf('--config');
  if (i >= 0 && argv[i + 1]) return argv[i + 1];
  const eq = argv.find((a) => a.startsWith('--config='));
  if (eq) return eq.slice('--config='.length);
  return env[`${envPrefix}_CONFIG`] || undefined;
}
