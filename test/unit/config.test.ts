import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { z } from 'zod';
import { ConfigError, configFileFromArgs, loadConfig } from '../../shared/config.ts';

const schema = z.object({
  listen: z.object({ host: z.string().default('127.0.0.1'), port: z.number().int().min(1).max(65535).default(8025) }).default({ host: '127.0.0.1', port: 8025 }),
  servers: z.array(z.string()).default(['127.0.0.1:11300']),
  maxMessageBytes: z.number().int().positive().default(1024),
}).strict();

function file(text: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'hedwig-config-'));
  const path = join(dir, 'test.yaml');
  writeFileSync(path, text);
  return path;
}

describe('configuration loading', () => {
  it('applies defaults when there is no file', () => {
    assert.deepEqual(loadConfig(schema, { envPrefix: 'T', env: {} }), { listen: { host: '127.0.0.1', port: 8025 }, servers: ['127.0.0.1:11300'], maxMessageBytes: 1024 });
  });

  it('reads YAML and lets the environment override nested camelCase keys with typed values', () => {
    const path = file('listen:\n  port: 9000\nmaxMessageBytes: 10\n');
    const config = loadConfig(schema, { file: path, envPrefix: 'T', env: { T_LISTEN__PORT: '9100', T_MAX_MESSAGE_BYTES: '20', T_SERVERS: '[a:1, b:2]', OTHER: 'x' } });
    assert.deepEqual(config, { listen: { host: '127.0.0.1', port: 9100 }, servers: ['a:1', 'b:2'], maxMessageBytes: 20 });
  });

  it('names the file and the key of an invalid value', () => {
    const path = file('listen:\n  port: "eighty"\n');
    assert.throws(() => loadConfig(schema, { file: path, envPrefix: 'T', env: {} }), (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      assert.equal(err.code, 'CONFIG_INVALID');
      assert.equal(err.key, 'listen.port');
      assert.equal(err.file, path);
      assert.match(err.message, new RegExp(`${path}: listen\\.port: `));
      return true;
    });
  });

  it('names the environment variable when the bad value came from there', () => {
    assert.throws(() => loadConfig(schema, { envPrefix: 'T', env: { T_LISTEN__PORT: '70000' } }), /environment T_LISTEN__PORT: listen\.port/);
  });

  it('rejects unknown keys (typos) by name', () => {
    const path = file('maxMesageBytes: 5\n');
    assert.throws(() => loadConfig(schema, { file: path, envPrefix: 'T', env: {} }), /maxMesageBytes|\(root\)/);
  });

  it('reports unreadable files and invalid YAML with the file name', () => {
    assert.throws(() => loadConfig(schema, { file: '/nonexistent/hedwig.yaml', envPrefix: 'T', env: {} }), /\/nonexistent\/hedwig\.yaml: \(file\): cannot read: ENOENT/);
    assert.throws(() => loadConfig(schema, { file: file('listen: [\n'), envPrefix: 'T', env: {} }), /test\.yaml: \(file\): invalid YAML/);
  });

  it('finds the config file from --config or <PREFIX>_CONFIG', () => {
    assert.equal(configFileFromArgs(['node', 'main.ts', '--config', 'a.yaml'], 'T', {}), 'a.yaml');
    assert.equal(configFileFromArgs(['node', 'main.ts', '--config=b.yaml'], 'T', {}), 'b.yaml');
    assert.equal(configFileFromArgs(['node', 'main.ts'], 'T', { T_CONFIG: 'c.yaml' }), 'c.yaml');
    assert.equal(configFileFromArgs(['node', 'main.ts'], 'T', {}), undefined);
  });
});
