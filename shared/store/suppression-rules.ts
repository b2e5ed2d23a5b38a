/**
 * Which permanent failures put a recipient on the suppression list: replies that say the
 * address itself does not exist (its mailbox or its domain), so sending there again can only
 * hurt the sending IP's reputation. Failures about the sender, the content or a full mailbox
 * are not the address's fault and never suppress. One ordered table, first match wins; the
 * README prints the same table.
 */
export interface ReplyFacts {
  responseCode?: number | undefined;
  enhancedCode?: string | undefined;
  response: string;
}

export interface SuppressionRule {
  /** Enhanced status code (RFC 3463) the reply carries, exactly. */
  enhanced?: string;
  /** Reply codes this rule applies to, when matched by text (replies without an enhanced code). */
  codes?: readonly number[];
  /** Text of the reply, for servers that give no enhanced code. */
  text?: RegExp;
  suppress: boolean;
  reason: string;
}

const NO_SUCH_USER = /\b(no such (user|mailbox|recipient)|user(name)? (unknown|not found)|unknown (user|recipient|mailbox)|mailbox (unavailable|not found|does not exist)|recipient (address )?rejected: (user unknown|unknown)|address (does not exist|unknown)|invalid (recipient|mailbox)|does not exist)\b/i;

export const SUPPRESSION_RULES: readonly SuppressionRule[] = [
  { enhanced: '5.1.1', suppress: true, reason: 'bad destination mailbox address (no such user)' },
  { enhanced: '5.1.2', suppress: true, reason: 'bad destination system address (no such domain, or no MX/A/AAAA)' },
  { enhanced: '5.1.3', suppress: true, reason: 'bad destination mailbox address syntax' },
  { enhanced: '5.1.6', suppress: true, reason: 'mailbox has moved, no forwarding address' },
  { enhanced: '5.1.10', suppress: true, reason: 'null MX: the domain accepts no mail (RFC 7505)' },
  // Any other enhanced code decides by itself (5.2.2 mailbox full, 5.7.x policy, ...): not the address's fault.
  { enhanced: '*', suppress: false, reason: 'another enhanced status code: not about the address' },
  { codes: [550, 551, 553], text: NO_SUCH_USER, suppress: true, reason: 'reply text says the address does not exist (no enhanced code)' },
];

/** The rule that decides a bounced recipient's reply; undefined means "do not suppress". */
export function suppressionRuleFor(reply: ReplyFacts): SuppressionRule | undefined {
  for (const rule of SUPPRESSION_RULES) {
    if (rule.enhanced !== undefined) {
      if (reply.enhancedCode === undefined) continue;
      if (rule.enhanced === '*' || rule.enhanced === reply.enhancedCode) return rule.suppress ? rule : undefined;
      continue;
    }
    if (rule.codes && (reply.responseCode === undefined || !rule.codes.includes(reply.responseCode))) continue;
    if (rule.text && !rule.text.test(reply.response)) continue;
    return rule.suppress ? rule : undefined;
  }
  return undefined;
}
