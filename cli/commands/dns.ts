import { readFileSync } from 'node:fs';
import { promises as dns } from 'node:dns';
import { createPublicKey, X509Certificate } from 'node:crypto';
import { isIP } from 'node:net';
import { keysFor } from '../../worker/dkim.ts';
import { loadWorkerConfig, readConfiguredFiles, type ConfiguredFiles, type WorkerConfig } from '../../worker/config.ts';
import { resolverLookup } from '../../worker/resolver-lookup.ts';
import { isValidDomain } from '../../shared/address.ts';
import { errorMessage } from '../../shared/errors.ts';
import { CliError, EXIT, JSON_OPTION, parseCommandArgs, parseDuration, usageError, type CliIo, type Command } from '../args.ts';
import { runDnsCheck, type CheckResult } from '../dns-check.ts';
import { table } from '../output.ts';

function dnsServer(value: string): string {
  const host = value.replace(/^\[([^\]]+)\](:\d+)?$/, '$1').replace(/^([^:]+):\d+$/, '$1');
  if (isIP(host) === 0 && isIP(value) === 0) throw usageError(`--dns: expected 'ip' or 'ip:port', got ${JSON.stringify(value)}`);
  return value;
}

export const dnsCheck: Command = {
  name: 'dns check',
  summary: 'check the DNS records of a sending domain (DKIM, SPF, DMARC, MX, EHLO/PTR, MTA-STS)',
  help: `Usage: hedwig dns check DOMAIN [--config worker.yaml] [--dns SERVER ...] [--json]

Looks up everything DOMAIN needs to send mail through hedwig and prints pass, warn or
fail for each, with what to change:
  DKIM     each key configured for DOMAIN (or its parent) under dkim: is published at
           <selector>._domainkey and is the key the worker signs with
  SPF      the record authorises every source address (includes and redirects followed
           within RFC 7208's 10-lookup limit)
  DMARC    a record exists (or the parent domain's) and its policy
  MX       the domain can receive bounces and replies (no null MX)
  EHLO     every EHLO name resolves to its source address, whose PTR names it back
  MTA-STS  the policy, if one is published, can be fetched and lists every MX host;
           TLS-RPT: where reports go

  --config FILE        the worker config: DKIM keys, source.addresses, ehloName
                       (default: none; then pass --ip/--ehlo for SPF and EHLO checks)
  --ip ADDRESS         a sending address (repeatable), added to source.addresses
  --ehlo NAME          an EHLO name (repeatable); with --ip, the name of that address
  --dns SERVER         resolver 'ip' or 'ip:port' (repeatable); default: the system's
  --ca FILE            trust anchors for the MTA-STS policy host (default: system CAs)
  --mta-sts-port PORT  port of the policy host (default 443; for tests)
  --timeout DURATION   per HTTPS fetch, default 10s
  --json               the results as JSON

Exit codes: 0 nothing failed (warnings allowed), 1 a check failed, 2 usage or config error.`,
  async run(argv: string[], io: CliIo) {
    const { values, positionals } = parseCommandArgs(this.name, argv, {
      ...JSON_OPTION,
      config: { type: 'string' },
      ip: { type: 'string', multiple: true },
      ehlo: { type: 'string', multiple: true },
      dns: { type: 'string', multiple: true },
      ca: { type: 'string' },
      'mta-sts-port': { type: 'string', default: '443' },
      timeout: { type: 'string', default: '10s' },
    });
    if (positionals.length !== 1) throw usageError('dns check: expected one domain');
    const domain = positionals[0]!.toLowerCase().replace(/\.$/, '');
    if (!isValidDomain(domain) || !domain.includes('.')) throw usageError(`dns check: not a domain: ${JSON.stringify(positionals[0])}`);
    const port = Number(values['mta-sts-port']);
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw usageError('--mta-sts-port: expected a port number');
    for (const ip of values.ip ?? []) if (isIP(ip) === 0) throw usageError(`--ip: not an IP address: ${JSON.stringify(ip)}`);

    let config: WorkerConfig | undefined;
    let files: ConfiguredFiles | undefined;
    if (values.config) {
      try {
        config = loadWorkerConfig(values.config, io.env);
        files = readConfiguredFiles(config, values.config);
      } catch (err) {
        throw new CliError('CONFIG_INVALID', errorMessage(err), EXIT.usage, { cause: err });
      }
    }
    let ca: Buffer | undefined;
    if (values.ca) {
      try {
        ca = readFileSync(values.ca);
        new X509Certificate(ca);
      } catch (err) {
        throw new CliError('UNREADABLE', `--ca: ${values.ca}: ${errorMessage(err)}`, EXIT.usage, { cause: err });
      }
    }

    const resolver = new dns.Resolver({ timeout: 3000, tries: 2 });
    const servers = (values.dns ?? []).map(dnsServer);
    if (servers.length > 0) resolver.setServers(servers);

    const extraEhlo = values.ehlo ?? [];
    const ips = values.ip ?? [];
    const sources = [
      ...(config?.source.addresses.map((s) => ({ address: s.address, ehloName: s.ehloName })) ?? []),
      ...ips.map((address, i) => ({ address, ehloName: extraEhlo[i] ?? extraEhlo[0] ?? config?.ehloName ?? `mail-out.${domain}` })),
    ];
    const ehloNames = [...(sources.length === 0 && config ? [config.ehloName] : []), ...(ips.length === 0 ? extraEhlo : [])];
    const dkim = files
      ? keysFor(files.dkim, domain).map((key) => ({ domain: key.domain, selector: key.selector, algorithm: key.algorithm, publicKey: createPublicKey(key.privateKey) }))
      : [];

    let results: CheckResult[];
    try {
      results = await runDnsCheck({
        domain,
        dkim,
        sources,
        ehloNames,
        resolver,
        mtaSts: { lookup: resolverLookup(resolver, { allowPrivateAddresses: true }), ...(ca ? { ca } : {}), port, timeoutMs: parseDuration(values.timeout, '--timeout') },
      });
    } catch (err) {
      throw new CliError('UNREACHABLE', `dns check: ${errorMessage(err)}`, EXIT.failure, { cause: err });
    }
    const failed = results.some((r) => r.status === 'fail');
    if (values.json) {
      io.stdout.write(`${JSON.stringify({ domain, ok: !failed, checks: results }, null, 2)}\n`);
    } else {
      const rows = results.map((r) => [r.check, r.status.toUpperCase(), r.detail]);
      const fixes = results.filter((r) => r.fix).map((r) => `  ${r.check}: ${r.fix}`);
      io.stdout.write(`${table(['CHECK', 'RESULT', 'DETAIL'], rows)}\n${fixes.length ? `\nTo change:\n${fixes.join('\n')}\n` : ''}`);
    }
    return failed ? EXIT.failure : EXIT.ok;
  },
};
