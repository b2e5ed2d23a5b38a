import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { ConfigError } from '../../shared/config.ts';
import { TUBE } from '../../shared/job.ts';
import { loadPostofficeConfig } from '../../postoffice/config.ts';
import { isLoopbackHost } from '../../postoffice/server.ts';

const KEY = 'k'.repeat(32);

function yamlFile(text: string): string {
  const path = join(mkdtempSync(join(tmpdir(), 'hedwig-po-config-')), 'postoffice.yaml');
  writeFileSync(path, text);
  return path;
}

function rejects(text: string, key: RegExp, env: NodeJS.ProcessEnv = {}): void {
  assert.throws(() => loadPostofficeConfig(yamlFile(text), env), (err: unknown) => {
    assert.ok(err instanceof ConfigError, String(err));
    assert.match(err.key, key);
    return true;
  });
}

describe('post office configuration', () => {
  it('has documented defaults', () => {
    assert.deepEqual(loadPostofficeConfig(undefined, {}), {
      listen: { host: '127.0.0.1', port: 8025 },
      beanstalk: { servers: [{ host: '127.0.0.1', port: 11300 }], tube: TUBE.outbound, ttrSeconds: 600 },
      limits: { maxMessageBytes: 10_485_760, maxRecipients: 100 },
      uploads: { bodyTimeoutMs: 60_000, maxPendingBodies: 64, maxPendingBodiesPerAddress: 8 },
      authFailures: { windowSeconds: 60, maxPerAddress: 30, maxPerAddressAndFqdn: 10 },
      signatureWindowSeconds: 300,
      idempotencyTtlSeconds: 86_400,
      idempotencyMaxEntries: 100_000,
      legacy: { enabled: true, path: '/' },
      clients: {},
      trustProxy: false,
      status: { enabled: true, tube: 'hedwig-status' },
      store: { url: 'sqlite:data/hedwig.db', timeoutMs: 2000, historySeconds: 604_800, password: undefined },
      storeBufferMaxEntries: 100_000,
      suppression: { enabled: true, ttlSeconds: 2_592_000, exemptHosts: [], exemptSenderDomains: [], webhookTube: 'hedwig-events' },
    });
  });

  it('parses beanstalk servers as host[:port], including IPv6 literals', () => {
    const config = loadPostofficeConfig(yamlFile('beanstalk:\n  servers: ["10.0.0.1", "[::1]:11301", "queue.internal:11400"]\n'), {});
    assert.deepEqual(config.beanstalk.servers, [
      { host: '10.0.0.1', port: 11300 },
      { host: '::1', port: 11301 },
      { host: 'queue.internal', port: 11400 },
    ]);
    rejects('beanstalk:\n  servers: ["host:99999"]\n', /^beanstalk\.servers\.0$/);
    rejects('beanstalk:\n  servers: []\n', /^beanstalk\.servers$/);
  });

  it('reads client keys inline or from a file and lower-cases fqdns and sender domains', () => {
    const keyFile = yamlFile(`${'f'.repeat(40)}\n`);
    const config = loadPostofficeConfig(
      yamlFile(`clients:\n  App1.Example.NET:\n    key: ${KEY}\n    senderDomains: [Example.COM, '*']\n  app2.example.net:\n    keyFile: ${keyFile}\n    senderDomains: [example.org]\n`),
      {},
    );
    assert.deepEqual(config.clients, {
      'app1.example.net': { key: KEY, senderDomains: ['example.com', '*'], checkFromHeader: true },
      'app2.example.net': { key: 'f'.repeat(40), senderDomains: ['example.org'], checkFromHeader: true },
    });
  });

  it('rejects short keys, missing keys, unreadable key files and bad sender domains, naming the key but never echoing it', () => {
    assert.throws(
      () => loadPostofficeConfig(yamlFile('clients:\n  a.example:\n    key: tooshort-secret\n    senderDomains: [example.com]\n'), {}),
      (err: unknown) => err instanceof ConfigError && err.key === 'clients.a.example.key' && !err.message.includes('tooshort-secret'),
    );
    rejects('clients:\n  a.example:\n    senderDomains: [example.com]\n', /^clients\.a\.example\.key$/);
    rejects('clients:\n  a.example:\n    keyFile: /nonexistent/key\n    senderDomains: [example.com]\n', /^clients\.a\.example\.keyFile$/);
    rejects(`clients:\n  a.example:\n    key: ${KEY}\n    senderDomains: ["exa mple.com"]\n`, /^clients\.a\.example\.senderDomains\.0$/);
    rejects(`clients:\n  a.example:\n    key: ${KEY}\n    senderDomains: []\n`, /^clients\.a\.example\.senderDomains$/);
    rejects(`clients:\n  a.example:\n    key: ${KEY}\n    senderDomains: [example.com]\n    extra: 1\n`, /^clients\.a\.example\.extra$/);
  });

  it('rejects unknown keys and accepts environment overrides', () => {
    rejects('limits:\n  maxMesageBytes: 5\n', /^limits\.maxMesageBytes$/);
    const config = loadPostofficeConfig(undefined, { HEDWIG_POSTOFFICE__LISTEN__PORT: '9025', HEDWIG_POSTOFFICE__LEGACY__ENABLED: 'false', HEDWIG_POSTOFFICE__BEANSTALK__SERVERS: '[a:1, b:2]' });
    assert.equal(config.listen.port, 9025);
    assert.equal(config.legacy.enabled, false);
    assert.deepEqual(config.beanstalk.servers, [{ host: 'a', port: 1 }, { host: 'b', port: 2 }]);
  });

  it('requires both tls.cert and tls.key when tls is set', () => {
    rejects('tls:\n  cert: /etc/cert.pem\n', /^tls\.key$/);
  });
});

describe('isLoopbackHost (plain-HTTP warning)', () => {
  it('knows loopback from other addresses', () => {
    for (const host of ['127.0.0.1', '127.1.2.3', '::1', 'localhost']) assert.equal(isLoopbackHost(host), true, host);
    for (const host of ['0.0.0.0', '::', '10.0.0.1', 'postoffice.example.net']) assert.equal(isLoopbackHost(host), false, host);
  });
});
