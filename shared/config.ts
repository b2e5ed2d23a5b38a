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
 * Environment overrides live in a namespace of their own, `HEDWIG_<TIER>__<PATH>`, nested
 * keys joined by `__`, each segment SCREAMING_SNAKE for a camelCase key:
 * `HEDWIG_POSTOFFICE__LISTEN__PORT=8080` sets `listen.port`. Values are parsed as YAML
 * scalars/flow collections, so `8080`, `true` and `[a, b]` keep their types. The double
 * underscore after the tier is what keeps other people's variables out: Kubernetes injects
 * `<SERVICE>_PORT`, `<SERVICE>_SERVICE_HOST`, `<SERVICE>_PORT_<n>_TCP_ADDR`, ... for every
 * Service (a Service named `hedwig-postoffice` gives `HEDWIG_POSTOFFICE_PORT`), Docker links
 * `<ALIAS>_PORT_*` and `<ALIAS>_ENV_*`; none of them can contain `__` right after a tier
 * name. Inside the namespace a misspelt key is an error naming the variable.
 *
 * The names of the previous release (`POSTOFFICE_LISTEN__PORT`) still apply, with a warning,
 * but only where they name a key of the schema with a valid value: anything else under the
 * old prefix (Kubernetes' `POSTOFFICE_PORT=tcp://...`, an operator's `WORKER_ID`) is ignored,
 * so an old name can never stop a tier.
 */

/** The tiers whose settings the environment can carry; `HEDWIG_<OTHER>__...` draws a warning. */
export const CONFIG_TIERS = ['postoffice', 'mailman', 'worker'] as const;

/** One bad key: where it came from (a file path or `environment VAR`), which key, what is wrong. */
export interface ConfigIssue {
  source: string;
  key: string;
  message: string;
}

export class ConfigError extends HedwigError {
  /** Every problem found, in the order zod reports them; never empty. */
  readonly issues: ConfigIssue[];
  constructor(issues: ConfigIssue[]) {
    super('CONFIG_INVALID', configErrorMessage(issues));
    this.name = 'ConfigError';
    this.issues = issues;
  }
  /** Source of the first issue: the file path or `environment VAR`. */
  get file(): string {
    return this.issues[0]!.source;
  }
  /** Key of the first issue. */
  get key(): string {
    return this.issues[0]!.key;
  }
}

function configErrorMessage(issues: ConfigIssue[]): string {
  const line = (issue: ConfigIssue) => `${issue.source}: ${issue.key}: ${issue.message}`;
  if (issues.length === 1) return `config error in ${line(issues[0]!)}`;
  return `${issues.length} config errors: ${issues.map(line).join('; ')}`;
}

/** Something in the environment worth an operator's attention that did not stop the tier. */
export interface ConfigWarning {
  event: 'config_deprecated_variable' | 'config_unknown_tier';
  variable: string;
  /** The variable to use instead, for a deprecated one. */
  replacement?: string;
  message: string;
}

export interface LoadConfigOptions {
  /** Path of the YAML file; omitted means defaults plus environment only. */
  file?: string | undefined;
  /** Whose settings: `postoffice` reads `HEDWIG_POSTOFFICE__*`. */
  tier: string;
  env?: NodeJS.ProcessEnv;
  onWarning?: ((warning: ConfigWarning) => void) | undefined;
}

/** `HEDWIG_POSTOFFICE__`: every variable starting with it sets a key of that tier. */
export function envNamespace(tier: string): string {
  return `HEDWIG_${tier.toUpperCase()}__`;
}

/** `HEDWIG_POSTOFFICE_CONFIG`: the config file, when there is no `--config`. */
export function configFileVariable(tier: string): string {
  return `HEDWIG_${tier.toUpperCase()}_CONFIG`;
}

/** The variable that sets `path` (camelCase keys) for `tier`, e.g. `HEDWIG_MAILMAN__ALLOWED_NETWORKS`. */
export function envVariableFor(tier: string, path: string): string {
  return envNamespace(tier) + path.split('.').map((key) => key.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase()).join('__');
}

type Tree = Record<string, unknown>;

interface Override {
  variable: string;
  path: string[];
  value: unknown;
}

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

function parseValue(raw: string): unknown {
  try {
    return parseYaml(raw) ?? raw;
  } catch {
    return raw;
  }
}

function isPrefix(prefix: readonly PropertyKey[], path: readonly PropertyKey[]): boolean {
  return prefix.length <= path.length && prefix.every((key, i) => String(key) === String(path[i]));
}

/** A zod issue as keys: `unrecognized_keys` names each unknown key at its full path. */
function issueKeys(issue: z.core.$ZodIssue): Array<{ path: string[]; message: string; unknown: boolean }> {
  const at = issue.path.map(String);
  if (issue.code === 'unrecognized_keys') return issue.keys.map((key) => ({ path: [...at, key], message: 'unknown key', unknown: true }));
  return [{ path: at, message: issue.message, unknown: false }];
}

function readFileTree(file: string): Tree {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError([{ source: file, key: '(file)', message: `cannot read: ${(err as NodeJS.ErrnoException).code ?? String(err)}` }]);
  }
  let parsed: unknown;
  try {
    parsed = parseYaml(text);
  } catch (err) {
    throw new ConfigError([{ source: file, key: '(file)', message: `invalid YAML: ${(err as Error).message.split('\n')[0]}` }]);
  }
  if (parsed === null || parsed === undefined) return {};
  if (typeof parsed !== 'object' || Array.isArray(parsed)) throw new ConfigError([{ source: file, key: '(root)', message: 'expected a mapping' }]);
  return parsed as Tree;
}

/** The overrides of the tier's namespace, plus issues for variables that cannot be a key path. */
function namespaceOverrides(tier: string, env: NodeJS.ProcessEnv, onWarning: LoadConfigOptions['onWarning']): { overrides: Override[]; issues: ConfigIssue[] } {
  const namespace = envNamespace(tier);
  const overrides: Override[] = [];
  const issues: ConfigIssue[] = [];
  for (const [variable, raw] of Object.entries(env)) {
    if (raw === undefined) continue;
    if (variable.startsWith(namespace)) {
      const segments = variable.slice(namespace.length).split('__');
      if (segments.some((segment) => !/^[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*$/.test(segment))) {
        issues.push({ source: `environment ${variable}`, key: segments.join('__') || '(none)', message: `not a key path: write ${namespace}KEY__NESTED_KEY (segments joined by __)` });
        continue;
      }
      overrides.push({ variable, path: segments.map(snakeToCamel), value: parseValue(raw) });
      continue;
    }
    const other = /^HEDWIG_([A-Z0-9_]+?)__/.exec(variable)?.[1]?.toLowerCase();
    if (onWarning && other && !(CONFIG_TIERS as readonly string[]).includes(other)) {
      onWarning({ event: 'config_unknown_tier', variable, message: `${variable} names no hedwig tier (${CONFIG_TIERS.join(', ')}); ignored` });
    }
  }
  return { overrides, issues };
}

/** `POSTOFFICE_LISTEN__PORT` and the like, the names of the previous release, as candidates. */
function legacyCandidates(tier: string, env: NodeJS.ProcessEnv, taken: Override[]): Override[] {
  const prefix = `${tier.toUpperCase()}_`;
  const candidates: Override[] = [];
  for (const [variable, raw] of Object.entries(env)) {
    if (raw === undefined || !variable.startsWith(prefix) || variable === `${prefix}CONFIG`) continue;
    const segments = variable.slice(prefix.length).split('__');
    if (segments.some((segment) => !/^[A-Z0-9]+(?:_[A-Z0-9]+)*$/.test(segment))) continue;
    const path = segments.map(snakeToCamel);
    // The new name of the same key wins.
    if (taken.some((o) => isPrefix(o.path, path) || isPrefix(path, o.path))) continue;
    candidates.push({ variable, path, value: parseValue(raw) });
  }
  return candidates;
}

function treeWith(base: Tree, overrides: Override[]): Tree {
  const tree = structuredClone(base);
  for (const override of overrides) setPath(tree, override.path, structuredClone(override.value));
  return tree;
}

/**
 * Keeps the legacy variables that name a key of the schema with a valid value: one trial
 * parse with all of them, then each one is judged by the issues at or around its path.
 */
function acceptedLegacy(schema: z.ZodType, base: Tree, overrides: Override[], candidates: Override[], tier: string, onWarning: LoadConfigOptions['onWarning']): Override[] {
  if (candidates.length === 0) return [];
  const trial = schema.safeParse(treeWith(base, [...candidates, ...overrides]));
  const problems = trial.success ? [] : trial.error.issues.flatMap(issueKeys);
  const accepted: Override[] = [];
  for (const candidate of candidates) {
    const related = problems.filter((p) => isPrefix(p.path, candidate.path) || isPrefix(candidate.path, p.path));
    // An unknown key on the way to it: somebody else's variable (Kubernetes, Docker links, a shell).
    if (related.some((p) => p.unknown && isPrefix(p.path, candidate.path))) continue;
    const replacement = `${envNamespace(tier)}${candidate.variable.slice(tier.length + 1)}`;
    if (related.length > 0) {
      onWarning?.({ event: 'config_deprecated_variable', variable: candidate.variable, replacement, message: `${candidate.variable} ignored (${related[0]!.message}); deprecated name, use ${replacement}` });
      continue;
    }
    onWarning?.({ event: 'config_deprecated_variable', variable: candidate.variable, replacement, message: `${candidate.variable} is deprecated and will be ignored in the next release: use ${replacement}` });
    accepted.push(candidate);
  }
  return accepted;
}

export function loadConfig<S extends z.ZodType>(schema: S, options: LoadConfigOptions): z.infer<S> {
  const env = options.env ?? process.env;
  const file = options.file ? resolve(options.file) : '(defaults)';
  const base = options.file ? readFileTree(file) : {};

  const { overrides, issues } = namespaceOverrides(options.tier, env, options.onWarning);
  const legacy = acceptedLegacy(schema, base, overrides, legacyCandidates(options.tier, env, overrides), options.tier, options.onWarning);
  const applied = [...legacy, ...overrides];

  const result = schema.safeParse(treeWith(base, applied));
  if (result.success && issues.length === 0) return result.data;
  for (const problem of result.success ? [] : result.error.issues.flatMap(issueKeys)) {
    // The most specific variable on the key's path set it; otherwise the file did.
    const from = applied.filter((o) => isPrefix(o.path, problem.path)).sort((a, b) => b.path.length - a.path.length)[0];
    issues.push({ source: from ? `environment ${from.variable}` : file, key: problem.path.join('.') || '(root)', message: problem.message });
  }
  throw new ConfigError(issues);
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

/**
 * `--config FILE` on the command line, else `HEDWIG_<TIER>_CONFIG`, else the previous
 * release's `<TIER>_CONFIG` (with a warning), else none.
 */
export function configFileFromArgs(argv: string[], tier: string, env: NodeJS.ProcessEnv = process.env, onWarning?: (warning: ConfigWarning) => void): string | undefined {
  const i = argv.indexOf('--config');
  if (i >= 0 && argv[i + 1]) return argv[i + 1];
  const eq = argv.find((a) => a.startsWith('--config='));
  if (eq) return eq.slice('--config='.length);
  const variable = configFileVariable(tier);
  if (env[variable]) return env[variable];
  const legacy = `${tier.toUpperCase()}_CONFIG`;
  if (env[legacy]) {
    onWarning?.({ event: 'config_deprecated_variable', variable: legacy, replacement: variable, message: `${legacy} is deprecated and will be ignored in the next release: use ${variable}` });
    return env[legacy];
  }
  return undefined;
}
