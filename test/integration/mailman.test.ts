import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Spool, decodeSpoolFile, newSpoolId } from '../../mailman/spool.ts';
import { KEY, MESSAGE, SmtpDialog, msmtp, run, runCleanups, startHarness, swaks, tempDir } from '../helpers/mailman-harness.ts';
import { waitFor } from '../helpers/ports.ts';

after(runCleanups);

function spoolEntries(spoolDir: string, folder: 'new' | 'tmp' | 'failed'): string[] {
  const dir = join(spoolDir, folder);
  return existsSync(dir) ? readdirSync(dir).sort() : [];
}

describe('mailman: inline forwarding to the post office', () => {
  it('forwards the exact message bytes from msmtp, signed, with the envelope', async () => {
    const h = await startHarness();
    const result = await msmtp(h.mailman.port, ['b@dest.test', 'c@dest.test']);
    assert.equal(result.code, 0, result.stderr);

    assert.equal(h.postoffice.received.length, 1);
    const request = h.postoffice.received[0]!;
    assert.equal(request.signatureOk, true);
    assert.equal(request.path, '/v1/messages');
    assert.equal(request.contentType, 'application/json');
    assert.equal(request.mailfrom, 'a@example.test');
    assert.deepEqual(request.rcpttos, ['b@dest.test', 'c@dest.test']);
    assert.equal(request.data.toString('latin1'), MESSAGE);

    const accepted = h.logs.find((l) => l.event === 'accepted');
    assert.ok(accepted, 'an accepted log line');
    assert.equal(accepted.path, 'inline');
    assert.equal(accepted.spoolId, request.idempotencyKey);
    assert.equal(accepted.postofficeId, 'po-1');
    assert.equal(accepted.rcptCount, 2);
    assert.equal(accepted.size, Buffer.byteLength(MESSAGE));
    assert.equal(spoolEntries(h.spoolDir, 'new').length, 0, 'nothing is spooled when the post office took it');
    assert.ok(!JSON.stringify(h.logs).includes('first line'), 'no message body in logs');
    assert.ok(!JSON.stringify(h.logs).includes(KEY), 'no key in logs');
  });

  it('answers swaks with "250 2.0.0 Ok: queued as <id>" and forwards the unstuffed bytes', async () => {
    const h = await startHarness();
    const file = join(tempDir('hedwig-swaks-'), 'message.eml');
    // swaks adds the final CRLF before the dot itself, so the file ends without one.
    writeFileSync(file, MESSAGE.replace(/\r\n$/, ''));
    const result = await swaks(h.mailman.port, file);
    assert.equal(result.code, 0, result.stdout + result.stderr);
    const id = h.postoffice.received[0]?.idempotencyKey;
    assert.ok(id);
    assert.match(result.stdout, new RegExp(`<-  250 2\\.0\\.0 Ok: queued as ${id}\\n`));
    assert.equal(h.postoffice.received[0]!.data.toString('latin1'), MESSAGE);
  });

  it('passes a 401 from the post office back as 554 5.7.1 and spools nothing', async () => {
    const h = await startHarness();
    h.postoffice.answer({ kind: 'status', status: 401, body: { error: 'unauthorized', message: 'bad signature' } });
    const result = await msmtp(h.mailman.port, ['b@dest.test']);
    assert.notEqual(result.code, 0);
    assert.match(result.stderr, /554 5\.7\.1 Rejected by post office \(unauthorized: bad signature\)/);
    assert.deepEqual(spoolEntries(h.spoolDir, 'new'), []);
    assert.deepEqual(spoolEntries(h.spoolDir, 'failed'), []);
    const rejected = h.logs.find((l) => l.event === 'rejected');
    assert.equal(rejected?.status, 401);
  });

  it('passes a 413 back as 552 5.3.4 and a 400 as 554 5.6.0', async () => {
    const h = await startHarness();
    const file = join(tempDir('hedwig-swaks-'), 'message.eml');
    writeFileSync(file, MESSAGE.replace(/\r\n$/, ''));
    h.postoffice.answer({ kind: 'status', status: 413, body: { error: 'message_too_large', message: 'limit is 10 bytes' } });
    const tooLarge = await swaks(h.mailman.port, file);
    assert.match(tooLarge.stdout, /<\*\* 552 5\.3\.4 .*message_too_large/);
    h.postoffice.answer({ kind: 'status', status: 400, body: { error: 'invalid_request', message: 'bad address', field: 'rcpttos.0' } });
    const invalid = await swaks(h.mailman.port, file);
    assert.match(invalid.stdout, /<\*\* 554 5\.6\.0 .*invalid_request: bad address \(field rcpttos\.0\)/);
    assert.deepEqual(spoolEntries(h.spoolDir, 'new'), []);
  });
});

describe('mailman: spooling while the post office is unavailable', () => {
  it('answers 250 with the message fsynced in new/, then forwards it once the post office is back', async () => {
    const h = await startHarness({ postofficeListening: false });
    const result = await msmtp(h.mailman.port, ['b@dest.test']);
    assert.equal(result.code, 0, result.stderr);

    const [id, ...rest] = spoolEntries(h.spoolDir, 'new');
    assert.ok(id, 'one file in new/');
    assert.deepEqual(rest, []);
    const spooled = decodeSpoolFile(readFileSync(join(h.spoolDir, 'new', id)));
    assert.equal(spooled.data.toString('latin1'), MESSAGE);
    assert.deepEqual(spooled.rcpttos, ['b@dest.test']);
    assert.equal(h.logs.find((l) => l.event === 'accepted')?.path, 'spooled');

    await h.postoffice.up();
    await waitFor(() => spoolEntries(h.spoolDir, 'new').length === 0, { timeoutMs: 10_000, what: 'spool to drain' });
    const delivered = h.postoffice.received.at(-1)!;
    assert.equal(delivered.signatureOk, true);
    assert.equal(delivered.idempotencyKey, id, 'the spool id is the idempotency key');
    assert.equal(delivered.data.toString('latin1'), MESSAGE);
    const forwarded = await waitFor(() => h.logs.find((l) => l.event === 'forwarded'));
    assert.equal(forwarded.spoolId, id);
    assert.equal(forwarded.postofficeId, 'po-1');
  });

  it('spools a message when the post office answers 503 and retries with the same idempotency key', async () => {
    const h = await startHarness();
    h.postoffice.answer({ kind: 'status', status: 503, body: { error: 'queue_unavailable', message: 'beanstalkd is down' } });
    const result = await msmtp(h.mailman.port, ['b@dest.test']);
    assert.equal(result.code, 0, result.stderr);
    await waitFor(() => h.postoffice.received.length >= 2, { what: 'a retry from the spool' });
    h.postoffice.answer({ kind: 'accept' });
    await waitFor(() => spoolEntries(h.spoolDir, 'new').length === 0, { what: 'spool to drain' });
    const keys = new Set(h.postoffice.received.map((r) => r.idempotencyKey));
    assert.equal(keys.size, 1, 'every attempt carries the same idempotency key');
    assert.equal(h.postoffice.accepted.size, 1);
  });

  it('spools when the post office does not answer within postoffice.timeoutMs', async () => {
    const h = await startHarness({ env: { HEDWIG_MAILMAN__POSTOFFICE__TIMEOUT_MS: '300' } });
    h.postoffice.answer({ kind: 'hang' });
    const result = await msmtp(h.mailman.port, ['b@dest.test']);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(h.logs.find((l) => l.event === 'accepted')?.path, 'spooled');
    h.postoffice.answer({ kind: 'accept' });
    await waitFor(() => spoolEntries(h.spoolDir, 'new').length === 0, { what: 'spool to drain' });
  });

  it('moves a spooled message the post office rejects (400) to failed/ with the reason', async () => {
    const h = await startHarness({ postofficeListening: false });
    const result = await msmtp(h.mailman.port, ['b@dest.test']);
    assert.equal(result.code, 0, result.stderr);
    const [id] = spoolEntries(h.spoolDir, 'new');
    assert.ok(id);

    h.postoffice.answer({ kind: 'status', status: 400, body: { error: 'invalid_request', message: 'rcpttos.0: not a valid mailbox', field: 'rcpttos.0' } });
    await h.postoffice.up();
    await waitFor(() => spoolEntries(h.spoolDir, 'failed').length === 2, { what: 'message in failed/' });
    assert.deepEqual(spoolEntries(h.spoolDir, 'failed'), [id, `${id}.reason.json`]);
    assert.deepEqual(spoolEntries(h.spoolDir, 'new'), []);
    const reason = JSON.parse(readFileSync(join(h.spoolDir, 'failed', `${id}.reason.json`), 'utf8')) as Record<string, unknown>;
    assert.equal(reason.status, 400);
    assert.equal(reason.error, 'invalid_request');
    assert.match(String(reason.message), /not a valid mailbox/);
    assert.ok(!Number.isNaN(Date.parse(String(reason.time))));
    assert.equal(decodeSpoolFile(readFileSync(join(h.spoolDir, 'failed', id))).data.toString('latin1'), MESSAGE);
    const failed = await waitFor(() => h.logs.find((l) => l.event === 'failed'));
    assert.equal(failed.spoolId, id);
    assert.equal(failed.status, 400);
    assert.equal(failed.error, 'invalid_request');
  });

  it('answers 451 4.3.0 when the post office is down and the spool cannot be written', async () => {
    const h = await startHarness({ postofficeListening: false });
    // A file where the new/ directory should be makes the rename fail, even for root.
    rmSync(join(h.spoolDir, 'new'), { recursive: true });
    writeFileSync(join(h.spoolDir, 'new'), 'not a directory');
    const file = join(tempDir('hedwig-swaks-'), 'message.eml');
    writeFileSync(file, MESSAGE.replace(/\r\n$/, ''));
    const result = await swaks(h.mailman.port, file);
    assert.match(result.stdout, /<\*\* 451 4\.3\.0 /);
    assert.deepEqual(readdirSync(join(h.spoolDir, 'tmp')), [], 'the half-written file is cleaned up');
  });

  it('forwards what a previous run left in new/ and deletes unacknowledged tmp/ files (crash recovery)', async () => {
    const spoolDir = join(tempDir('hedwig-mailman-'), 'spool');
    const spool = new Spool(spoolDir);
    await spool.init();
    const id = newSpoolId();
    await spool.write({ id, mailfrom: '', rcpttos: ['b@dest.test'], receivedAt: Date.now(), data: Buffer.from(MESSAGE, 'latin1') });
    mkdirSync(join(spoolDir, 'tmp'), { recursive: true });
    writeFileSync(join(spoolDir, 'tmp', newSpoolId()), 'half a message, never answered 250');

    const h = await startHarness({ spoolDir });
    await waitFor(() => spoolEntries(spoolDir, 'new').length === 0, { what: 'spool to drain' });
    assert.deepEqual(spoolEntries(spoolDir, 'tmp'), []);
    assert.equal(h.postoffice.received.length, 1);
    assert.equal(h.postoffice.received[0]!.idempotencyKey, id);
    assert.equal(h.postoffice.received[0]!.mailfrom, '');
    assert.equal(h.postoffice.received[0]!.data.toString('latin1'), MESSAGE);
  });
});

describe('mailman: SMTP policy', () => {
  it('refuses a client outside allowedNetworks with 554 5.7.1 and closes the connection', async () => {
    const h = await startHarness({ env: { HEDWIG_MAILMAN__ALLOWED_NETWORKS: '[127.0.0.2/32]' } });
    const dialog = await SmtpDialog.open(h.mailman.port, '127.0.0.1', '127.0.0.1');
    assert.match(await dialog.reply(), /^554 5\.7\.1 /);
    await assert.rejects(dialog.reply(), /connection closed/);
    const result = await msmtp(h.mailman.port, ['b@dest.test']);
    assert.notEqual(result.code, 0);
    assert.equal(h.postoffice.received.length, 0);
  });

  it('accepts a client inside allowedNetworks when that is not the loopback default', async () => {
    const h = await startHarness({ env: { HEDWIG_MAILMAN__ALLOWED_NETWORKS: '[127.0.0.2/32]', HEDWIG_MAILMAN__LISTEN__HOST: '127.0.0.1' } });
    const dialog = await SmtpDialog.open(h.mailman.port, '127.0.0.1', '127.0.0.2');
    assert.match(await dialog.reply(), /^220 /);
    dialog.close();
  });

  it('answers an oversized message with 552 5.3.4 after reading it, and keeps serving the same connection', async () => {
    const h = await startHarness({ env: { HEDWIG_MAILMAN__MAX_MESSAGE_BYTES: '1000' } });
    const dialog = await SmtpDialog.open(h.mailman.port);
    assert.match(await dialog.reply(), /^220 /);
    assert.match(await dialog.command('EHLO client.test'), /250 SIZE 1000/);
    assert.match(await dialog.command('MAIL FROM:<a@example.test>'), /^250 /);
    assert.match(await dialog.command('RCPT TO:<b@dest.test>'), /^250 /);
    assert.match(await dialog.command('DATA'), /^354 /);
    dialog.write(`Subject: big\r\n\r\n${'x'.repeat(70)}\r\n`.repeat(200));
    assert.match(await dialog.command('.'), /^552 5\.3\.4 Message size exceeds fixed maximum message size$/);

    assert.match(await dialog.command('MAIL FROM:<a@example.test>'), /^250 /);
    assert.match(await dialog.command('RCPT TO:<b@dest.test>'), /^250 /);
    assert.match(await dialog.command('DATA'), /^354 /);
    dialog.write('Subject: small\r\n\r\nfits\r\n');
    assert.match(await dialog.command('.'), /^250 2\.0\.0 Ok: queued as /);
    dialog.close();
    assert.equal(h.postoffice.received.length, 1, 'only the small message reached the post office');
    assert.equal(h.postoffice.received[0]!.data.toString(), 'Subject: small\r\n\r\nfits\r\n');
  });

  it('answers 452 4.5.3 for recipients beyond maxRecipients and delivers to the accepted ones', async () => {
    const h = await startHarness({ env: { HEDWIG_MAILMAN__MAX_RECIPIENTS: '2' } });
    const dialog = await SmtpDialog.open(h.mailman.port);
    await dialog.reply();
    await dialog.command('EHLO client.test');
    await dialog.command('MAIL FROM:<a@example.test>');
    assert.match(await dialog.command('RCPT TO:<r1@dest.test>'), /^250 /);
    assert.match(await dialog.command('RCPT TO:<r2@dest.test>'), /^250 /);
    assert.equal(await dialog.command('RCPT TO:<r3@dest.test>'), '452 4.5.3 Too many recipients');
    assert.match(await dialog.command('RCPT TO:<R1@dest.test>'), /^250 /, 'a repeated recipient is not a new one');
    assert.match(await dialog.command('DATA'), /^354 /);
    dialog.write('Subject: x\r\n\r\nbody\r\n');
    assert.match(await dialog.command('.'), /^250 /);
    dialog.close();
    assert.equal((h.postoffice.received[0]!.rcpttos as string[]).length, 2);
  });

  it('refuses syntactically invalid addresses before DATA', async () => {
    const h = await startHarness();
    const dialog = await SmtpDialog.open(h.mailman.port);
    await dialog.reply();
    await dialog.command('EHLO client.test');
    assert.match(await dialog.command('MAIL FROM:<not an address>'), /^5\d\d /);
    assert.match(await dialog.command('MAIL FROM:<>'), /^250 /, 'the null sender is allowed');
    assert.match(await dialog.command('RCPT TO:<a..b@dest.test>'), /^5\d\d /, 'refused by smtp-server\'s own parser');
    assert.match(await dialog.command('RCPT TO:<b@dest.123>'), /^553 5\.1\.3 /, 'refused by the RFC 5321 check smtp-server does not make');
    assert.match(await dialog.command('RCPT TO:<b@dest.test>'), /^250 /);
    dialog.close();
  });

  it('turns away connections beyond maxClients with 421 and serves the next one once a slot is free', async () => {
    const h = await startHarness({ env: { HEDWIG_MAILMAN__MAX_CLIENTS: '1' } });
    const first = await SmtpDialog.open(h.mailman.port);
    assert.match(await first.reply(), /^220 /);
    const second = await SmtpDialog.open(h.mailman.port);
    assert.match(await second.reply(), /^421 /);
    second.close();
    assert.match(await first.command('QUIT'), /^221 /);
    first.close();
    const sent = await waitFor(async () => {
      const result = await msmtp(h.mailman.port, ['b@dest.test']);
      return result.code === 0 ? result : undefined;
    }, { what: 'a free client slot' });
    assert.equal(sent.code, 0);
  });

  it('offers neither AUTH nor STARTTLS without an operator certificate', async () => {
    const h = await startHarness();
    const dialog = await SmtpDialog.open(h.mailman.port);
    await dialog.reply();
    const ehlo = await dialog.command('EHLO client.test');
    assert.doesNotMatch(ehlo, /STARTTLS|AUTH/);
    assert.match(await dialog.command('STARTTLS'), /^5\d\d /);
    dialog.close();
  });

  it('does not end DATA at a bare-LF dot (SMTP smuggling): the smuggled text stays in one message', async () => {
    const h = await startHarness();
    const dialog = await SmtpDialog.open(h.mailman.port);
    await dialog.reply();
    await dialog.command('EHLO client.test');
    await dialog.command('MAIL FROM:<a@example.test>');
    await dialog.command('RCPT TO:<b@dest.test>');
    assert.match(await dialog.command('DATA'), /^354 /);
    const smuggled = 'MAIL FROM:<evil@example.test>\r\nRCPT TO:<victim@dest.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n';
    const body = `Subject: outer\r\n\r\nhello\r\n\n.\n${smuggled}`;
    dialog.write(body);
    const reply = await dialog.command('.');
    assert.match(reply, /^250 2\.0\.0 Ok: queued as /);
    assert.match(await dialog.command('QUIT'), /^221 /);
    dialog.close();
    assert.equal(h.postoffice.received.length, 1, 'exactly one message');
    assert.equal(h.postoffice.received[0]!.data.toString('latin1'), body);
    assert.deepEqual(h.postoffice.received[0]!.rcpttos, ['b@dest.test']);
  });

  it('serves /metrics, /healthz and /readyz on the ops port', async () => {
    const h = await startHarness();
    const sent = await msmtp(h.mailman.port, ['b@dest.test']);
    assert.equal(sent.code, 0, sent.stderr);
    const metrics = await (await fetch(`http://127.0.0.1:${h.mailman.opsPort}/metrics`)).text();
    assert.match(metrics, /hedwig_mailman_messages_accepted_total\{path="inline",tier="mailman"\} 1/);
    assert.match(metrics, /hedwig_mailman_forward_attempts_total\{result="accepted",tier="mailman"\} 1/);
    assert.match(metrics, /hedwig_mailman_spool_depth\{tier="mailman"\} 0/);
    assert.equal((await fetch(`http://127.0.0.1:${h.mailman.opsPort}/readyz`)).status, 200);
    assert.equal((await fetch(`http://127.0.0.1:${h.mailman.opsPort}/healthz`)).status, 200);
  });
});

describe('mailman: TLS', () => {
  let certFile = '';
  let keyFile = '';
  const pems = () => ({ cert: readFileSync(certFile, 'utf8'), key: readFileSync(keyFile, 'utf8') });

  before(async () => {
    const dir = tempDir('hedwig-mailman-tls-');
    certFile = join(dir, 'cert.pem');
    keyFile = join(dir, 'key.pem');
    const made = await run('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2',
      '-keyout', keyFile, '-out', certFile, '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1',
    ]);
    assert.equal(made.code, 0, made.stderr);
  });

  it('forwards over HTTPS to a post office whose certificate a private CA (postoffice.caFile) signed', async () => {
    const h = await startHarness({ postofficeTls: pems(), env: { HEDWIG_MAILMAN__POSTOFFICE__CA_FILE: certFile } });
    assert.match(h.postoffice.url, /^https:/);
    const result = await msmtp(h.mailman.port, ['b@dest.test']);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(h.postoffice.received.length, 1);
    assert.equal(h.postoffice.received[0]!.signatureOk, true);
    assert.equal(h.logs.find((l) => l.event === 'accepted')?.path, 'inline');
  });

  it('does not trust an unknown certificate: without caFile the message waits in the spool', async () => {
    const h = await startHarness({ postofficeTls: pems() });
    const result = await msmtp(h.mailman.port, ['b@dest.test']);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(h.postoffice.received.length, 0, 'no request got through the TLS handshake');
    assert.equal(spoolEntries(h.spoolDir, 'new').length, 1);
    const spooled = h.logs.find((l) => l.event === 'spooled');
    assert.match(String(spooled?.reason), /self-signed|SELF_SIGNED/i);
  });

  it('offers STARTTLS with the operator certificate (tls.cert/tls.key) and still no AUTH', async () => {
    const h = await startHarness({ env: { HEDWIG_MAILMAN__TLS__CERT: certFile, HEDWIG_MAILMAN__TLS__KEY: keyFile } });
    const dialog = await SmtpDialog.open(h.mailman.port);
    await dialog.reply();
    const ehlo = await dialog.command('EHLO client.test');
    assert.match(ehlo, /250-STARTTLS|250 STARTTLS/);
    assert.doesNotMatch(ehlo, /AUTH/);
    dialog.close();
    const result = await run(
      'msmtp',
      ['-C', '/dev/null', '--host=127.0.0.1', `--port=${h.mailman.port}`, '--tls=on', '--tls-starttls=on', `--tls-trust-file=${certFile}`, '--from=a@example.test', '--', 'b@dest.test'],
      MESSAGE,
    );
    assert.equal(result.code, 0, result.stderr);
    assert.equal(h.postoffice.received[0]!.data.toString('latin1'), MESSAGE);
  });
});
