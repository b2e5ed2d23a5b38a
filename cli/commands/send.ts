import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { createTransport } from 'nodemailer';
import MailComposer from 'nodemailer/lib/mail-composer';
import { isValidMailbox } from '../../shared/address.ts';
import { parseHostPort } from '../../shared/host-port.ts';
import { errorMessage } from '../../shared/errors.ts';
import { createPostofficeClient } from '../../mailman/postoffice-client.ts';
import { CliError, EXIT, JSON_OPTION, parseCommandArgs, parseDuration, usageError, type CliIo, type Command } from '../args.ts';

const DEFAULT_MAILMAN = '127.0.0.1:2525';
const DEFAULT_POSTOFFICE = 'http://127.0.0.1:8025';

export interface TestMessage {
  from: string;
  to: string[];
  raw: Buffer;
}

export async function composeTestMessage(options: { from: string; to: string[]; subject: string; now: number }): Promise<Buffer> {
  const host = hostname();
  const composer = new MailComposer({
    from: options.from,
    to: options.to,
    subject: options.subject,
    date: new Date(options.now),
    messageId: `<${randomUUID()}@${host}>`,
    text: `A test message sent with \`hedwig send\` from ${host} at ${new Date(options.now).toISOString()}.\n`,
    headers: { 'X-Mailer': 'hedwig send' },
  });
  return composer.compile().build();
}

interface Sent {
  via: 'mailman' | 'postoffice';
  /** The id the relay answered with (mailman's "queued as", the post office's `id`). */
  id: string;
  response: string;
}

async function viaMailman(message: TestMessage, smtp: string, timeoutMs: number): Promise<Sent> {
  let address: { host: string; port: number };
  try {
    address = parseHostPort(smtp, 25);
  } catch {
    throw usageError(`--smtp: not a host[:port]: ${JSON.stringify(smtp)}`);
  }
  const transport = createTransport({
    host: address.host,
    port: address.port,
    secure: false,
    name: hostname(),
    // A test message to the local mailman: its certificate (if it offers STARTTLS at all)
    // names the host, not the loopback address this usually connects to.
    tls: { rejectUnauthorized: false },
    connectionTimeout: timeoutMs,
    greetingTimeout: timeoutMs,
    socketTimeout: timeoutMs,
  });
  try {
    const info = await transport.sendMail({ envelope: { from: message.from, to: message.to }, raw: message.raw });
    const id = /queued as (\S+)/.exec(info.response)?.[1] ?? '(unknown)';
    return { via: 'mailman', id, response: info.response };
  } catch (err) {
    const response = (err as { response?: unknown }).response;
    throw new CliError('NOT_QUEUED', `mailman at ${smtp} did not take the message: ${typeof response === 'string' ? response : errorMessage(err)}`, EXIT.failure, { cause: err });
  } finally {
    transport.close();
  }
}

async function viaPostoffice(message: TestMessage, options: { url: string; fqdn: string; key: string; ca?: string; timeoutMs: number }): Promise<Sent> {
  const client = createPostofficeClient({ url: options.url, fqdn: options.fqdn, key: options.key, ca: options.ca, timeoutMs: options.timeoutMs });
  try {
    const result = await client.forward({ idempotencyKey: randomUUID(), mailfrom: message.from, rcpttos: message.to, data: message.raw });
    switch (result.kind) {
      case 'accepted':
        return { via: 'postoffice', id: result.id, response: `accepted as ${result.id}` };
      case 'rejected':
        throw new CliError('REJECTED', `the post office rejected the message: ${result.status} ${result.error} ${result.message}`.trim(), EXIT.failure);
      case 'temporary':
        throw new CliError('NOT_QUEUED', `the post office did not take the message: ${result.reason}`, EXIT.failure);
    }
  } finally {
    client.close();
  }
}

export function readKey(env: NodeJS.ProcessEnv, keyFile: string | undefined, command = 'send --via postoffice'): string {
  const file = keyFile ?? env.HEDWIG_KEY_FILE;
  if (file) {
    try {
      return readFileSync(file, 'utf8').replace(/\r?\n$/, '');
    } catch (err) {
      throw new CliError('UNREADABLE', `cannot read the key file ${file}: ${(err as NodeJS.ErrnoException).code ?? errorMessage(err)}`, EXIT.failure);
    }
  }
  if (env.HEDWIG_KEY) return env.HEDWIG_KEY;
  throw usageError(`${command}: the host key is needed: --key-file FILE, HEDWIG_KEY_FILE or HEDWIG_KEY`);
}

export const send: Command = {
  name: 'send',
  summary: 'send a test message through the relay (mailman or the post office)',
  help: `Usage: hedwig send --to ADDRESS [--from ADDRESS] [--via mailman|postoffice] [--json]

Sends a short test message (subject "hedwig test", header X-Mailer: hedwig send) and prints
the id the relay gave it: follow it with \`hedwig grep ADDRESS\` on the logs.

  --to ADDRESS         recipient (repeatable)
  --from ADDRESS       envelope and header sender; default hedwig-test@<this host name>
  --subject TEXT       default "hedwig test"
  --via mailman        over SMTP to mailman (default):
  --smtp HOST:PORT       mailman's address; default $HEDWIG_MAILMAN or ${DEFAULT_MAILMAN}
  --via postoffice     signed POST /v1/messages straight to the post office:
  --url URL              default $HEDWIG_POSTOFFICE_URL or ${DEFAULT_POSTOFFICE}
  --fqdn NAME            this host's name in the post office config; default $HEDWIG_FQDN
  --key-file FILE        this host's key; default $HEDWIG_KEY_FILE, else $HEDWIG_KEY
                         (the key is never taken as a flag: it would show in ps)
  --ca FILE              private CA of the post office's certificate
  --timeout DURATION   default 30s
  --json               {via, id, response}

Exit codes: 0 queued, 1 not queued (rejected, unreachable), 2 usage.`,
  async run(argv: string[], io: CliIo) {
    const { values, positionals } = parseCommandArgs(this.name, argv, {
      ...JSON_OPTION,
      to: { type: 'string', multiple: true },
      from: { type: 'string' },
      subject: { type: 'string', default: 'hedwig test' },
      via: { type: 'string', default: 'mailman' },
      smtp: { type: 'string' },
      url: { type: 'string' },
      fqdn: { type: 'string' },
      'key-file': { type: 'string' },
      ca: { type: 'string' },
      timeout: { type: 'string', default: '30s' },
    });
    if (positionals.length > 0) throw usageError(`send: unexpected argument ${positionals[0]}`);
    const to = values.to ?? [];
    if (to.length === 0) throw usageError('send: --to ADDRESS is required');
    for (const address of to) if (!isValidMailbox(address)) throw usageError(`send: --to: not an address: ${JSON.stringify(address)}`);
    const from = values.from ?? `hedwig-test@${hostname()}`;
    if (!isValidMailbox(from)) throw usageError(`send: --from: not an address: ${JSON.stringify(from)}`);
    if (values.via !== 'mailman' && values.via !== 'postoffice') throw usageError(`send: --via must be mailman or postoffice, got ${JSON.stringify(values.via)}`);
    const timeoutMs = parseDuration(values.timeout, '--timeout');

    const message: TestMessage = { from, to, raw: await composeTestMessage({ from, to, subject: values.subject, now: io.now() }) };
    let sent: Sent;
    if (values.via === 'mailman') {
      sent = await viaMailman(message, values.smtp ?? io.env.HEDWIG_MAILMAN ?? DEFAULT_MAILMAN, timeoutMs);
    } else {
      const fqdn = values.fqdn ?? io.env.HEDWIG_FQDN;
      if (!fqdn) throw usageError('send --via postoffice: --fqdn or HEDWIG_FQDN is required');
      let ca: string | undefined;
      if (values.ca) {
        try {
          ca = readFileSync(values.ca, 'utf8');
        } catch (err) {
          throw new CliError('UNREADABLE', `cannot read --ca ${values.ca}: ${(err as NodeJS.ErrnoException).code ?? errorMessage(err)}`, EXIT.failure);
        }
      }
      const url = values.url ?? io.env.HEDWIG_POSTOFFICE_URL ?? DEFAULT_POSTOFFICE;
      sent = await viaPostoffice(message, { url, fqdn, key: readKey(io.env, values['key-file']), ...(ca ? { ca } : {}), timeoutMs });
    }
    if (values.json) io.stdout.write(`${JSON.stringify(sent)}\n`);
    else io.stdout.write(`queued via ${sent.via} as ${sent.id} (${sent.response.trim()})\n`);
    return EXIT.ok;
  },
};
