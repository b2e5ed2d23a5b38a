import { createHash, sign as signBytes, type KeyObject } from 'node:crypto';
import { PassThrough } from 'node:stream';
import MessageParser from 'nodemailer/lib/dkim/message-parser';
import RelaxedBody from 'nodemailer/lib/dkim/relaxed-body';
import sign from 'nodemailer/lib/dkim/sign';
import { foldLines } from 'nodemailer/lib/mime-funcs';

/**
 * ed25519-sha256 DKIM signatures (RFC 8463), relaxed/relaxed.
 *
 * Hand-written on purpose, but only the part nodemailer lacks: its signer hard-codes
 * `a=rsa-sha256` and `crypto.createSign('RSA-SHA256')`, so an Ed25519 key makes it return no
 * signature at all (measured with nodemailer 10.6: the message comes out unsigned). The
 * canonicalisation, the part that went wrong in dkim-signer (DESIGN.md), is nodemailer's
 * own: its MessageParser splits the header, RelaxedBody hashes the relaxed body and
 * `sign.relaxedHeaders` canonicalises the signed fields, so RSA and Ed25519 signatures of
 * one message are computed over exactly the same canonical form. What is ours is the tag
 * list and RFC 8463 §3: Ed25519 (PureEdDSA) signs the SHA-256 hash of the canonical header
 * data, not the data itself.
 */

export interface Ed25519Signature {
  /** The complete `DKIM-Signature: ...` field, folded, without the final CRLF. */
  field: string;
}

/** Relaxed body hash (base64 SHA-256) and the parsed header lines of `raw`. */
function parse(raw: Buffer): Promise<{ headers: MessageParser.Header[]; bodyHash: string }> {
  return new Promise((resolve, reject) => {
    const parser = new MessageParser();
    const body = new RelaxedBody({ hashAlgo: 'sha256' });
    let headers: MessageParser.Header[] = [];
    parser.on('headers', (value: MessageParser.Header[]) => (headers = value));
    body.on('hash', (bodyHash: string) => resolve({ headers, bodyHash }));
    parser.once('error', reject);
    body.once('error', reject);
    // The body passes through RelaxedBody unchanged; only its hash is wanted here.
    body.resume();
    const input = new PassThrough();
    input.pipe(parser).pipe(body);
    input.end(raw);
  });
}

/** Tag values come from validated config; strip what could close a tag anyway (nodemailer does the same). */
const clean = (value: string) => value.replace(/[\x00-\x1f\x7f;=]/g, '');

/** The `DKIM-Signature` field for `raw` signed with an Ed25519 key over `fieldNames` (colon-separated). */
export async function signEd25519(raw: Buffer, key: { domain: string; selector: string; privateKey: KeyObject }, fieldNames: string): Promise<Ed25519Signature> {
  const { headers, bodyHash } = await parse(raw);
  const canonical = sign.relaxedHeaders(headers, fieldNames);
  const tags = ['v=1', 'a=ed25519-sha256', 'c=relaxed/relaxed', `d=${clean(key.domain)}`, 'q=dns/txt', `s=${clean(key.selector)}`, `bh=${bodyHash}`, `h=${clean(canonical.fieldNames)}`];
  const unsigned = `${foldLines(`DKIM-Signature: ${tags.join('; ')}`, 76)};\r\n b=`;
  // RFC 6376 §3.7: the signature field itself, with an empty b=, relaxed, last and without CRLF.
  const relaxedSelf = unsigned
    .slice(unsigned.indexOf(':') + 1)
    .replace(/\r?\n/g, '')
    .replace(/[ \t]+/g, ' ')
    .replace(/^ | $/g, '');
  const data = Buffer.from(`${canonical.headers}dkim-signature:${relaxedSelf}`, 'latin1');
  const signature = signBytes(null, createHash('sha256').update(data).digest(), key.privateKey).toString('base64');
  return { field: unsigned + signature.replace(/(^.{73}|.{75}(?!\r?\n|\r))/g, '$&\r\n ').trim() };
}
