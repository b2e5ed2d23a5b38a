import { readFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { errorCode, errorMessage } from '../../shared/errors.ts';
import { signRequest } from '../../shared/signing.ts';
import { CliError, EXIT, JSON_OPTION, parseCommandArgs, parseDuration, usageError, type CliIo, type Command } from '../args.ts';
import { readKey } from './send.ts';

const DEFAULT_POSTOFFICE = 'http://127.0.0.1:8025';

interface StatusAnswer {
  id: string;
  state: string;
  attempts: number;
  receivedAt: string | null;
  lastAttemptAt: string | null;
  nextAttemptAt: string | null;
  recipients: Array<{ recipient: string; state: string; lastResponse: string | null }>;
}

/** A signed GET (empty body), as the post office authenticates it. */
function signedGet(url: URL, options: { fqdn: string; key: string; ca?: string; timeoutMs: number }): Promise<{ status: number; body: string }> {
  const path = `${url.pathname}${url.search}`;
  const headers = signRequest(options.key, { method: 'GET', path, fqdn: options.fqdn, body: '' });
  const isHttps = url.protocol === 'https:';
  return new Promise((resolve, reject) => {
    const req = (isHttps ? httpsRequest : httpRequest)(url, { method: 'GET', headers, timeout: options.timeoutMs, ...(isHttps && options.ca ? { ca: options.ca } : {}) }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(Object.assign(new Error(`no answer within ${options.timeoutMs} ms`), { code: 'ETIMEDOUT' })));
    req.on('error', reject);
    req.end();
  });
}

export const status: Command = {
  name: 'status',
  summary: "a queued message's state, attempts and last reply per recipient (post office API)",
  help: `Usage: hedwig status ID [--json]

Asks the post office (GET /v1/messages/ID, signed like the send API) about a message
still in the queue: its state (queued, delivering, deferred, done), attempts, the next
attempt and the last reply for each recipient. ID is the post office's id: the \`id\` of
the 202 answer, \`hedwig send --via postoffice\` prints it, and mailman logs it as
postofficeId.

  --url URL            default $HEDWIG_POSTOFFICE_URL or ${DEFAULT_POSTOFFICE}
  --fqdn NAME          this host's name in the post office config; default $HEDWIG_FQDN
  --key-file FILE      this host's key; default $HEDWIG_KEY_FILE, else $HEDWIG_KEY
  --ca FILE            private CA of the post office's certificate
  --timeout DURATION   default 10s
  --json               the post office's answer as is

Exit codes: 0 found, 1 the post office unreachable or refusing (401), 2 usage, 3 not in the queue.`,
  async run(argv: string[], io: CliIo) {
    const { values, positionals } = parseCommandArgs(this.name, argv, {
      ...JSON_OPTION,
      url: { type: 'string' },
      fqdn: { type: 'string' },
      'key-file': { type: 'string' },
      ca: { type: 'string' },
      timeout: { type: 'string', default: '10s' },
    });
    if (positionals.length !== 1) throw usageError('status: expected one message id');
    const id = positionals[0]!;
    if (!/^[A-Za-z0-9._-]{1,200}$/.test(id)) throw usageError(`status: not a message id: ${JSON.stringify(id)}`);
    const fqdn = values.fqdn ?? io.env.HEDWIG_FQDN;
    if (!fqdn) throw usageError('status: --fqdn or HEDWIG_FQDN is required');
    let url: URL;
    try {
      url = new URL(`${(values.url ?? io.env.HEDWIG_POSTOFFICE_URL ?? DEFAULT_POSTOFFICE).replace(/\/+$/, '')}/v1/messages/${encodeURIComponent(id)}`);
    } catch {
      throw usageError('status: --url is not a URL');
    }
    const ca = values.ca ? readFileSync(values.ca, 'utf8') : undefined;
    let answer: { status: number; body: string };
    try {
      answer = await signedGet(url, { fqdn, key: readKey(io.env, values['key-file'], 'status'), ...(ca ? { ca } : {}), timeoutMs: parseDuration(values.timeout, '--timeout') });
    } catch (err) {
      throw new CliError('UNREACHABLE', `cannot reach the post office at ${url.origin}: ${errorCode(err) ?? errorMessage(err)}`, EXIT.failure, { cause: err });
    }
    if (answer.status === 404) {
      if (values.json) io.stdout.write(`${answer.body}\n`);
      throw new CliError('NOT_FOUND', `${id} is not in the queue (unknown, delivered, or failed: see hedwig failed list)`, EXIT.notFound);
    }
    if (answer.status !== 200) throw new CliError('REFUSED', `the post office answered ${answer.status}: ${answer.body.slice(0, 300)}`, EXIT.failure);
    if (values.json) {
      io.stdout.write(`${answer.body}\n`);
      return EXIT.ok;
    }
    const s = JSON.parse(answer.body) as StatusAnswer;
    const lines = [
      `message    ${s.id}`,
      `state      ${s.state}`,
      `received   ${s.receivedAt ?? '-'}`,
      `attempts   ${s.attempts}${s.lastAttemptAt ? ` (last ${s.lastAttemptAt})` : ''}`,
      ...(s.nextAttemptAt ? [`next       ${s.nextAttemptAt}`] : []),
      'recipients:',
      ...s.recipients.map((r) => `  ${r.recipient}  ${r.state}${r.lastResponse ? `  ${r.lastResponse.replace(/[\r\n]+/g, ' ')}` : ''}`),
    ];
    io.stdout.write(`${lines.join('\n')}\n`);
    return EXIT.ok;
  },
};
