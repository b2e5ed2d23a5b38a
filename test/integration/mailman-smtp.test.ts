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
