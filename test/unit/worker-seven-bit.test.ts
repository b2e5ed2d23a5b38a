import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { convertTo7bit, has8bit } from '../../worker/seven-bit.ts';

/** RFC 2045 quoted-printable decoding, for checking what the converter wrote. */
function qpDecode(text: string): Buffer {
  const joined = text.replace(/=\r\n/g, '');
  const bytes: number[] = [];
  for (let i = 0; i < joined.length; i++) {
    if (joined[i] === '=' && /^[0-9A-F]{2}$/.test(joined.slice(i + 1, i + 3))) {
      bytes.push(parseInt(joined.slice(i + 1, i + 3), 16));
      i += 2;
    } else bytes.push(joined.charCodeAt(i));
  }
  return Buffer.from(bytes);
}

const crlf = (s: string) => s.replace(/\n/g, '\r\n');

describe('8BITMIME downgrade (RFC 6152 §3)', () => {
  it('re-encodes an 8-bit text body as quoted-printable, every line under 78 characters, and keeps the header otherwise', () => {
    const body = `Grüße aus Köln – ${'ä'.repeat(60)}\r\nzweite Zeile mit Leerzeichen am Ende   \r\n.dot\r\n`;
    const raw = Buffer.concat([Buffer.from(crlf('From: a@example.com\nSubject: hi\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n')), Buffer.from(body, 'utf8')]);
    const result = convertTo7bit(raw);
    assert.ok(result.ok);
    assert.equal(has8bit(result.raw), false);
    const [header, encoded] = [result.raw.toString('latin1').split('\r\n\r\n')[0]!, result.raw.toString('latin1').split('\r\n\r\n').slice(1).join('\r\n\r\n')];
    assert.equal(header, 'From: a@example.com\r\nSubject: hi\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable');
    assert.ok(encoded.split('\r\n').every((line) => line.length <= 76), 'line length');
    assert.equal(qpDecode(encoded).toString('utf8'), body);
  });

  it('converts the parts of a multipart message one by one: text to quoted-printable, binary to base64, 7-bit parts untouched', () => {
    const binary = Buffer.from([0x00, 0xff, 0x80, 0x41, 0x0d, 0x0a, 0xfe]);
    const raw = Buffer.concat([
      Buffer.from(crlf('From: a@example.com\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b1"\n\npreamble\n--b1\nContent-Type: text/plain; charset=iso-8859-1\n\n')),
      Buffer.from('caf\xe9\r\n', 'latin1'),
      Buffer.from(crlf('--b1\nContent-Type: text/plain\n\nplain ascii\n--b1\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: binary\n\n')),
      binary,
      Buffer.from(crlf('\n--b1--\nepilogue\n')),
    ]);
    const result = convertTo7bit(raw);
    assert.ok(result.ok, !result.ok ? result.message : '');
    assert.equal(has8bit(result.raw), false);
    const text = result.raw.toString('latin1');
    assert.match(text, /Content-Type: text\/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ncaf=E9\r\n--b1\r\n/);
    assert.match(text, /--b1\r\nContent-Type: text\/plain\r\n\r\nplain ascii\r\n--b1\r\n/, 'the 7-bit part is unchanged');
    const b64 = /Content-Transfer-Encoding: base64\r\n\r\n([A-Za-z0-9+/=\r\n]+?)\r\n--b1--/.exec(text);
    assert.ok(b64, text);
    assert.deepEqual(Buffer.from(b64[1]!, 'base64'), Buffer.concat([binary]));
    assert.ok(text.startsWith('From: a@example.com\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"\r\n\r\npreamble\r\n--b1\r\n'));
    assert.ok(text.endsWith('--b1--\r\nepilogue\r\n'));
  });

  it('converts inside an attached message', () => {
    const raw = Buffer.concat([
      Buffer.from(crlf('Content-Type: multipart/mixed; boundary=outer\n\n--outer\nContent-Type: message/rfc822\n\nSubject: inner\nContent-Type: text/plain; charset=utf-8\n\n')),
      Buffer.from('ünïcödé\r\n', 'utf8'),
      Buffer.from(crlf('--outer--\n')),
    ]);
    const result = convertTo7bit(raw);
    assert.ok(result.ok, !result.ok ? result.message : '');
    assert.equal(has8bit(result.raw), false);
    assert.match(result.raw.toString('latin1'), /Content-Type: message\/rfc822\r\nContent-Transfer-Encoding: 7bit\r\n\r\nSubject: inner\r\nContent-Type: text\/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=C3=BC/);
  });

  it('refuses what cannot be converted without changing what the author wrote', () => {
    const cases: Array<[Buffer, RegExp]> = [
      [Buffer.from('Subject: Grüße\r\n\r\nbody\r\n', 'utf8'), /8-bit bytes in a header/],
      [Buffer.concat([Buffer.from('Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n'), Buffer.from([0xff]), Buffer.from('\r\n')]), /declared base64/],
      [Buffer.concat([Buffer.from('Content-Type: multipart/mixed; boundary=x\r\n\r\npre\xe4\r\n--x\r\n\r\na\r\n--x--\r\n', 'latin1')]), /preamble/],
    ];
    for (const [raw, reason] of cases) {
      const result = convertTo7bit(raw);
      assert.equal(result.ok, false);
      if (!result.ok) {
        assert.equal(result.code, 'EIGHTBIT_UNCONVERTIBLE');
        assert.match(result.message, reason);
      }
    }
  });

  it('leaves a 7-bit message as it is', () => {
    const raw = Buffer.from('Subject: x\r\n\r\nascii only\r\n');
    const result = convertTo7bit(raw);
    assert.ok(result.ok && result.raw === raw);
  });
});
