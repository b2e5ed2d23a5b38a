import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { checkAuthorDomains, completeAddressFields, type Sender } from '../../postoffice/address-fields.ts';

const host: Sender = { mailfrom: 'app@example.com', fqdn: 'app1.hosts.test', senderDomains: ['example.com'] };
const complete = (message: string | Buffer, sender: Partial<Sender> = {}) => completeAddressFields(Buffer.isBuffer(message) ? message : Buffer.from(message, 'latin1'), { ...host, ...sender });
const text = (message: string | Buffer, sender: Partial<Sender> = {}) => complete(message, sender).data.toString('latin1');

describe('address fields at submission (postoffice/address-fields.ts)', () => {
  describe('completed like a submission server (RFC 6409 §8, Postfix cleanup): issue 12.12', () => {
    it('adds From: from the envelope sender when it is missing, on top', () => {
      assert.equal(text('Subject: hi\r\n\r\nhello\r\n'), 'From: app@example.com\r\nSubject: hi\r\n\r\nhello\r\n');
      assert.equal(text('\r\nbody only\r\n'), 'From: app@example.com\r\n\r\nbody only\r\n');
    });

    it('adds From: MAILER-DAEMON@<a domain of the host> for the null sender', () => {
      assert.equal(text('Subject: bounce\r\n\r\nx\r\n', { mailfrom: '' }), 'From: MAILER-DAEMON@example.com\r\nSubject: bounce\r\n\r\nx\r\n');
      assert.equal(text('Subject: bounce\r\n\r\nx\r\n', { mailfrom: '', senderDomains: ['*'] }), 'From: MAILER-DAEMON@app1.hosts.test\r\nSubject: bounce\r\n\r\nx\r\n');
    });

    it("qualifies cron's bare From: and To: with the envelope sender's domain, the body untouched (LF line ends too)", () => {
      const cron = 'From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@app1> /usr/local/bin/backup\nContent-Type: text/plain; charset=UTF-8\n\nbackup done\n.\nroot\n';
      assert.equal(
        text(cron),
        'From: root@example.com (Cron Daemon)\r\nTo: root@example.com\r\nSubject: Cron <root@app1> /usr/local/bin/backup\r\nContent-Type: text/plain; charset=UTF-8\r\n\nbackup done\n.\nroot\n',
      );
    });

    it('qualifies Sender, Reply-To, Cc and Resent-* the same way, inside groups and angle brackets, and for the null sender', () => {
      const message = 'From: App <app@example.com>\r\nSender: ops\r\nReply-To: Help <help>\r\nCc: team: a, b@x.test;\r\nResent-To: c\r\nX-Other: root\r\n\r\nx';
      assert.equal(text(message), 'From: App <app@example.com>\r\nSender: ops@example.com\r\nReply-To: Help <help@example.com>\r\nCc: team: a@example.com, b@x.test;\r\nResent-To: c@example.com\r\nX-Other: root\r\n\r\nx');
      assert.equal(text('From: daemon\r\n\r\nx', { mailfrom: '' }), 'From: daemon@example.com\r\n\r\nx');
    });

    it('returns the very same bytes when nothing needs doing, and leaves unreadable fields alone', () => {
      const message = Buffer.from('From: "A" <a@example.com>\nTo: b@dest.test, undisclosed-recipients:;\n\nbody \xff\n', 'latin1');
      assert.equal(complete(message).data, message);
      const odd = Buffer.from('From: "unterminated <a@example.com>\r\nTo: root\r\n\r\nx');
      assert.equal(text(odd), 'From: "unterminated <a@example.com>\r\nTo: root@example.com\r\n\r\nx');
    });

    it('writes a UTF-8 envelope domain as UTF-8 bytes (RFC 6532)', () => {
      const out = complete('To: root\r\n\r\nx', { mailfrom: 'app@bücher.test' }).data;
      assert.ok(out.equals(Buffer.from('From: app@bücher.test\r\nTo: root@bücher.test\r\n\r\nx')));
    });
  });

  describe('From: and Sender: domains checked against the host (issue 12.4)', () => {
    const check = (message: string, senderDomains: string[]) => checkAuthorDomains(complete(message, { senderDomains }).fields, senderDomains);

    it('passes the host’s own domains, in any case and with a trailing dot', () => {
      assert.ok(check('From: Marketing <news@Marketing.Example.com.>\r\n\r\nx', ['marketing.example.com']).ok);
      assert.ok(check('From: a@anything.test\r\nSender: b@other.test\r\n\r\nx', ['*']).ok);
    });

    it('refuses a parent domain, another domain, a second author or a Sender the host may not use, naming the field', () => {
      const refused = (message: string, field: string) => {
        const result = check(message, ['marketing.example.com']);
        assert.ok(!result.ok, message);
        assert.deepEqual({ status: result.rejection.status, code: result.rejection.code, field: result.rejection.field }, { status: 403, code: 'from_domain_not_allowed', field });
      };
      refused('From: ceo@example.com\r\n\r\nx', 'data.From');
      refused('From: a@marketing.example.com, ceo@example.com\r\n\r\nx', 'data.From');
      refused('From: a@marketing.example.com\r\nFrom: ceo@example.com\r\n\r\nx', 'data.From');
      refused('From: a@marketing.example.com\r\nSender: ceo@example.com\r\n\r\nx', 'data.Sender');
      refused('From: a@[127.0.0.1]\r\n\r\nx', 'data.From');
    });

    it('answers 400 for a From: it cannot read', () => {
      const result = check('From: "ceo@example.com\r\n\r\nx', ['marketing.example.com']);
      assert.ok(!result.ok && result.rejection.status === 400 && result.rejection.field === 'data.From');
    });
  });
});
