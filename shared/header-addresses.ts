/**
 * The addresses in an address header field (From, Sender, To, Cc, Reply-To: RFC 5322
 * §3.4 address-list), with the position of each in the field body, so that a bare local
 * part can be qualified in place and everything else stays byte for byte as written.
 *
 * Written by hand: nodemailer's addressparser (already a dependency) returns names and
 * addresses but no positions, so using it would mean writing every field it touches
 * again, changing quoting, comments and folding that the author chose. This is a
 * tokenizer (atoms, quoted strings, comments, domain literals, specials) and a small
 * state machine over it: one pass, no regular expressions, linear in the field's length.
 *
 * Input is the field body as a latin1 string (one character per byte), as
 * shared/message-header.ts gives it: raw UTF-8 bytes (RFC 6532) pass through unchanged.
 */
import type { HeaderField } from './message-header.ts';

export interface HeaderAddress {
  /** The local part as written (quotes kept), without comments or folding white space. */
  local: string;
  /** The domain as written, undefined for a bare local part (no `@`). */
  domain?: string;
  /** Offset in the field body right after the local part: where `@domain` goes when it is bare. */
  localEnd: number;
}

export type AddressList = { ok: true; addresses: HeaderAddress[] } | { ok: false; reason: string };

type TokenType = 'atom' | 'quoted' | 'literal' | 'special';

interface Token {
  type: TokenType;
  text: string;
  end: number;
}

const SPECIALS = new Set(['<', '>', '@', ',', ';', ':', '.']);

function isSpace(c: string): boolean {
  return c === ' ' || c === '\t' || c === '\r' || c === '\n';
}

/** Index just past the quoted string, comment or literal opened at `start`, or -1 when it never closes. */
function skipDelimited(body: string, start: number, close: string, nests: boolean): number {
  let depth = 0;
  for (let i = start; i < body.length; i++) {
    const c = body[i];
    if (c === '\\') {
      i++;
    } else if (nests && c === body[start]) {
      depth++;
    } else if (c === close) {
      if (!nests || --depth === 0) return i + 1;
    }
  }
  return -1;
}

function tokenize(body: string): Token[] | string {
  const tokens: Token[] = [];
  let i = 0;
  while (i < body.length) {
    const c = body[i]!;
    if (isSpace(c)) {
      i++;
    } else if (c === '(') {
      const end = skipDelimited(body, i, ')', true);
      if (end < 0) return 'unterminated comment';
      i = end;
    } else if (c === '"' || c === '[') {
      const end = skipDelimited(body, i + 1, c === '"' ? '"' : ']', false);
      if (end < 0) return c === '"' ? 'unterminated quoted string' : 'unterminated domain literal';
      tokens.push({ type: c === '"' ? 'quoted' : 'literal', text: body.slice(i, end), end });
      i = end;
    } else if (SPECIALS.has(c)) {
      tokens.push({ type: 'special', text: c, end: i + 1 });
      i++;
    } else {
      const start = i;
      while (i < body.length && !isSpace(body[i]!) && !SPECIALS.has(body[i]!) && body[i] !== '(' && body[i] !== '"' && body[i] !== '[') i++;
      tokens.push({ type: 'atom', text: body.slice(start, i), end: i });
    }
  }
  return tokens;
}

const isSpecial = (token: Token, text: string) => token.type === 'special' && token.text === text;

/** The addr-spec tokens of one address: `local@domain`, or a bare local part. */
function addressOf(spec: Token[]): HeaderAddress | undefined {
  // An obsolete route (`<@relay.test:user@example.com>`) ends at its colon.
  let from = 0;
  for (let i = 0; i < spec.length; i++) if (isSpecial(spec[i]!, ':')) from = i + 1;
  const tokens = spec.slice(from);
  if (tokens.length === 0) return undefined;
  let at = -1;
  for (let i = tokens.length - 1; i >= 0 && at < 0; i--) if (isSpecial(tokens[i]!, '@')) at = i;
  const localTokens = at < 0 ? tokens : tokens.slice(0, at);
  if (localTokens.length === 0) return undefined;
  const local = localTokens.map((t) => t.text).join('');
  const localEnd = localTokens[localTokens.length - 1]!.end;
  if (at < 0) return { local, localEnd };
  return { local, domain: tokens.slice(at + 1).map((t) => t.text).join(''), localEnd };
}

/** Every mailbox in an address-list field body (groups opened up, display names and comments left out). */
export function parseAddressList(body: string): AddressList {
  const tokens = tokenize(body);
  if (typeof tokens === 'string') return { ok: false, reason: tokens };
  const addresses: HeaderAddress[] = [];
  let current: Token[] = [];
  let angle: Token[] | undefined;
  let inAngle = false;
  let inGroup = false;
  const finish = () => {
    const address = addressOf(angle ?? current);
    if (address) addresses.push(address);
    current = [];
    angle = undefined;
  };
  for (const token of tokens) {
    if (inAngle) {
      if (isSpecial(token, '>')) inAngle = false;
      else angle!.push(token);
    } else if (isSpecial(token, '<')) {
      if (angle) return { ok: false, reason: 'two angle addresses in one mailbox' };
      inAngle = true;
      angle = [];
    } else if (isSpecial(token, ',')) {
      finish();
    } else if (isSpecial(token, ':') && !inGroup && !angle) {
      // `display-name:` opens a group: what came before was its name, not an address.
      inGroup = true;
      current = [];
    } else if (isSpecial(token, ';') && inGroup) {
      finish();
      inGroup = false;
    } else if (!angle) {
      current.push(token);
    }
  }
  if (inAngle) return { ok: false, reason: 'unterminated angle address' };
  finish();
  return { ok: true, addresses };
}

/**
 * The field body with `@domain` after every bare local part (RFC 6409 §8.1: "qualify the
 * local part"), or undefined when there is nothing to qualify or the field does not parse
 * (then it is left alone). `domain` is a latin1 string, like the body.
 */
export function qualifyAddressList(body: string, domain: string): string | undefined {
  const list = parseAddressList(body);
  if (!list.ok) return undefined;
  const bare = list.addresses.filter((a) => a.domain === undefined);
  if (bare.length === 0) return undefined;
  let out = body;
  // From the end, so the earlier offsets still hold.
  for (const address of bare.reverse()) out = `${out.slice(0, address.localEnd)}@${domain}${out.slice(address.localEnd)}`;
  return out;
}

/** The body of a header field: what follows the colon of its name (latin1, folding kept). */
export function fieldBody(field: HeaderField): string {
  return field.text.slice(field.text.indexOf(':') + 1);
}

/** The addresses of every field called `name` (lower case); not ok when one of them does not parse. */
export function fieldAddresses(fields: readonly HeaderField[], name: string): AddressList {
  const addresses: HeaderAddress[] = [];
  for (const field of fields) {
    if (field.name !== name) continue;
    const list = parseAddressList(fieldBody(field));
    if (!list.ok) return list;
    addresses.push(...list.addresses);
  }
  return { ok: true, addresses };
}

/** A header address's domain as a comparable name: UTF-8 decoded, lower case, without a trailing dot. */
export function comparableDomain(domain: string): string {
  const name = Buffer.from(domain, 'latin1').toString('utf8').toLowerCase();
  return name.endsWith('.') ? name.slice(0, -1) : name;
}
