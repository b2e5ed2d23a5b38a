import { createPublicKey, type KeyObject } from 'node:crypto';
import { isIP } from 'node:net';
import { spf } from 'mailauth/lib/spf/index.js';
import type { LookupFunction } from 'node:net';
import { fetchStsPolicy, stsMxMatches, stsPolicyId } from '../worker/mta-sts.ts';
import { parseTlsRptRecord } from '../worker/tls-rpt-report.ts';

/**
 * What `hedwig dns check DOMAIN` looks at: everything a sending domain must publish for its
 * mail to be accepted, judged against what the worker is configured to do (its DKIM keys,
 * source addresses and EHLO names). Each check is pass, warn (works, but receivers may
 * mind) or fail (mail will be refused or junked), with what to change. SPF is evaluated by
 * mailauth (RFC 7208, includes and redirects within the 10-lookup limit), the MTA-STS policy
 * by the worker's own fetcher, so the command sees what the worker would see.
 */

export type Status = 'pass' | 'warn' | 'fail';

export interface CheckResult {
  check: string;
  status: Status;
  detail: string;
  /** What to change, for warn and fail. */
  fix?: string;
}

/** The parts of node:dns's promise Resolver the checks use. */
export interface CheckResolver {
  resolve(name: string, type: string): Promise<unknown>;
  resolveTxt(name: string): Promise<string[][]>;
  resolveMx(name: string): Promise<Array<{ exchange: string; priority: number }>>;
  resolve4(name: string): Promise<string[]>;
  resolve6(name: string): Promise<string[]>;
  reverse(ip: string): Promise<string[]>;
}

export interface DnsCheckInput {
  domain: string;
  /** DKIM keys configured for the domain (or its closest parent): selector, signing domain, public key. */
  dkim: Array<{ domain: string; selector: string; algorithm: 'rsa-sha256' | 'ed25519-sha256'; publicKey: KeyObject }>;
  /** The worker's source addresses with the EHLO name each uses. */
  sources: Array<{ address: string; ehloName: string }>;
  /** EHLO names without a known address (the worker's `ehloName` when no source pool is configured). */
  ehloNames: string[];
  resolver: CheckResolver;
  mtaSts: { lookup: LookupFunction; ca?: Buffer; port: number; timeoutMs: number };
}

const notFound = (err: unknown) => ['ENOTFOUND', 'ENODATA'].includes((err as { code?: string }).code ?? '');
const codeOf = (err: unknown) => (err as { code?: string }).code ?? (err as Error).message;

async function txtRecords(resolver: CheckResolver, name: string): Promise<{ ok: true; records: string[] } | { ok: false; missing: boolean; code: string }> {
  try {
    return { ok: true, records: (await resolver.resolveTxt(name)).map((parts) => parts.join('')) };
  } catch (err) {
    return { ok: false, missing: notFound(err), code: codeOf(err) };
  }
}

/** Tag list of a DKIM record (RFC 6376 §3.6.1). */
function tags(record: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const part of record.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0) out.set(part.slice(0, eq).trim().toLowerCase(), part.slice(eq + 1).replace(/\s+/g, ''));
  }
  return out;
}

/** The `p=` value that publishes `key`: SPKI for RSA, the bare 32-byte key for Ed25519 (RFC 8463 §4.2). */
export function publishedKeyValue(key: KeyObject, algorithm: 'rsa-sha256' | 'ed25519-sha256'): string {
  const spki = (key.type === 'public' ? key : createPublicKey(key)).export({ type: 'spki', format: 'der' });
  return (algorithm === 'ed25519-sha256' ? spki.subarray(-32) : spki).toString('base64');
}

async function checkDkim(input: DnsCheckInput): Promise<CheckResult[]> {
  if (input.dkim.length === 0) {
    return [{ check: 'DKIM', status: 'warn', detail: `no DKIM key for ${input.domain} in the worker config`, fix: `make one with key-generator.ts --dkim ${input.domain} --selector <name> and add it under dkim:` }];
  }
  const results: CheckResult[] = [];
  for (const key of input.dkim) {
    const name = `${key.selector}._domainkey.${key.domain}`;
    const label = `DKIM ${key.selector} (${key.algorithm})`;
    const expected = publishedKeyValue(key.publicKey, key.algorithm);
    const keyType = key.algorithm === 'ed25519-sha256' ? 'ed25519' : 'rsa';
    const publish = `publish ${name}. IN TXT "v=DKIM1; k=${keyType}; p=${expected}"`;
    const txt = await txtRecords(input.resolver, name);
    if (!txt.ok) {
      results.push({ check: label, status: 'fail', detail: txt.missing ? `no TXT record at ${name}` : `lookup of ${name} failed (${txt.code})`, fix: publish });
      continue;
    }
    const records = txt.records.filter((r) => /^\s*v\s*=\s*DKIM1\b/i.test(r) || /(^|;)\s*p\s*=/.test(r));
    if (records.length !== 1) {
      results.push({ check: label, status: 'fail', detail: records.length === 0 ? `${name} holds no DKIM record` : `${name} holds ${records.length} DKIM records`, fix: publish });
      continue;
    }
    const t = tags(records[0]!);
    const k = (t.get('k') ?? 'rsa').toLowerCase();
    const p = t.get('p') ?? '';
    if (p === '') results.push({ check: label, status: 'fail', detail: `${name} has an empty p= (the key is revoked)`, fix: publish });
    else if (k !== keyType) results.push({ check: label, status: 'fail', detail: `${name} publishes k=${k}, the configured key is ${keyType}`, fix: publish });
    else if (p !== expected) results.push({ check: label, status: 'fail', detail: `${name} publishes another key than the worker signs with`, fix: publish });
    else results.push({ check: label, status: 'pass', detail: `${name} matches the configured key` });
  }
  return results;
}

async function checkSpf(input: DnsCheckInput): Promise<CheckResult[]> {
  const txt = await txtRecords(input.resolver, input.domain);
  const records = txt.ok ? txt.records.filter((r) => /^v=spf1(\s|$)/i.test(r.trim())) : [];
  const ips = input.sources.map((s) => s.address);
  const mechanism = ips.length > 0 ? ips.map((ip) => (isIP(ip) === 6 ? `ip6:${ip}` : `ip4:${ip}`)).join(' ') : 'ip4:<sending address>';
  if (!txt.ok && !txt.missing) return [{ check: 'SPF', status: 'warn', detail: `TXT lookup of ${input.domain} failed (${txt.code})` }];
  if (records.length === 0) return [{ check: 'SPF', status: 'fail', detail: `${input.domain} publishes no SPF record`, fix: `publish ${input.domain}. IN TXT "v=spf1 ${mechanism} ~all"` }];
  if (records.length > 1) return [{ check: 'SPF', status: 'fail', detail: `${input.domain} publishes ${records.length} SPF records (RFC 7208 §4.5: permerror)`, fix: 'merge them into one record' }];
  if (ips.length === 0) {
    return [{ check: 'SPF', status: 'warn', detail: `"${records[0]}"; no source addresses configured, so coverage cannot be checked`, fix: 'list the worker addresses under source.addresses (or pass --ip)' }];
  }
  const resolver = async (name: string, type: string) => (await input.resolver.resolve(name, type)) as string[] | string[][];
  const results: CheckResult[] = [];
  for (const source of input.sources) {
    const verdict = await spf({ ip: source.address, sender: `postmaster@${input.domain}`, helo: source.ehloName, mta: 'hedwig-dns-check', resolver });
    const lookups = (verdict as { lookups?: { count?: number; limit?: number } }).lookups;
    const counted = lookups?.count !== undefined ? `, ${lookups.count} of ${lookups.limit ?? 10} DNS lookups` : '';
    const result = verdict.status.result;
    const label = `SPF ${source.address}`;
    if (result === 'pass') results.push({ check: label, status: 'pass', detail: `${input.domain} authorises ${source.address}${counted}` });
    else if (result === 'permerror') results.push({ check: label, status: 'fail', detail: `the SPF record is broken: ${verdict.status.comment ?? 'permerror'}${counted}`, fix: 'keep the record within 10 DNS-querying mechanisms (include, a, mx, ptr, exists, redirect) and fix its syntax' });
    else if (result === 'temperror') results.push({ check: label, status: 'warn', detail: `SPF evaluation failed temporarily: ${verdict.status.comment ?? 'temperror'}` });
    else results.push({ check: label, status: 'fail', detail: `SPF result ${result} for ${source.address}${counted}`, fix: `add ${isIP(source.address) === 6 ? 'ip6' : 'ip4'}:${source.address} to the SPF record of ${input.domain}` });
  }
  return results;
}

async function checkDmarc(input: DnsCheckInput): Promise<CheckResult> {
  // The domain's own record, else the one of its parent domains (the organizational domain's, RFC 7489 §6.6.3).
  const labels = input.domain.split('.');
  for (let i = 0; i < labels.length - 1; i++) {
    const name = `_dmarc.${labels.slice(i).join('.')}`;
    const txt = await txtRecords(input.resolver, name);
    if (!txt.ok && !txt.missing) return { check: 'DMARC', status: 'warn', detail: `lookup of ${name} failed (${txt.code})` };
    const record = txt.ok ? txt.records.find((r) => /^v=DMARC1\b/i.test(r.trim())) : undefined;
    if (!record) continue;
    const t = tags(record);
    const policy = ((i === 0 ? t.get('p') : (t.get('sp') ?? t.get('p'))) ?? '').toLowerCase();
    const where = i === 0 ? name : `${name} (the parent domain's)`;
    if (policy === 'reject' || policy === 'quarantine') return { check: 'DMARC', status: 'pass', detail: `${where}: p=${policy}` };
    if (policy === 'none') return { check: 'DMARC', status: 'warn', detail: `${where}: p=none only monitors`, fix: 'read the aggregate reports, then move to p=quarantine and p=reject' };
    return { check: 'DMARC', status: 'fail', detail: `${where} has no valid p= tag`, fix: `publish _dmarc.${input.domain}. IN TXT "v=DMARC1; p=none; rua=mailto:dmarc-reports@${input.domain}"` };
  }
  return { check: 'DMARC', status: 'fail', detail: `no DMARC record for ${input.domain}`, fix: `publish _dmarc.${input.domain}. IN TXT "v=DMARC1; p=none; rua=mailto:dmarc-reports@${input.domain}"` };
}

async function mxHosts(input: DnsCheckInput): Promise<{ ok: true; hosts: string[] } | { ok: false; result: CheckResult }> {
  try {
    const records = await input.resolver.resolveMx(input.domain);
    if (records.some((r) => r.exchange === '' || r.exchange === '.')) {
      return { ok: false, result: { check: 'MX', status: 'fail', detail: `${input.domain} publishes a null MX (RFC 7505): bounces and replies to it cannot be delivered`, fix: `publish ${input.domain}. IN MX 10 <your inbound mail host>.` } };
    }
    return { ok: true, hosts: records.sort((a, b) => a.priority - b.priority).map((r) => r.exchange.toLowerCase()) };
  } catch (err) {
    if (!notFound(err)) return { ok: false, result: { check: 'MX', status: 'warn', detail: `MX lookup failed (${codeOf(err)})` } };
    return { ok: true, hosts: [] };
  }
}

async function addressesOf(resolver: CheckResolver, name: string): Promise<string[]> {
  const [v4, v6] = await Promise.allSettled([resolver.resolve4(name), resolver.resolve6(name)]);
  return [...(v4.status === 'fulfilled' ? v4.value : []), ...(v6.status === 'fulfilled' ? v6.value : [])];
}

async function checkEhlo(input: DnsCheckInput): Promise<CheckResult[]> {
  const results: CheckResult[] = [];
  const pairs = [...input.sources.map((s) => ({ name: s.ehloName, address: s.address as string | undefined })), ...input.ehloNames.map((name) => ({ name, address: undefined }))];
  const seen = new Set<string>();
  for (const { name, address } of pairs) {
    const key = `${name}|${address ?? ''}`;
    if (seen.has(key)) continue;
    seen.add(key);
    const forward = await addressesOf(input.resolver, name);
    const targets = address ? [address] : forward;
    if (forward.length === 0) {
      results.push({ check: `EHLO ${name}`, status: 'fail', detail: `${name} has no A/AAAA record`, fix: `publish ${name}. IN A ${address ?? '<the sending address>'}` });
    } else if (address && !forward.includes(address)) {
      results.push({ check: `EHLO ${name}`, status: 'fail', detail: `${name} resolves to ${forward.join(', ')}, not to its source address ${address}`, fix: `publish ${name}. IN ${isIP(address) === 6 ? 'AAAA' : 'A'} ${address}` });
    } else {
      results.push({ check: `EHLO ${name}`, status: 'pass', detail: `${name} resolves to ${forward.join(', ')}` });
    }
    for (const ip of targets) {
      let names: string[] = [];
      try {
        names = (await input.resolver.reverse(ip)).map((n) => n.toLowerCase().replace(/\.$/, ''));
      } catch {
        names = [];
      }
      const label = `PTR ${ip}`;
      if (names.includes(name.toLowerCase())) results.push({ check: label, status: 'pass', detail: `${ip} -> ${name} (forward-confirmed)` });
      else results.push({ check: label, status: 'fail', detail: names.length ? `${ip} -> ${names.join(', ')}, not ${name}` : `${ip} has no PTR record`, fix: `ask whoever owns ${ip} (the hosting provider) to set its PTR to ${name}` });
    }
  }
  if (pairs.length === 0) results.push({ check: 'EHLO', status: 'warn', detail: 'no EHLO name configured', fix: 'set ehloName (or source.addresses) in the worker config' });
  return results;
}

async function checkMtaSts(input: DnsCheckInput, mx: string[]): Promise<CheckResult[]> {
  const resolveTxt = (name: string) => input.resolver.resolveTxt(name);
  const id = await stsPolicyId(input.domain, resolveTxt);
  if (!id.ok) return [{ check: 'MTA-STS', status: 'warn', detail: id.message }];
  if (id.id === false) return [{ check: 'MTA-STS', status: 'pass', detail: 'no policy published (optional: it protects mail sent to this domain)' }];
  const fetched = await fetchStsPolicy(input.domain, id.id, { lookup: input.mtaSts.lookup, ca: input.mtaSts.ca, port: input.mtaSts.port, fetchTimeoutMs: input.mtaSts.timeoutMs }, Date.now());
  if (!fetched.ok) {
    return [{ check: 'MTA-STS', status: 'fail', detail: `_mta-sts.${input.domain} names policy ${id.id}, but ${fetched.message} (${fetched.resultType})`, fix: `serve the policy as text/plain at https://mta-sts.${input.domain}/.well-known/mta-sts.txt with a certificate for mta-sts.${input.domain}, or remove the TXT record` }];
  }
  const policy = fetched.policy;
  const results: CheckResult[] = [];
  const unmatched = mx.filter((host) => policy.mode !== 'none' && !stsMxMatches(policy, host));
  const described = `policy ${id.id}: mode ${policy.mode}, mx ${policy.mx.join(' ') || '-'}, max_age ${policy.maxAgeSeconds}`;
  if (unmatched.length > 0) results.push({ check: 'MTA-STS', status: 'fail', detail: `${described}; MX hosts not in the policy: ${unmatched.join(', ')}`, fix: `add mx: lines for ${unmatched.join(', ')} to the policy (and change its id)` });
  else if (policy.mode === 'testing') results.push({ check: 'MTA-STS', status: 'warn', detail: described, fix: 'once the TLS reports show no failures, switch to mode: enforce' });
  else results.push({ check: 'MTA-STS', status: 'pass', detail: described });
  const rpt = await txtRecords(input.resolver, `_smtp._tls.${input.domain}`);
  const parsed = rpt.ok ? rpt.records.map(parseTlsRptRecord).filter((r) => r !== null) : [];
  if (parsed.length === 1) results.push({ check: 'TLS-RPT', status: 'pass', detail: `reports to ${[...parsed[0]!.mailto.map((m) => `mailto:${m}`), ...parsed[0]!.https].join(', ')}` });
  else results.push({ check: 'TLS-RPT', status: 'warn', detail: parsed.length === 0 ? `no _smtp._tls record` : `${parsed.length} TLSRPTv1 records (one is allowed)`, fix: `publish _smtp._tls.${input.domain}. IN TXT "v=TLSRPTv1; rua=mailto:tls-reports@${input.domain}"` });
  return results;
}

export async function runDnsCheck(input: DnsCheckInput): Promise<CheckResult[]> {
  const results: CheckResult[] = [];
  results.push(...(await checkDkim(input)));
  results.push(...(await checkSpf(input)));
  results.push(await checkDmarc(input));
  const mx = await mxHosts(input);
  if (!mx.ok) results.push(mx.result);
  else if (mx.hosts.length === 0) results.push({ check: 'MX', status: 'warn', detail: `${input.domain} has no MX record: bounces go to its A/AAAA (implicit MX)`, fix: `publish ${input.domain}. IN MX 10 <your inbound mail host>.` });
  else results.push({ check: 'MX', status: 'pass', detail: mx.hosts.join(', ') });
  results.push(...(await checkEhlo(input)));
  results.push(...(await checkMtaSts(input, mx.ok ? mx.hosts : [])));
  return results;
}
