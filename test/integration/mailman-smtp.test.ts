/**
 * mailman's SMTP dialogue where smtp-server alone would answer differently: the greeting
 * without smtp-server's early-talker delay, and the replies the README's table promises.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { SmtpDialog, runCleanups, startHarness } from '../helpers/mailman-harness.ts';

after(runCleanups);

describe('mailman: the greeting', () => {
  it('greets at once: a client that talks before the greeting is served, not told "421 You talk too soon"', async () => {
    // smtp-server holds a new connection 100 ms and refuses whatever arrives in that window;
    // mailman turns the window off (earlyTalkerDelay: 0, patches/smtp-server+*.patch). A
    // client that writes EHLO the moment it is connected lands inside the window if the delay
    // ever returns, so this fails without the patch or without the option.
    const h = await startHarness();
    const dialog = await SmtpDialog.open(h.mailman.port);
    dialog.write('EHLO early.test\r\n');
    assert.match(await dialog.reply(), /^220 /);
    assert.match(await dialog.reply(), /^250[ -]/);
    assert.match(await dialog.command('QUIT'), /^221 /);
    dialog.close();
  });
});

describe('mailman: replies smtp-server would give otherwise (README table)', () => {
  it('answers an unqualified RCPT TO:<root> 553 5.1.3 (not 501), and SIZE= over the limit at MAIL FROM 552 5.3.4', async () => {
    const h = await startHarness({ env: { HEDWIG_MAILMAN__MAX_MESSAGE_BYTES: '1000' } });
    const dialog = await SmtpDialog.open(h.mailman.port);
    assert.match(await dialog.reply(), /^220 /);
    await dialog.command('EHLO client.test');
    assert.equal(await dialog.command('MAIL FROM:<a@example.test> SIZE=1001'), '552 5.3.4 Message size exceeds fixed maximum message size');
    assert.equal(await dialog.command('MAIL FROM:<root>'), '553 5.1.7 Bad sender address syntax');
    assert.match(await dialog.command('MAIL FROM:<a@example.test> SIZE=1000'), /^250 /);
    assert.equal(await dialog.command('RCPT TO:<root>'), '553 5.1.3 Bad recipient address syntax');
    assert.equal(await dialog.command('RCPT TO:<>'), '553 5.1.3 Bad recipient address syntax');
    assert.match(await dialog.command('RCPT TO:<postmaster>'), /^5\d\d /, 'postmaster alone has no domain to deliver to');
    assert.match(await dialog.command('RCPT TO:<b@dest.test>'), /^250 /);
    dialog.close();
  });

  it('takes UTF-8 envelope addresses only with SMTPUTF8 (RFC 6531): 553 5.6.7 without it', async () => {
    const h = await startHarness();
    const dialog = await SmtpDialog.open(h.mailman.port);
    assert.match(await dialog.reply(), /^220 /);
    await dialog.command('EHLO client.test');
    dialog.write(Buffer.from('MAIL FROM:<jürgen@example.test>\r\n', 'utf8'));
    assert.equal(await dialog.reply(), '553 5.6.7 Non-ASCII address without SMTPUTF8');
    assert.match(await dialog.command('MAIL FROM:<a@example.test>'), /^250 /);
    dialog.write(Buffer.from('RCPT TO:<用户@dest.test>\r\n', 'utf8'));
    assert.equal(await dialog.reply(), '553 5.6.7 Non-ASCII address without SMTPUTF8');
    assert.match(await dialog.command('RSET'), /^250 /);
    dialog.write(Buffer.from('MAIL FROM:<jürgen@example.test> SMTPUTF8\r\n', 'utf8'));
    assert.match(await dialog.reply(), /^250 /);
    dialog.write(Buffer.from('RCPT TO:<用户@dest.test>\r\n', 'utf8'));
    assert.match(await dialog.reply(), /^250 /);
    dialog.close();
  });

  it('after a 554 greeting waits for QUIT only so long: a client that says nothing is closed', async () => {
    const h = await startHarness({ env: { HEDWIG_MAILMAN__ALLOWED_NETWORKS: '[127.0.0.2/32]', HEDWIG_MAILMAN__SOCKET_TIMEOUT_MS: '1000' } });
    const dialog = await SmtpDialog.open(h.mailman.port, '127.0.0.1', '127.0.0.1');
    assert.match(await dialog.reply(), /^554 5\.7\.1 /);
    assert.equal(await dialog.command('NOOP'), '503 5.5.1 Bad sequence of commands');
    await assert.rejects(dialog.reply(), /connection closed/);
  });
});

describe('mailman: one client cannot lock out the others', () => {
  it('limits sessions per client address (maxClientsPerAddress): 20 trickling sessions from one address leave room for another client', async () => {
    const h = await startHarness({ env: { HEDWIG_MAILMAN__MAX_CLIENTS: '20', HEDWIG_MAILMAN__MAX_CLIENTS_PER_ADDRESS: '5' } });
    const hogs: SmtpDialog[] = [];
    const greetings: string[] = [];
    for (let i = 0; i < 20; i++) {
      const hog = await SmtpDialog.open(h.mailman.port, '127.0.0.1', '127.0.0.1');
      hogs.push(hog);
      greetings.push((await hog.reply()).slice(0, 9));
      hog.write('EHLO h'); // trickles: a command never finished
    }
    assert.deepEqual(greetings.map((g) => g.slice(0, 3)), [...Array(5).fill('220'), ...Array(15).fill('421')]);
    assert.ok(greetings.slice(5).every((g) => g === '421 4.7.0'), greetings.join(', '));
    const other = await SmtpDialog.open(h.mailman.port, '127.0.0.1', '127.0.0.2');
    assert.match(await other.reply(), /^220 /);
    await other.command('EHLO other.test');
    assert.match(await other.command('MAIL FROM:<a@example.test>'), /^250 /);
    assert.match(await other.command('RCPT TO:<b@dest.test>'), /^250 /);
    assert.match(await other.command('DATA'), /^354 /);
    other.write('Subject: served\r\n\r\nhello\r\n');
    assert.match(await other.command('.'), /^250 2\.0\.0 /);
    other.close();
    for (const hog of hogs) hog.close();
    assert.equal(h.postoffice.received.length, 1);
  });

  it('cuts a message that is not complete within dataTimeoutMs (421 4.4.2), however steadily it trickles', async () => {
    const h = await startHarness({ env: { HEDWIG_MAILMAN__DATA_TIMEOUT_MS: '500' } });
    const dialog = await SmtpDialog.open(h.mailman.port);
    assert.match(await dialog.reply(), /^220 /);
    await dialog.command('EHLO client.test');
    await dialog.command('MAIL FROM:<a@example.test>');
    await dialog.command('RCPT TO:<b@dest.test>');
    assert.match(await dialog.command('DATA'), /^354 /);
    const replies: string[] = [];
    const reading = (async () => {
      for (;;) replies.push(await dialog.reply());
    })().catch(() => undefined);
    // One byte every 50 ms, for at most 10 s: well inside socketTimeoutMs each time.
    for (let i = 0; i < 200 && replies.length === 0; i++) {
      dialog.write('x');
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    await reading;
    assert.deepEqual(replies, ['421 4.4.2 Message not complete in time, closing connection']);
    assert.equal(h.postoffice.received.length, 0);
    assert.equal(h.logs.find((l) => l.event === 'rejected' && l.reason === 'data_timeout')?.limitMs, 500);
  });
});
