import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { z } from 'zod';
import { ConfigError, configFileFromArgs, envVariableFor, loadConfig, type ConfigWarning } from '../../shared/config.ts';

const schema = z.object({
  listen: z.object({ host: z.string().default('127.0.0.1'), port: z.number().int().min(1).max(65535).default(8025) }).strict().default({ host: '127.0.0.1', port: 8025 }),
  servers: z.array(z.string()).default(['127.0.0.1:11300']),
  maxMessageBytes: z.number().int().positive().default(1024),
}).strict();

const DEFAULTS = { listen: { host: '127.0.0.1', port: 8025 }, servers: ['127.0.0.1:11300'], maxMessageBytes: 1024 };

function file(text: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'hedwig-config-'));
  const path = join(dir, 'test.yaml');
  writeFileSync(path, text);
  return path;
}

function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
    return err;
  }
  assert.fail('expected a ConfigError');
}

/** Variables Kubernetes puts into every pod for Services named postoffice, mailman, worker and beanstalkd. */
const KUBERNETES_ENV = {
  POSTOFFICE_PORT: 'tcp://10.96.0.10:8025',
  POSTOFFICE_SERVICE_HOST: '10.96.0.10',
  POSTOFFICE_SERVICE_PORT: '8025',
  POSTOFFICE_PORT_8025_TCP: 'tcp://10.96.0.10:8025',
  POSTOFFICE_PORT_8025_TCP_PROTO: 'tcp',
  POSTOFFICE_PORT_8025_TCP_PORT: '8025',
  POSTOFFICE_PORT_8025_TCP_ADDR: '10.96.0.10',
  TEST_PORT: 'tcp://10.96.0.11:8025',
  TEST_SERVICE_HOST: '10.96.0.11',
  TEST_SERVICE_PORT_HTTPS: '8025',
  // A Service named hedwig-test: one underscore after the tier, never two.
  HEDWIG_TEST_PORT: 'tcp://10.96.0.12:8025',
  HEDWIG_TEST_SERVICE_HOST: '10.96.0.12',
  HEDWIG_TEST_PORT_8025_TCP_ADDR: '10.96.0.12',
};

describe('configuration loading', () => {
  it('applies defaults when there is no file', () => {
    assert.deepEqual(loadConfig(schema, { tier: 'test', env: {} }), DEFAULTS);
  });

  it('reads YAML and lets HEDWIG_<TIER>__ variables override nested camelCase keys with typed values', () => {
    const path = file('listen:\n  port: 9000\nmaxMessageBytes: 10\n');
    const config = loadConfig(schema, { file: path, tier: 'test', env: { HEDWIG_TEST__LISTEN__PORT: '9100', HEDWIG_TEST__MAX_MESSAGE_BYTES: '20', HEDWIG_TEST__SERVERS: '[a:1, b:2]', OTHER: 'x' } });
    assert.deepEqual(config, { listen: { host: '127.0.0.1', port: 9100 }, servers: ['a:1', 'b:2'], maxMessageBytes: 20 });
    assert.equal(envVariableFor('test', 'listen.port'), 'HEDWIG_TEST__LISTEN__PORT');
    assert.equal(envVariableFor('postoffice', 'limits.maxMessageBytes'), 'HEDWIG_POSTOFFICE__LIMITS__MAX_MESSAGE_BYTES');
  });

  it('names the file and the key of an invalid value', () => {
    const path = file('listen:\n  port: "eighty"\n');
    const err = configError(() => loadConfig(schema, { file: path, tier: 'test', env: {} }));
    assert.equal(err.code, 'CONFIG_INVALID');
    assert.equal(err.key, 'listen.port');
    assert.equal(err.file, path);
    assert.match(err.message, new RegExp(`^config error in ${path}: listen\\.port: `));
  });

  it('names the environment variable when the bad value came from there', () => {
    assert.throws(() => loadConfig(schema, { tier: 'test', env: { HEDWIG_TEST__LISTEN__PORT: '70000' } }), /environment HEDWIG_TEST__LISTEN__PORT: listen\.port/);
  });

  it('lists every bad key at once, each with its file or variable', () => {
    const path = file('listen:\n  port: "eighty"\n  hots: x\nmaxMesageBytes: 5\n');
    const err = configError(() => loadConfig(schema, { file: path, tier: 'test', env: { HEDWIG_TEST__MAX_MESSAGE_BYTES: '-1', HEDWIG_TEST__SERVRES: '[a]', HEDWIG_TEST__LISTEN__PROT: '1' } }));
    const found = err.issues.map((i) => `${i.source} | ${i.key}`).sort();
    assert.deepEqual(found, [
      `${path} | listen.hots`,
      `${path} | listen.port`,
      `${path} | maxMesageBytes`,
      'environment HEDWIG_TEST__LISTEN__PROT | listen.prot',
      'environment HEDWIG_TEST__MAX_MESSAGE_BYTES | maxMessageBytes',
      'environment HEDWIG_TEST__SERVRES | servres',
    ]);
    assert.equal(err.issues.find((i) => i.key === 'servres')!.message, 'unknown key');
    assert.match(err.message, /^6 config errors: /);
    for (const issue of err.issues) assert.ok(err.message.includes(`${issue.source}: ${issue.key}: ${issue.message}`), issue.key);
  });

  it('refuses a variable in the namespace that is no key path', () => {
    for (const variable of ['HEDWIG_TEST__', 'HEDWIG_TEST__LISTEN____PORT', 'HEDWIG_TEST__LISTEN___PORT', 'HEDWIG_TEST__LISTEN__']) {
      const err = configError(() => loadConfig(schema, { tier: 'test', env: { [variable]: '1' } }));
      assert.equal(err.file, `environment ${variable}`);
      assert.match(err.message, /not a key path/);
    }
  });

  it('rejects unknown keys (typos) by name', () => {
    const err = configError(() => loadConfig(schema, { file: file('maxMesageBytes: 5\n'), tier: 'test', env: {} }));
    assert.equal(err.key, 'maxMesageBytes');
    assert.match(err.message, /maxMesageBytes: unknown key$/);
  });

  it('reports unreadable files and invalid YAML with the file name', () => {
    assert.throws(() => loadConfig(schema, { file: '/nonexistent/hedwig.yaml', tier: 'test', env: {} }), /\/nonexistent\/hedwig\.yaml: \(file\): cannot read: ENOENT/);
    assert.throws(() => loadConfig(schema, { file: file('listen: [\n'), tier: 'test', env: {} }), /test\.yaml: \(file\): invalid YAML/);
  });

  it("ignores every variable outside the tier's namespace: Kubernetes service links, other tiers, WORKER_ID", () => {
    const warnings: ConfigWarning[] = [];
    const env = { ...KUBERNETES_ENV, WORKER_ID: '7', MAILMAN_HOST: 'mx.example', HEDWIG_OTHER_THING: 'x', HEDWIG_MAILMAN__LISTEN__PORT: 'not for this tier' };
    assert.deepEqual(loadConfig(schema, { tier: 'test', env, onWarning: (w) => warnings.push(w) }), DEFAULTS);
    assert.deepEqual(warnings, []);
  });

  it('warns about HEDWIG_<X>__ variables where X is no tier', () => {
    const warnings: ConfigWarning[] = [];
    assert.deepEqual(loadConfig(schema, { tier: 'test', env: { HEDWIG_POSTOFICE__LISTEN__PORT: '1' }, onWarning: (w) => warnings.push(w) }), DEFAULTS);
    assert.deepEqual(warnings.map((w) => [w.event, w.variable]), [['config_unknown_tier', 'HEDWIG_POSTOFICE__LISTEN__PORT']]);
  });

  describe("the previous release's names (<TIER>_<PATH>)", () => {
    it('still apply, with a warning naming the new variable, when they name a key with a valid value', () => {
      const warnings: ConfigWarning[] = [];
      const config = loadConfig(schema, { tier: 'test', env: { TEST_LISTEN__PORT: '9100', TEST_MAX_MESSAGE_BYTES: '20' }, onWarning: (w) => warnings.push(w) });
      assert.deepEqual(config, { ...DEFAULTS, listen: { host: '127.0.0.1', port: 9100 }, maxMessageBytes: 20 });
      assert.deepEqual(warnings.map((w) => [w.event, w.variable, w.replacement]).sort(), [
        ['config_deprecated_variable', 'TEST_LISTEN__PORT', 'HEDWIG_TEST__LISTEN__PORT'],
        ['config_deprecated_variable', 'TEST_MAX_MESSAGE_BYTES', 'HEDWIG_TEST__MAX_MESSAGE_BYTES'],
      ]);
    });

    it('lose to the new name of the same key', () => {
      const config = loadConfig(schema, { tier: 'test', env: { TEST_LISTEN__PORT: '9100', HEDWIG_TEST__LISTEN__PORT: '9200' } });
      assert.equal(config.listen.port, 9200);
    });

    it('never stop a tier: unknown ones (Kubernetes) are ignored silently, bad values with a warning', () => {
      const warnings: ConfigWarning[] = [];
      const config = loadConfig(schema, { tier: 'test', env: { ...KUBERNETES_ENV, TEST_LISTEN__PORT: 'tcp://10.96.0.10:8025', TEST_LISTEN__HOST: '0.0.0.0' }, onWarning: (w) => warnings.push(w) });
      assert.deepEqual(config, { ...DEFAULTS, listen: { host: '0.0.0.0', port: 8025 } });
      assert.deepEqual(warnings.map((w) => w.variable).sort(), ['TEST_LISTEN__HOST', 'TEST_LISTEN__PORT']);
      assert.match(warnings.find((w) => w.variable === 'TEST_LISTEN__PORT')!.message, /ignored/);
    });
  });

  it('finds the config file from --config, HEDWIG_<TIER>_CONFIG, or (deprecated, with a warning) <TIER>_CONFIG', () => {
    assert.equal(configFileFromArgs(['node', 'main.ts', '--config', 'a.yaml'], 'test', {}), 'a.yaml');
    assert.equal(configFileFromArgs(['node', 'main.ts', '--config=b.yaml'], 'test', {}), 'b.yaml');
    assert.equal(configFileFromArgs(['node', 'main.ts'], 'test', { HEDWIG_TEST_CONFIG: 'c.yaml', TEST_CONFIG: 'old.yaml' }), 'c.yaml');
    const warnings: ConfigWarning[] = [];
    assert.equal(configFileFromArgs(['node', 'main.ts'], 'test', { TEST_CONFIG: 'old.yaml' }, (w) => warnings.push(w)), 'old.yaml');
    assert.deepEqual(warnings.map((w) => w.replacement), ['HEDWIG_TEST_CONFIG']);
    assert.equal(configFileFromArgs(['node', 'main.ts'], 'test', {}), undefined);
    // HEDWIG_TEST_CONFIG is the file, not a key; loadConfig does not see it as one.
    assert.deepEqual(loadConfig(schema, { tier: 'test', env: { HEDWIG_TEST_CONFIG: 'c.yaml' } }), DEFAULTS);
  });
});
