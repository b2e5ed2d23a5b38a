import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { editHeaders, normalizeLineEnds, splitMessage } from '../../worker/headers.ts';

/** The header edits every outgoing message goes through (worker/headers.ts). */
describe('outgoing header edits', () => {
  const edits = { messageId: 'a1b2-c3', messageIdDomain: 'example.com', receivedAt: Date.UTC(2025, 0, 2, 3, 4, 5) };
  const text = (raw: Buffer) => raw.toString('latin1');

  it('drops Bcc (folded too), Resent-Bcc, Return-Path, Content-Length and X-Hedwig-* but nothing else', () => {
    const raw = Buffer.from(
      'Return-Path: <x@example.com>\r\nFrom: a@example.com\r\nBcc: hidden@example.org,\r\n  other@example.org\r\nTo: b@example.org\r\n' +
        'Resent-Bcc: r@example.org\r\nX-Hedwig-Trace: internal\r\nContent-Length: 12\r\nSubject: hi\r\nMessage-ID: <m@x>\r\nDate: Thu, 1 Jan 2025 00:00:00 +0000\r\n\r\nBcc: in the body stays\r\n',
    );
    const out = text(editHeaders(raw, edits));
    assert.equal(
      out,
      'From: a@example.com\r\nTo: b@example.org\r\nSubject: hi\r\nMessage-ID: <m@x>\r\nDate: Thu, 1 Jan 2025 00:00:00 +0000\r\n\r\nBcc: in the body stays\r\n',
    );
  });

  it('adds Message-ID (from the hedwig id, stable across attempts) and Date (when hedwig accepted it) on top, only when missing', () => {
    const out = text(editHeaders(Buffer.from('From: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n'), edits));
    assert.equal(out, 'Message-ID: <a1b2-c3@example.com>\r\nDate: Thu, 02 Jan 2025 03:04:05 +0000\r\nFrom: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n');
    const present = Buffer.from('message-id: <keep@x>\r\nDATE: Thu, 1 Jan 2025 00:00:00 +0000\r\n\r\nbody\r\n');
    assert.equal(editHeaders(present, edits), present, 'an untouched message is returned as is');
  });

  it('writes a Message-ID that is valid for any hedwig id and an internationalized sender domain', () => {
    const out = text(editHeaders(Buffer.from('Subject: x\r\n\r\n'), { ...edits, messageId: 'id with spaces..and<>', messageIdDomain: 'bücher.example' }));
    assert.match(out, /^Message-ID: <id-with-spaces\.and--@xn--bcher-kva\.example>\r\n/m);
  });

  it('puts an optional Received field on top, without naming any recipient', () => {
    const out = text(editHeaders(Buffer.from('Message-ID: <m@x>\r\nDate: x\r\n\r\n'), { ...edits, received: { submittedBy: 'app1.example.com', by: 'out.example.net', at: edits.receivedAt } }));
    assert.equal(out, 'Received: from app1.example.com by out.example.net (hedwig) id a1b2-c3;\r\n\tThu, 02 Jan 2025 03:04:05 +0000\r\nMessage-ID: <m@x>\r\nDate: x\r\n\r\n');
  });

  it('keeps 8-bit and raw UTF-8 bytes in headers and body exactly', () => {
    const raw = Buffer.concat([Buffer.from('Subject: caf\xc3\xa9 \xe9\r\nBcc: x@y.z\r\n\r\n', 'latin1'), Buffer.from([0xe9, 0xff, 0x00, 0x0d, 0x0a])]);
    const out = editHeaders(raw, { ...edits });
    assert.ok(out.includes(Buffer.from('Subject: caf\xc3\xa9 \xe9\r\n', 'latin1')));
    assert.ok(out.subarray(out.length - 5).equals(Buffer.from([0xe9, 0xff, 0x00, 0x0d, 0x0a])));
  });

  it('handles a message without a body (adding the blank line), one without a header section, and bare-LF line ends', () => {
    assert.equal(text(editHeaders(Buffer.from('Subject: x\r\n'), edits)), 'Message-ID: <a1b2-c3@example.com>\r\nDate: Thu, 02 Jan 2025 03:04:05 +0000\r\nSubject: x\r\n\r\n');
    const complete = 'Message-ID: <m@x>\r\nDate: x\r\n';
    assert.equal(text(editHeaders(Buffer.from(complete), edits)), `${complete}\r\n`, 'the blank line that ends the header section is added');
    assert.equal(text(editHeaders(Buffer.from('\r\nonly a body\r\n'), edits)), 'Message-ID: <a1b2-c3@example.com>\r\nDate: Thu, 02 Jan 2025 03:04:05 +0000\r\n\r\nonly a body\r\n');
    const lf = normalizeLineEnds(Buffer.from('Subject: x\nBcc: y@z.t\n\nline\nline\r\nlone\rcr\n'));
    assert.equal(text(lf), 'Subject: x\r\nBcc: y@z.t\r\n\r\nline\r\nline\r\nlone\r\ncr\r\n');
    assert.deepEqual(splitMessage(lf).fields.map((f) => f.name), ['subject', 'bcc']);
  });
});
