import { execFile } from 'node:child_process';

/**
 * Parses a delivery status notification with an independent implementation: Python's
 * `email` package, which knows multipart/report and splits message/delivery-status into
 * its per-message and per-recipient field blocks (RFC 3464 §2.1).
 */
export interface ParsedDsn {
  headers: Record<string, string>;
  contentType: string;
  reportType: string | null;
  parts: Array<{ contentType: string; transferEncoding: string | null; text: string }>;
  /** Field names as written (Reporting-MTA, Arrival-Date, ...), values unfolded. */
  perMessage: Record<string, string>;
  perRecipient: Array<Record<string, string>>;
  /** Longest line of the raw message, in bytes, without CRLF. */
  longestLine: number;
  sevenBit: boolean;
  bareLf: boolean;
}

const SCRIPT = String.raw`
import email, email.policy, json, sys
raw = sys.stdin.buffer.read()
msg = email.message_from_bytes(raw, policy=email.policy.default)
def fields(block):
    return {k: ' '.join(str(v).split()) for k, v in block.items()}
parts = []
per_message, per_recipient = {}, []
for part in msg.iter_parts():
    ctype = part.get_content_type()
    if ctype == 'message/delivery-status':
        blocks = part.get_payload()
        per_message = fields(blocks[0])
        per_recipient = [fields(b) for b in blocks[1:]]
        text = part.as_string()
    else:
        # The bytes as sent, transfer decoding undone, read as UTF-8 whatever the charset says.
        text = part.get_payload(decode=True).decode('utf-8', 'replace')
    parts.append({'contentType': ctype, 'transferEncoding': part.get('Content-Transfer-Encoding'), 'text': text})
lines = raw.split(b'\r\n')
print(json.dumps({
    'headers': {k: str(v) for k, v in msg.items()},
    'contentType': msg.get_content_type(),
    'reportType': msg.get_param('report-type'),
    'parts': parts,
    'perMessage': per_message,
    'perRecipient': per_recipient,
    'longestLine': max(len(l) for l in lines),
    'sevenBit': all(b < 128 for b in raw),
    'bareLf': any(b'\n' in l for l in lines),
}))
`;

export function parseDsn(raw: Buffer): Promise<ParsedDsn> {
  return new Promise((resolve, reject) => {
    const child = execFile('python3', ['-c', SCRIPT], { timeout: 10_000, maxBuffer: 4 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`python3 could not parse the DSN: ${stderr || err.message}`));
      resolve(JSON.parse(stdout) as ParsedDsn);
    });
    child.stdin!.end(raw);
  });
}
