/**
 * `npm start`: the all-in-one local relay starts its own beanstalkd and the three tiers,
 * and a message from msmtp comes out at the other end. Run in a temporary working
 * directory so its data/local (key, binlog, spool) is the test's own.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { connect, createServer, type AddressInfo } from 'node:net';
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
      // Its own process group, as a shell gives a foreground job: Ctrl-C signals the whole group.
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: {
        ...process.env,
        HEDWIG_MAILMAN__LISTEN__PORT: String(smtpPort),
        HEDWIG_MAILMAN__POSTOFFICE__URL: `http://127.0.0.1:${httpPort}`,
        HEDWIG_MAILMAN__OPS__PORT: '0',
        HEDWIG_POSTOFFICE__LISTEN__PORT: String(httpPort),
        HEDWIG_POSTOFFICE__BEANSTALK__SERVERS: beanstalk,
        HEDWIG_WORKER__BEANSTALK__SERVERS: beanstalk,
        HEDWIG_WORKER__OPS__PORT: '0',
        HEDWIG_WORKER__ROUTES: `{example.org: "127.0.0.1:${sink.port}"}`,
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

  it('sized its beanstalkd for the post office it runs (no job-size warning)', () => {
    assert.doesNotMatch(output, /beanstalk_job_size_too_small/);
  });

  it('stops every part on Ctrl-C (SIGINT to its whole process group), beanstalkd last, without a warning, and exits 0', async () => {
    process.kill(-child.pid!, 'SIGINT');
    await waitFor(() => exitCode !== undefined, { timeoutMs: 30_000, what: 'local mode to stop' });
    assert.equal(exitCode, 0, output.slice(-2000));
    // In the order each was logged (its time), which a pipe's chunking cannot change.
    const stoppedAt = new Map([...output.matchAll(/"time":"([^"]+)"[^\n]*"event":"stopped","component":"(\w+)"/g)].map((m) => [m[2]!, Date.parse(m[1]!)]));
    const order = ['mailman', 'postoffice', 'worker', 'beanstalkd'];
    assert.deepEqual([...stoppedAt.keys()].sort(), [...order].sort(), 'each part logged its stop');
    for (let i = 1; i < order.length; i++) assert.ok(stoppedAt.get(order[i]!)! >= stoppedAt.get(order[i - 1]!)!, `${order[i]} stopped after ${order[i - 1]}: ${JSON.stringify(Object.fromEntries(stoppedAt))}`);
    const shutdownAt = output.indexOf('"event":"shutdown"');
    const warnings = output.slice(shutdownAt).split('\n').filter((line) => /"level":(40|50|60)/.test(line));
    assert.deepEqual(warnings, [], 'a clean stop logs no warning (beanstalkd gone under the worker would: reserve_failed)');
  });
});

describe('local mode when start-up fails after beanstalkd started', { timeout: 60_000 }, () => {
  it('stops its beanstalkd (and every tier it started) and exits 1 when a port is already taken', async () => {
    const cwd = mkdtempSync(join(tmpdir(), 'hedwig-local-fail-'));
    const taken = createServer();
    await new Promise<void>((done) => taken.listen(0, '127.0.0.1', done));
    const smtpPort = (taken.address() as AddressInfo).port;
    const beanstalkPort = await freePort();
    const beanstalk = `["127.0.0.1:${beanstalkPort}"]`;
    let output = '';
    let beanstalkdPid: number | undefined;
    try {
      const child = spawn(process.execPath, ['--import', tsx, join(root, 'local', 'run.ts')], {
        cwd,
        stdio: ['ignore', 'pipe', 'pipe'],
        env: {
          ...process.env,
          // mailman starts last, so beanstalkd, the post office and the worker are up when it fails.
          HEDWIG_MAILMAN__LISTEN__PORT: String(smtpPort),
          HEDWIG_MAILMAN__OPS__PORT: '0',
          HEDWIG_POSTOFFICE__LISTEN__PORT: String(await freePort()),
          HEDWIG_POSTOFFICE__BEANSTALK__SERVERS: beanstalk,
          HEDWIG_WORKER__BEANSTALK__SERVERS: beanstalk,
          HEDWIG_WORKER__OPS__PORT: '0',
        },
      });
      child.stdout!.on('data', (c: Buffer) => (output += c.toString()));
      child.stderr!.on('data', (c: Buffer) => (output += c.toString()));
      const code = await new Promise<number | null>((done) => child.once('exit', done));
      assert.equal(code, 1, output.slice(-2000));
      assert.match(output, /"event":"startup_failed".*EADDRINUSE/);
      const started = /"pid":(\d+),"event":"beanstalkd_started"|"event":"beanstalkd_started","pid":(\d+)/.exec(output);
      assert.ok(started, `beanstalkd started first: ${output.slice(-2000)}`);
      beanstalkdPid = Number(started[1] ?? started[2]);
      assert.throws(() => process.kill(beanstalkdPid!, 0), { code: 'ESRCH' }, `beanstalkd (pid ${beanstalkdPid}) was left running`);
      for (const part of ['worker', 'postoffice', 'beanstalkd']) assert.match(output, new RegExp(`"event":"stopped","component":"${part}"`));
      await assert.rejects(
        new Promise<void>((done, fail) => connect(beanstalkPort, '127.0.0.1').once('connect', done).once('error', fail)),
        { code: 'ECONNREFUSED' },
      );
    } finally {
      taken.close();
      // Without the fix beanstalkd outlives local mode (holding our stdout pipe): stop it here.
      if (beanstalkdPid !== undefined) {
        try {
          process.kill(beanstalkdPid, 'SIGKILL');
        } catch {
          // gone already, as it should be
        }
      }
    }
  });
});
