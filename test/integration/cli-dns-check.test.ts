import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { jsonOf, runHedwig } from '../helpers/cli.ts';
import { startDns, type DnsServer } from '../helpers/dns.ts';
import { makeTestCa, type TestCa } from '../helpers/test-ca.ts';
import { makeDkimKey, makeEd25519DkimKey, type TestDkimKey } from '../helpers/worker-dkim.ts';

/**
 * `hedwig dns check DOMAIN` against a real DNS server (dnsmasq on loopback) that serves a
 * domain with everything right and domains with each thing wrong, and a real HTTPS policy
 * server for MTA-STS (private test CA, given with --ca). The worker config names the DKIM
 * keys and the source addresses with their EHLO names, as in production.
 */
describe('hedwig dns check', { timeout: 90_000 }, () => {
  let dns: DnsServer;
  let ca: TestCa;
  let policyServer: Server;
  let policyPort: number;
  let rsa: TestDkimKey;
  let ed: TestDkimKey;
  let otherRsa: TestDkimKey;
  let config: string;
  const dir = mkdtempSync(join(tmpdir(), 'hedwig-dns-check-'));

  before(async () => {
    rsa = makeDkimKey('right.test', 's1', 2048, dir);
    ed = makeEd25519DkimKey('right.test', 'ed1', dir);
    otherRsa = makeDkimKey('wrong.test', 's1', 1024, dir);
    const wrongPublished = makeDkimKey('wrong.test', 's1-published', 1024, mkdtempSync(join(tmpdir(), 'hedwig-dns-check-other-')));
    ca = await makeTestCa(['mta-sts.right.test', 'mta-sts.wrong.test']);
    policyServer = createServer({ cert: readFileSync(ca.cert), key: readFileSync(ca.key) }, (req, res) => {
      const host = String(req.headers.host).replace(/:\d+$/, '');
      const policies: Record<string, string> = {
        'mta-sts.right.test': 'version: STSv1\nmode: enforce\nmx: mx.right.test\nmax_age: 604800\n',
        'mta-sts.wrong.test': 'version: STSv1\nmode: enforce\nmx: mx.elsewhere.test\nmax_age: 604800\n',
      };
      const body = policies[host];
      if (!body || req.url !== '/.well-known/mta-sts.txt') res.writeHead(404).end();
      else res.writeHead(200, { 'content-type': 'text/plain' }).end(body);
    });
    await new Promise<void>((resolve) => policyServer.listen(0, '127.0.0.1', resolve));
    policyPort = (policyServer.address() as { port: number }).port;

    // Eleven chained includes: one more DNS lookup than RFC 7208 §4.6.4 allows.
    const chain: Record<string, string[]> = {};
    for (let i = 0; i < 11; i++) chain[`l${i}.loop.test`] = [i < 10 ? `v=spf1 include:l${i + 1}.loop.test -all` : 'v=spf1 ip4:127.0.0.2 -all'];

    dns = await startDns({
      mx: { 'right.test': [{ host: 'mx.right.test', preference: 10 }], 'wrong.test': [{ host: 'mx.wrong.test', preference: 10 }], 'loop.test': [{ host: 'mx.right.test', preference: 10 }] },
      nullMx: ['nomail.test'],
      hosts: {
        'mx.right.test': ['127.0.0.1'],
        'mx.wrong.test': ['127.0.0.1'],
        'out.right.test': ['127.0.0.2'],
        'out.wrong.test': ['127.0.0.9'],
        'mta-sts.right.test': ['127.0.0.1'],
        'mta-sts.wrong.test': ['127.0.0.1'],
      },
      ptr: { '127.0.0.3': 'somebody-else.test' },
      txt: {
        'right.test': ['v=spf1 include:_spf.right.test ~all', 'google-site-verification=abc'],
        '_spf.right.test': ['v=spf1 ip4:127.0.0.2 ip4:127.0.0.3 -all'],
        '_dmarc.right.test': ['v=DMARC1; p=reject; rua=mailto:dmarc@right.test'],
        's1._domainkey.right.test': [rsa.records['s1._domainkey.right.test']!],
        'ed1._domainkey.right.test': [ed.records['ed1._domainkey.right.test']!],
        '_mta-sts.right.test': ['v=STSv1; id=20261201;'],
        '_smtp._tls.right.test': ['v=TLSRPTv1; rua=mailto:tls@right.test'],
        'wrong.test': ['v=spf1 ip4:192.0.2.1 -all'],
        '_dmarc.wrong.test': ['v=DMARC1; p=none'],
        's1._domainkey.wrong.test': [wrongPublished.records['s1-published._domainkey.wrong.test']!],
        '_mta-sts.wrong.test': ['v=STSv1; id=1;'],
        'loop.test': ['v=spf1 include:l0.loop.test -all'],
        ...chain,
      },
    });
    config = join(dir, 'worker.yaml');
    writeFileSync(
      config,
      [
        'ehloName: out.right.test',
        'dkim:',
        '  right.test:',
        `    - { selector: s1, keyFile: ${rsa.keyFile} }`,
        `    - { selector: ed1, keyFile: ${ed.keyFile} }`,
        '  wrong.test:',
        `    selector: s1`,
        `    keyFile: ${otherRsa.keyFile}`,
        'source:',
        '  addresses:',
        '    - { address: 127.0.0.2, ehloName: out.right.test }',
        '',
      ].join('\n'),
    );
  });

  after(async () => {
    await dns?.stop();
    await new Promise<void>((resolve) => (policyServer ? policyServer.close(() => resolve()) : resolve()));
  });

  const check = (domain: string, ...extra: string[]) =>
    runHedwig(['dns', 'check', domain, '--config', config, '--dns', dns.server, '--ca', ca.caCert, '--mta-sts-port', String(policyPort), ...extra]);
  type Report = { domain: string; ok: boolean; checks: Array<{ check: string; status: string; detail: string; fix?: string }> };
  const statusOf = (report: Report) => Object.fromEntries(report.checks.map((c) => [c.check, c.status]));

  it('passes a domain whose records are all right: exit 0, a table of pass lines', async () => {
    const run = await check('right.test');
    assert.equal(run.code, 0, run.stdout + run.stderr);
    assert.match(run.stdout, /^CHECK\s+RESULT\s+DETAIL$/m);
    assert.match(run.stdout, /^DKIM s1 \(rsa-sha256\)\s+PASS\s+s1\._domainkey\.right\.test matches the configured key$/m);
    assert.match(run.stdout, /^DKIM ed1 \(ed25519-sha256\)\s+PASS/m);
    assert.match(run.stdout, /^SPF 127\.0\.0\.2\s+PASS\s+right\.test authorises 127\.0\.0\.2, 1 of 10 DNS lookups$/m);
    assert.match(run.stdout, /^PTR 127\.0\.0\.2\s+PASS\s+127\.0\.0\.2 -> out\.right\.test \(forward-confirmed\)$/m);
    assert.match(run.stdout, /^MTA-STS\s+PASS\s+policy 20261201: mode enforce, mx mx\.right\.test, max_age 604800$/m);
    const json = jsonOf<Report>(await check('right.test', '--json'));
    assert.equal(json.ok, true);
    assert.deepEqual(statusOf(json), {
      'DKIM s1 (rsa-sha256)': 'pass',
      'DKIM ed1 (ed25519-sha256)': 'pass',
      'SPF 127.0.0.2': 'pass',
      DMARC: 'pass',
      MX: 'pass',
      'EHLO out.right.test': 'pass',
      'PTR 127.0.0.2': 'pass',
      'MTA-STS': 'pass',
      'TLS-RPT': 'pass',
    });
  });

  it('fails a domain with wrong records, says what to change, exit 1', async () => {
    const run = await check('wrong.test', '--json', '--ip', '127.0.0.8', '--ehlo', 'out.wrong.test');
    assert.equal(run.code, 1, run.stdout + run.stderr);
    const report = jsonOf<Report>(run);
    const byCheck = Object.fromEntries(report.checks.map((c) => [c.check, c]));
    assert.equal(report.ok, false);
    assert.equal(byCheck['DKIM s1 (rsa-sha256)']?.status, 'fail');
    assert.match(byCheck['DKIM s1 (rsa-sha256)']!.detail, /another key than the worker signs with/);
    assert.match(byCheck['DKIM s1 (rsa-sha256)']!.fix!, /^publish s1\._domainkey\.wrong\.test\. IN TXT "v=DKIM1; k=rsa; p=/);
    assert.equal(byCheck['SPF 127.0.0.2']?.status, 'fail');
    assert.match(byCheck['SPF 127.0.0.2']!.fix!, /add ip4:127\.0\.0\.2 to the SPF record of wrong\.test/);
    assert.equal(byCheck.DMARC?.status, 'warn');
    assert.equal(byCheck['EHLO out.wrong.test']?.status, 'fail');
    assert.match(byCheck['EHLO out.wrong.test']!.detail, /resolves to 127\.0\.0\.9, not to its source address 127\.0\.0\.8/);
    assert.equal(byCheck['PTR 127.0.0.8']?.status, 'fail');
    assert.match(byCheck['PTR 127.0.0.8']!.detail, /has no PTR record/);
    assert.equal(byCheck['MTA-STS']?.status, 'fail');
    assert.match(byCheck['MTA-STS']!.detail, /MX hosts not in the policy: mx\.wrong\.test/);
    assert.equal(byCheck['TLS-RPT']?.status, 'warn');
  });

  it('fails an SPF record past the 10-lookup limit, a missing DMARC and DKIM record, a null MX, and a PTR naming someone else', async () => {
    const loop = jsonOf<Report>(await check('loop.test', '--json'));
    const spf = loop.checks.find((c) => c.check === 'SPF 127.0.0.2')!;
    assert.equal(spf.status, 'fail');
    assert.match(spf.detail, /broken/);
    assert.equal(loop.checks.find((c) => c.check === 'DMARC')?.status, 'fail');
    const nomail = await runHedwig(['dns', 'check', 'nomail.test', '--dns', dns.server, '--ip', '127.0.0.3', '--ehlo', 'out.right.test', '--json']);
    assert.equal(nomail.code, 1);
    const report = jsonOf<Report>(nomail);
    const byCheck = Object.fromEntries(report.checks.map((c) => [c.check, c]));
    assert.equal(byCheck.MX?.status, 'fail');
    assert.match(byCheck.MX!.detail, /null MX/);
    assert.equal(byCheck.DKIM?.status, 'warn', 'no config: no DKIM key to compare');
    assert.equal(byCheck['EHLO out.right.test']?.status, 'fail', 'out.right.test does not resolve to 127.0.0.3');
    assert.match(byCheck['PTR 127.0.0.3']!.detail, /-> somebody-else\.test, not out\.right\.test/);
  });

  it('refuses bad arguments with exit 2', async () => {
    assert.equal((await runHedwig(['dns', 'check'])).code, 2);
    assert.equal((await runHedwig(['dns', 'check', 'not a domain'])).code, 2);
    const badConfig = join(dir, 'bad.yaml');
    writeFileSync(badConfig, 'dkim:\n  x.test:\n    selector: s\n    keyFile: /nonexistent\n');
    const run = await runHedwig(['dns', 'check', 'x.test', '--config', badConfig]);
    assert.equal(run.code, 2);
    assert.match(run.stderr, /dkim\.x\.test\.keyFile/);
    assert.equal((await runHedwig(['dns', 'check', '--help'])).code, 0);
  });
});
