import { isIP } from 'node:net';

/**
 * RFC 5321 §4.1.2 mailbox syntax (with RFC 6531 UTF-8 in local part and domain).
 *
 * Written by hand on purpose: the e-mail validators on npm check RFC 5322 addr-spec
 * (comments, folding white space, obsolete forms) or a loose "looks like an address"
 * regex, and neither is what an SMTP envelope may carry. CR, LF and other controls can
 * never match, which is what stops header/command injection through addresses.
 */
// UTF8-non-ascii is every code point from U+0080 on, astral ones included (emoji, CJK
// Extension B), but never a lone surrogate: it has no UTF-8 form and would change on the wire.
const NON_ASCII = '\\u{80}-\\u{D7FF}\\u{E000}-\\u{10FFFF}';
const ATEXT = `[A-Za-z0-9!#$%&'*+\\-/=?^_\`{|}~${NON_ASCII}]`;
const DOT_STRING = new RegExp(`^${ATEXT}+(?:\\.${ATEXT}+)*$`, 'u');
const QUOTED_STRING = new RegExp(`^"(?:[\\x20\\x21\\x23-\\x5b\\x5d-\\x7e${NON_ASCII}]|\\\\[\\x20-\\x7e])*"$`, 'u');
const LABEL = new RegExp(`^(?:[A-Za-z0-9${NON_ASCII}](?:[A-Za-z0-9${NON_ASCII}-]{0,61}[A-Za-z0-9${NON_ASCII}])?)$`, 'u');

export const MAX_LOCAL_PART = 64;
export const MAX_DOMAIN = 255;
export const MAX_PATH = 256;

export function isValidDomain(domain: string): boolean {
  if (domain.length === 0 || domain.length > MAX_DOMAIN) return false;
  const labels = domain.split('.');
  // A trailing dot (absolute name) is not allowed in SMTP; single-label domains are, for local setups.
  return labels.every((label) => LABEL.test(label)) && !/^\d+$/.test(labels[labels.length - 1]!);
}

function isValidAddressLiteral(literal: string): boolean {
  const inner = literal.slice(1, -1);
  if (inner.toLowerCase().startsWith('ipv6:')) return isIP(inner.slice(5)) === 6;
  return isIP(inner) === 4;
}

/** Whether the domain part is an address literal (`user@[192.0.2.1]`, `user@[IPv6:::1]`). */
export function hasAddressLiteral(address: string): boolean {
  return address.endsWith(']') && address.lastIndexOf('@[') > 0;
}

/**
 * A mailbox hedwig takes: RFC 5321 syntax with a domain name. Address literals are
 * syntax too, but hedwig refuses them (issue 12.8: they would be looked up as MX names and
 * retried for days, and a literal is a way to reach internal addresses); `addressLiteral`
 * accepts them where old data may hold one (jobs queued before they were refused).
 */
export function isValidMailbox(address: string, options: { addressLiteral?: boolean } = {}): boolean {
  if (address.length === 0 || address.length > MAX_PATH - 2) return false;
  const at = address.lastIndexOf('@');
  if (at <= 0 || at === address.length - 1) return false;
  const local = address.slice(0, at);
  const domain = address.slice(at + 1);
  if (Buffer.byteLength(local) > MAX_LOCAL_PART) return false;
  if (!DOT_STRING.test(local) && !QUOTED_STRING.test(local)) return false;
  if (domain.startsWith('[') && domain.endsWith(']')) return options.addressLiteral === true && isValidAddressLiteral(domain);
  return isValidDomain(domain);
}

/** Lower-cased domain part of a valid mailbox, used to group recipients per destination. */
export function domainOf(address: string): string {
  return address.slice(address.lastIndexOf('@') + 1).toLowerCase();
}

export function isAscii(value: string): boolean {
  return /^[\x00-\x7f]*$/.test(value);
}
