/**
 * Start-up as a supervisor sees it: each tier as its own process (`<tier>/main.ts`), its exit
 * code, and its first log lines. Configuration errors exit 2 and list every bad key; transient
 * failures (a port taken, a port not allowed) exit 1; the variables Kubernetes injects for
 * Services named like our tiers stop nothing. deploy/hedwig-mailman.service is checked against
 * the exit codes the real processes give.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { stringify } from 'yaml';
import { EXIT_CONFIG, EXIT_TRANSIENT } from '../../shared/lifecycle.ts';
import { startBeanstalkd, type BeanstalkdProcess } from '../helpers/beanstalkd.ts';
import { kubernetesHedwigEnv } from '../helpers/kubernetes-env.ts';
import { freePort, waitFor } from '../helpers/ports.ts';

const root = resolve(import.meta.dirname, '..', '..');
const KEY = 'f00dfeed'.repeat(8);
type Tier = 'postoffice' | 'mailman' | 'worker';

interface Outcome {
  /** Exit code, or undefined when the tier was still running once ready (then it was stopped). */
  code: number | undefined;
  logs: Array<Record<string, unknown>>;
  stderr: string;
}

/**
 * Starts `<tier>/main.ts --config FILE` with only `env` (plus PATH) and waits until it exits
 * or logs that it is ready; a ready tier is stopped with SIGTERM.
 */
async function startOnce(tier: Tier, config: unknown, env: Record<string, string>, options: { uid?: number } = {}): Promise<Outcome> {
  const dir = mkdtempSync(join(tmpdir(), `hedwig-startup-${tier}-`));
  const file = join(dir, `${tier}.yaml`);
  writeFileSync(file, stringify(config));
  if (options.uid !== undefined) {
    chmodSync(dir, 0o755);
    chmodSync(file, 0o644);
  }
  const child = spawn(process.execPath, ['--import', 'tsx', join(root, tier, 'main.ts'), '--config', file], {
    cwd: root,
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    ...(options.uid !== undefined ? { uid: options.uid, gid: options.uid } : {}),
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  let code: number | null | undefined;
  const exited = new Promise<void>((done) => child.once('exit', (c) => ((code = c), done())));
  const logs = () => stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
  try {
    await waitFor(() => code !== undefined || logs().some((l) => l.event === 'ready' || l.event === 'started'), { timeoutMs: 30_000, what: `${tier} to start or exit` });
  } finally {
    if (code === undefined) {
      child.kill('SIGTERM');
      await exited;
      code = undefined;
    }
  }
  return { code: code ?? undefined, logs: logs(), stderr };
}

function listen(port: number): Promise<Server> {
  return new Promise((done, fail) => {
    const server = createServer();
    server.once('error', fail);
    server.listen(port, '127.0.0.1', () => done(server));
  });
}

describe('start-up exit codes and the environment', { timeout: 180_000 }, () => {
  let beanstalkd: BeanstalkdProcess;
  const spool = mkdtempSync(join(tmpdir(), 'hedwig-startup-spool-'));

  /** Minimal valid configs on loopback, ports picked by the OS. */
  async function configs(): Promise<Record<Tier, Record<string, unknown>>> {
    return {
      // The store in memory: the default file would land in the working directory (the repository).
      postoffice: { listen: { host: '127.0.0.1', port: await freePort() }, beanstalk: { servers: [beanstalkd.address] }, store: { url: 'sqlite::memory:' } },
      mailman: {
        listen: { host: '127.0.0.1', port: await freePort() },
        ops: { host: '127.0.0.1', port: await freePort() },
        postoffice: { url: `http://127.0.0.1:${await freePort()}`, fqdn: 'app1.example.com', key: KEY },
        spool: { dir: spool },
      },
      worker: { beanstalk: { servers: [beanstalkd.address] }, concurrency: 1, ops: { host: '127.0.0.1', port: await freePort() }, store: { url: 'sqlite::memory:' } },
    };
  }

  before(async () => {
    beanstalkd = await startBeanstalkd();
  });
  after(() => beanstalkd?.stop());

  it('starts every tier with the variables Kubernetes injects for Services named postoffice, mailman, worker and beanstalkd', async () => {
    const all = await configs();
    for (const tier of ['postoffice', 'mailman', 'worker'] as const) {
      const outcome = await startOnce(tier, all[tier], kubernetesHedwigEnv());
      assert.equal(outcome.code, undefined, `${tier} exited ${outcome.code}: ${JSON.stringify(outcome.logs.slice(-3))} ${outcome.stderr}`);
      const warnings = outcome.logs.filter((l) => String(l.event).startsWith('config_'));
      assert.deepEqual(warnings, [], `${tier}: Kubernetes' variables are none of our business`);
    }
  });

  it('exits 2 on a configuration error, with one line listing every bad key and where it came from', async () => {
    const { postoffice } = await configs();
    const outcome = await startOnce('postoffice', { ...postoffice, listen: { ...(postoffice.listen as object), prot: 1 } }, {
      HEDWIG_POSTOFFICE__LIMITS__MAX_RECIPIENTS: '-1',
      HEDWIG_POSTOFFICE__TRUST_PROXI: 'true',
    });
    assert.equal(outcome.code, EXIT_CONFIG, outcome.stderr);
    const failed = outcome.logs.filter((l) => l.event === 'startup_failed');
    assert.equal(failed.length, 1, JSON.stringify(outcome.logs));
    const errors = (failed[0]!.errors as Array<{ source: string; key: string }>).map((e) => `${e.source.replace(/^\/.*\//, '')} ${e.key}`).sort();
    assert.deepEqual(errors, ['environment HEDWIG_POSTOFFICE__LIMITS__MAX_RECIPIENTS limits.maxRecipients', 'environment HEDWIG_POSTOFFICE__TRUST_PROXI trustProxi', 'postoffice.yaml listen.prot']);
    assert.equal(failed[0]!.exitCode, EXIT_CONFIG);
    assert.match(String(failed[0]!.msg), /^3 config errors: /);
    assert.doesNotMatch(outcome.stderr + JSON.stringify(outcome.logs), /\n\s+at /, 'no stack trace');
  });

  it('exits 2 when a file the config names cannot be read', async () => {
    const { postoffice } = await configs();
    const outcome = await startOnce('postoffice', { ...postoffice, tls: { cert: '/nonexistent/postoffice.crt', key: '/nonexistent/postoffice.key' } }, {});
    assert.equal(outcome.code, EXIT_CONFIG);
    assert.match(String(outcome.logs.find((l) => l.event === 'startup_failed')?.msg), /tls\.cert \/nonexistent\/postoffice\.crt: ENOENT/);
  });

  it('exits 1 when the port it listens on is taken (EADDRINUSE), every tier', async () => {
    const all = await configs();
    const taken: Record<Tier, number> = {
      postoffice: (all.postoffice.listen as { port: number }).port,
      mailman: (all.mailman.listen as { port: number }).port,
      worker: (all.worker.ops as { port: number }).port,
    };
    for (const tier of ['postoffice', 'mailman', 'worker'] as const) {
      const holder = await listen(taken[tier]);
      try {
        const outcome = await startOnce(tier, all[tier], {});
        assert.equal(outcome.code, EXIT_TRANSIENT, `${tier}: ${JSON.stringify(outcome.logs.slice(-3))}`);
        const failed = outcome.logs.find((l) => l.event === 'startup_failed');
        assert.match(JSON.stringify(failed), /EADDRINUSE/, tier);
        assert.equal(failed!.exitCode, EXIT_TRANSIENT);
      } finally {
        await new Promise((done) => holder.close(done));
      }
      // The same configuration starts once the port is free again: a retry is the right answer.
      assert.equal((await startOnce(tier, all[tier], {})).code, undefined, `${tier} starts on the freed port`);
    }
  });

  it('exits 1 when it may not bind its port (EACCES: a port below 1024 without the capability)', async (t) => {
    if (process.getuid?.() !== 0) {
      t.skip('needs root to start the tier as an unprivileged user');
      return;
    }
    const { postoffice } = await configs();
    // Nothing is bound: the kernel refuses the unprivileged bind before looking at the port.
    const outcome = await startOnce('postoffice', { ...postoffice, listen: { host: '127.0.0.1', port: 25 } }, { HOME: '/tmp' }, { uid: 65534 });
    assert.equal(outcome.code, EXIT_TRANSIENT, `${JSON.stringify(outcome.logs.slice(-3))} ${outcome.stderr}`);
    assert.match(JSON.stringify(outcome.logs.find((l) => l.event === 'startup_failed')), /EACCES/);
  });

  it("keeps the previous release's variable names working for one release, with a warning", async () => {
    const { mailman } = await configs();
    const port = await freePort();
    const outcome = await startOnce('mailman', mailman, { MAILMAN_LISTEN__PORT: String(port) });
    assert.equal(outcome.code, undefined);
    assert.equal(outcome.logs.find((l) => l.event === 'ready')?.port, port);
    const warning = outcome.logs.find((l) => l.event === 'config_deprecated_variable');
    assert.equal(warning?.variable, 'MAILMAN_LISTEN__PORT');
    assert.equal(warning?.replacement, 'HEDWIG_MAILMAN__LISTEN__PORT');
  });

  describe('deploy/hedwig-mailman.service', () => {
    const unit = readFileSync(join(root, 'deploy', 'hedwig-mailman.service'), 'utf8');
    const setting = (key: string) => [...unit.matchAll(new RegExp(`^${key}=(.*)$`, 'gm'))].map((m) => m[1]!.trim());

    /** systemd.service(5): Restart=on-failure restarts on a non-zero exit unless RestartPreventExitStatus lists it. */
    function systemdRestarts(exitCode: number): boolean {
      const restart = setting('Restart')[0];
      const prevented = setting('RestartPreventExitStatus').flatMap((v) => v.split(/\s+/)).map(Number);
      if (prevented.includes(exitCode)) return false;
      if (restart === 'always') return true;
      if (restart === 'on-failure') return exitCode !== 0;
      return false;
    }

    it('restarts mailman after the exit of a taken port, and not after the exit of a bad key', async () => {
      const { mailman } = await configs();
      const holder = await listen((mailman.listen as { port: number }).port);
      let portTaken: Outcome;
      try {
        portTaken = await startOnce('mailman', mailman, {});
      } finally {
        await new Promise((done) => holder.close(done));
      }
      const badKey = await startOnce('mailman', mailman, { HEDWIG_MAILMAN__MAX_CLIENT: '5' });
      assert.equal(portTaken.code, EXIT_TRANSIENT);
      assert.equal(badKey.code, EXIT_CONFIG);
      assert.equal(systemdRestarts(portTaken.code), true, 'a transient failure is retried');
      assert.equal(systemdRestarts(badKey.code), false, 'a configuration error is not');
      assert.equal(systemdRestarts(0), false, 'a clean stop stays stopped');
    });

    it('keeps retrying a transient failure instead of giving up at the default start limit', () => {
      // Default StartLimitBurst=5 in 10 s: with RestartSec=2 a port taken for 10 s would end in "failed" for good.
      assert.deepEqual(setting('StartLimitIntervalSec'), ['0']);
      assert.ok(Number.parseInt(setting('RestartSec')[0]!, 10) >= 1);
    });
  });
});
