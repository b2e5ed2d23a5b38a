/**
 * `npm start`: the all-in-one local relay starts its own beanstalkd and the three tiers,
 * and a message from msmtp comes out at the other end. Run in a temporary working
 * directory so its data/local (key, binlog, spool) is the test's own.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { freePort, waitFor } from '../helpers/ports.ts';
import { startSmtpSink, type SmtpSink } from '../helpers/smtp-sink.ts';

const root = resolve(import.meta.dirname, '..', '..');
const tsx = createRequire(join(root, 'package.json')).resolve('tsx');

describe('all-in-one local mode (npm start)', { timeout: 90_000 }, () => {
  const cwd = mkdtempSync(join(tmpdir(), 'hedwig-local-'));
  let sink: SmtpSink;
  let child: ReturnType<typeof spawn>;
  let output = '';
  let smtpPort: number;
  let exitCode: number | null | undefined;

  before(async () => {
    sink = await startSmtpSink({ host: '127.0.0.1' });
    smtpPort = await freePort();
    const httpPort = await freePort();
    const beanstalkPort = await freePort();
    const beanstalk = `["127.0.0.1:${beanstalkPort}"]`;
    child = spawn(process.execPath, ['--import', tsx, join(root, 'local', 'run.ts')], {
      cwd,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: {
        ...process.env,
        MAILMAN_LISTEN__PORT: String(smtpPort),
        MAILMAN_POSTOFFICE__URL: `http://127.0.0.1:${httpPort}`,
        MAILMAN_OPS__PORT: '0',
        POSTOFFICE_LISTEN__PORT: String(httpPort),
        POSTOFFICE_BEANSTALK__SERVERS: beanstalk,
        WORKER_BEANSTALK__SERVERS: beanstalk,
        WORKER_OPS__PORT: '0',
        WORKER_ROUTES: `{example.org: "127.0.0.1:${sink.port}"}`,
      },
    });
    child.stdout!.on('data', (c: Buffer) => (output += c.toString()));
    child.stderr!.on('data', (c: Buffer) => (output += c.toString()));
    child.once('exit', (code) => (exitCode = code));
    await waitFor(() => exitCode !== undefined || output.includes('"event":"ready"'), { timeoutMs: 30_000, what: 'local mode to start' });
    assert.equal(exitCode, undefined, `local mode exited: ${output}`);
  });

  after(async () => {
    if (exitCode === undefined) {
      child.kill('SIGTERM');
      await waitFor(() => exitCode !== undefined, { timeoutMs: 30_000, what: 'local mode to stop' }).catch(() => child.kill('SIGKILL'));
    }
    await sink?.stop();
  });

  it('creates its host key (0600) and a beanstalkd binlog under ./data/local', () => {
    assert.equal(statSync(join(cwd, 'data/local/host.key')).mode & 0o777, 0o600);
    assert.ok(existsSync(join(cwd, 'data/local/beanstalkd')));
  });

  it('relays a message from msmtp to the destination', async () => {
    const message = 'From: a@example.com\r\nTo: b@example.org\r\nSubject: local mode\r\n\r\nhello\r\n';
    await new Promise<void>((done, fail) => {
      const msmtp = execFile('msmtp', ['-C', '/dev/null', '--host=127.0.0.1', `--port=${smtpPort}`, '--from=a@example.com', 'b@example.org'], { timeout: 20_000 }, (err, _out, stderr) =>
        err ? fail(new Error(stderr || String(err))) : done(),
      );
      msmtp.stdin!.end(message);
    });
    const [received] = await sink.waitForMessages(1, 30_000);
    assert.deepEqual(received!.rcptTo, ['b@example.org']);
    assert.ok(received!.raw.toString().endsWith(message));
  });

  it('stops every part, beanstalkd included, on SIGTERM and exits 0', async () => {
    child.kill('SIGTERM');
    await waitFor(() => exitCode !== undefined, { timeoutMs: 30_000, what: 'local mode to stop' });
    assert.equal(exitCode, 0, output.slice(-2000));
    for (const part of ['mailman', 'postoffice', 'worker', 'beanstalkd']) assert.match(output, new RegExp(`"event":"stopped","component":"${part}"`));
  });
});
