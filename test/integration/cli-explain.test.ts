// `middlebox explain` as a user runs it: the built CLI, with policy files, and against a real etcd
// after `policy apply`, where it peeks at the shared rate-limit buckets and NAT table that real
// stores wrote.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Etcd3 } from 'etcd3';
import { EtcdProcess } from '../../src/lab/etcd';
import { rendezvous } from '../../src/middlebox/nat/rendezvous';
import { silentLogger } from '../../src/observability/logger';
import { compileSnapshot } from '../../src/policy/compile';
import { parsePolicies } from '../../src/policy/parse';
import { connectEtcd } from '../../src/state/etcd/client';
import { EtcdNatTable } from '../../src/state/etcd/nat';
import { EtcdRateLimitStore } from '../../src/state/etcd/ratelimit';
import { middlebox } from '../harness/cli';
import { NO_ADMIN_POLICY } from '../harness/policy';

const POLICY = `${NO_ADMIN_POLICY}      - { name: blocked-client, action: deny, from: ["127.0.0.66/32"] }
      - { name: no-debug, action: deny, headers: [{ name: x-debug }] }
  rateLimits:
    # A token bucket has no window edge, so a test that crosses a minute sees the same count.
    - { name: search, match: { paths: ["/search"] }, limit: 2, per: 1h, by: [sourceIp], algorithm: token-bucket, consistency: strict }
    - { name: writes, match: { methods: [POST] }, limit: 10, per: 1m, by: ["header:x-api-key"], consistency: local }
---
apiVersion: middlebox.io/v1alpha1
kind: Policy
metadata: { name: egress }
spec:
  selector: { hosts: ["orders.internal"] }
  nat:
    - { name: orders, to: ["127.0.0.1:18081", "127.0.0.1:18082", "127.0.0.1:18083"], affinity: sourceIp }
`;

const NO_STACK = /\n\s+at /;

describe('middlebox explain', function () {
  this.timeout(60_000);
  let dir: string;
  let policyFile: string;
  const file = (name: string, text: string) => {
    const p = path.join(dir, name);
    fs.writeFileSync(p, text);
    return p;
  };

  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mb-explain-'));
    policyFile = file('policy.yaml', POLICY);
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  describe('with policy files', () => {
    it('explains a denial: the deciding rule, the rules before it and why they do not match; exit 1', async () => {
      const r = await middlebox(['explain', '-f', policyFile, '--path', '/search', '--source', '127.0.0.66', '--host', 'shop.local']);
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stdout, /^Verdict\s+DENY 403 by firewall shop\/blocked-client \(firewall_rule_deny\)$/m);
      assert.match(r.stdout, /1\. no-admin\s+deny\s+no match: paths: "\/search" matches none of \[\/admin\/\*\]/);
      assert.match(r.stdout, /2\. blocked-client\s+deny\s+MATCH\s+← decides/);
      assert.match(r.stdout, /3\. no-debug\s+deny\s+not looked at: after the deciding rule; it would not match/);
      assert.match(r.stdout, /Rate limits .*not reached/);
      assert.match(r.stdout, /shop\/search: 2 per 1h, token-bucket, strict; key sourceIp="127\.0\.0\.66"/);
      assert.equal(r.stderr, '');
    });

    it('explains an allowed request with its limits and NAT choice; exit 0', async () => {
      const r = await middlebox(['explain', '-f', policyFile, '--method', 'post', '--path', '/search?q=x', '--host', 'orders.internal:80',
        '--source', '10.1.0.7:40000', '--header', 'X-Api-Key: k1']);
      assert.equal(r.code, 0, r.stderr);
      const expected = rendezvous('10.1.0.7', ['127.0.0.1:18081', '127.0.0.1:18082', '127.0.0.1:18083'])!;
      assert.match(r.stdout, /^Request\s+POST orders\.internal\/search\s+from 10\.1\.0\.7:40000\s+headers x-api-key$/m);
      assert.match(r.stdout, new RegExp(`^Verdict\\s+ALLOW; NAT → ${expected.replace(/\./g, '\\.')} by egress/orders$`, 'm'));
      assert.match(r.stdout, /would consume 1 token of limit shop\/search \(state not consulted\)/);
      assert.match(r.stdout, /shop\/writes: 10 per 1m, sliding-window, local; key header:x-api-key="k1"/);
      assert.match(r.stdout, /local consistency/);
      assert.match(r.stdout, /rendezvous hashing picks/);
    });

    it('--authz-headers: as a sidecar sending only those headers would be answered', async () => {
      const args = ['explain', '-f', policyFile, '--path', '/products/1', '--header', 'x-debug: 1'];
      // Every header sent: no-debug denies.
      assert.match((await middlebox(args)).stdout, /^Verdict\s+DENY 403 by firewall shop\/no-debug/m);
      // x-debug sent: the same.
      assert.match((await middlebox([...args, '--authz-headers', 'x-debug,x-api-key'])).stdout, /^Verdict\s+DENY 403 by firewall shop\/no-debug/m);
      // Left out: refused for that, with a note naming the rule and the header.
      const r = await middlebox([...args, '--authz-headers', 'x-api-key']);
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stdout, /^Verdict\s+DENY 403 at shop\/no-debug \(headers_not_sent\)$/m);
      assert.match(r.stdout, /rule shop\/no-debug reads header x-debug, which a sidecar rendered with this --authz-headers does not send/);
      // A request that never reaches no-debug is decided as usual.
      assert.equal((await middlebox(['explain', '-f', policyFile, '--path', '/admin/x', '--authz-headers', 'x-api-key', '-o', 'json'])).stdout.includes('"reason": "firewall_rule_deny"'), true);
      const bad = await middlebox([...args, '--authz-headers', 'bad name']);
      assert.equal(bad.code, 2);
      assert.match(bad.stderr, /--authz-headers: not a header name: "bad name"/);
    });

    it('-o json is the whole explanation, machine-readable', async () => {
      const r = await middlebox(['explain', '-f', policyFile, '-f', file('other.yaml', POLICY.split('---\n')[1]!.replace('name: egress', 'name: more')),
        '--path', '/admin/x', '--header', 'x-debug: 1', '--source', '::ffff:10.0.0.1', '--dest', '[2001:db8::1]:8443', '-o', 'json']);
      assert.equal(r.code, 1, r.stderr);
      const x = JSON.parse(r.stdout);
      assert.deepEqual(x.source, { kind: 'files', files: [policyFile, path.join(dir, 'other.yaml')] });
      assert.deepEqual(x.verdict, { allow: false, status: 403, middlebox: 'firewall', policy: 'shop', rule: 'no-admin', reason: 'firewall_rule_deny' });
      assert.deepEqual(x.request.source, { ip: '10.0.0.1' });
      assert.deepEqual(x.request.destination, { ip: '2001:db8::1', port: 8443 });
      assert.deepEqual(x.firewall.policies[0].rules.map((rule: { role: string }) => rule.role), ['decides', 'after-decision', 'after-decision']);
      assert.equal(x.firewall.policies[0].rules[2].matched, true);
      assert.deepEqual(x.nat.rules.map((n: { id: string }) => n.id), ['egress/orders', 'more/orders']);
      assert.deepEqual(x.warnings, []);
    });

    it('a TCP connection: only address and port rules can match it', async () => {
      const r = await middlebox(['explain', '-f', policyFile, '--protocol', 'tcp', '--source', '127.0.0.1', '--dest', '10.0.0.5:5432', '-o', 'json']);
      assert.equal(r.code, 0, r.stderr);
      const x = JSON.parse(r.stdout);
      assert.equal(x.request.protocol, 'tcp');
      assert.deepEqual(x.firewall.policies[0].rules[0].mismatches, ['paths: a TCP connection has no path']);
    });

    it('reads the policy from standard input with -f -', async () => {
      const r = await middlebox(['explain', '-f', '-', '--path', '/admin/'], { input: POLICY });
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stdout, /Policies\s+-/);
    });

    it('--help, and bad flags or input are exit 2 with a clear message, never a stack trace', async () => {
      const help = await middlebox(['explain', '--help']);
      assert.equal(help.code, 0);
      assert.match(help.stdout, /^Usage: middlebox explain/);
      assert.match(help.stdout, /Exit status: 0 allowed, 1 denied, 2 bad flags or input/);
      const top = await middlebox(['--help']);
      assert.match(top.stdout, /\n  explain /);

      const bad = file('bad.yaml', POLICY.replace('"127.0.0.66/32"', '"127.0.0.666/32"'));
      const cases: [string[], RegExp][] = [
        [['explain', '-f', policyFile, '--frobnicate'], /frobnicate/],
        [['explain', '-f', policyFile, '--source', 'not-an-ip'], /--source "not-an-ip" is not IP\[:PORT\]/],
        [['explain', '-f', policyFile, '--source', '10.0.0.1:99999'], /port must be 1-65535/],
        [['explain', '-f', policyFile, '--protocol', 'udp'], /--protocol must be http or tcp/],
        [['explain', '-f', policyFile, '--protocol', 'tcp', '--path', '/x'], /--path does not apply to --protocol tcp/],
        [['explain', '-f', policyFile, '--header', 'no colon here'], /is not "name: value"/],
        [['explain', '-f', policyFile, '--path', 'relative'], /--path must start with "\/"/],
        [['explain', '-f', policyFile, '--dest', '10.0.0.1:80', '--dest-port', '81'], /give the destination port once/],
        [['explain', '-f', policyFile, '-o', 'yaml'], /-o must be text or json/],
        [['explain', '-f', policyFile, '--etcd', 'http://127.0.0.1:2379'], /not both/],
        [['explain', '-f', bad, '--path', '/'], new RegExp(`${bad.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:9:\\d+: spec\\.firewall\\.rules\\[1\\]\\.from\\[0\\]`)],
        [['explain', '-f', path.join(dir, 'missing.yaml')], /cannot read the file: no such file/],
        // A configuration error, not an unreachable etcd (3): retrying will not help.
        [['explain', '--etcd', 'https://127.0.0.1:1', '--etcd-cacert', path.join(dir, 'missing-ca.pem'), '--path', '/'], /--etcd-cacert .*missing-ca\.pem: cannot read it/],
      ];
      for (const [args, message] of cases) {
        const r = await middlebox(args);
        assert.equal(r.code, 2, `${args.join(' ')}: ${r.stdout}${r.stderr}`);
        assert.match(r.stderr, message, args.join(' '));
        assert.doesNotMatch(r.stderr, NO_STACK);
        assert.equal(r.stdout, '', args.join(' '));
      }
    });

    it('exit 3, one clear line, when etcd cannot be reached', async () => {
      const r = await middlebox(['explain', '--etcd', 'http://127.0.0.1:1', '--path', '/']);
      assert.equal(r.code, 3, r.stderr);
      assert.match(r.stderr, /^middlebox explain: .*etcd/);
      assert.doesNotMatch(r.stderr, NO_STACK);
    });
  });

  describe('with policies in a real etcd', () => {
    let etcd: EtcdProcess;
    let client: Etcd3;
    const PREFIX = '/explain-test';
    const snap = compileSnapshot(parsePolicies(POLICY, 'policy.yaml').documents, 1);
    const search = snap.policies.find((p) => p.name === 'shop')!.rateLimits[0]!;
    const orders = snap.policies.find((p) => p.name === 'egress')!.nat[0]!;
    const explainEtcd = (...args: string[]) => middlebox(['explain', '--etcd', etcd.endpoint, '--prefix', PREFIX, ...args]);

    before(async () => {
      etcd = await EtcdProcess.start();
      client = connectEtcd({ endpoints: [etcd.endpoint] });
      const r = await middlebox(['policy', 'apply', '-f', policyFile, '--etcd', etcd.endpoint, '--prefix', PREFIX]);
      assert.equal(r.code, 0, r.stderr);
    });
    after(async () => {
      client?.close();
      await etcd?.stop();
    });

    it('peeks at the shared bucket read-only, and says deny once real replicas used it up', async () => {
      let r = await explainEtcd('--path', '/search', '--source', '10.1.0.7', '-o', 'json');
      assert.equal(r.code, 0, r.stderr);
      let x = JSON.parse(r.stdout);
      assert.deepEqual(x.source, { kind: 'etcd', prefix: PREFIX, policies: 2 });
      let bucket = x.rateLimits.limits.find((l: { id: string }) => l.id === 'shop/search').bucket;
      assert.deepEqual([bucket.consulted, bucket.available, bucket.wouldGrant], [true, 2, true]);

      // Explaining takes nothing: asking again still finds both tokens.
      r = await explainEtcd('--path', '/search', '--source', '10.1.0.7', '-o', 'json');
      assert.equal(JSON.parse(r.stdout).rateLimits.limits[0].bucket.available, 2);

      // A replica's strict store spends one token; explain sees it.
      const store = new EtcdRateLimitStore({ client, prefix: PREFIX, logger: silentLogger(), replicas: () => 1 });
      assert.equal((await store.consume({ rule: search, key: '10.1.0.7', now: Date.now() })).allowed, true);
      r = await explainEtcd('--path', '/search', '--source', '10.1.0.7');
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /shared bucket has 1 token left: would consume 1 token of limit shop\/search/);

      assert.equal((await store.consume({ rule: search, key: '10.1.0.7', now: Date.now() })).allowed, true);
      r = await explainEtcd('--path', '/search', '--source', '10.1.0.7');
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stdout, /^Verdict\s+DENY 429 by ratelimit shop\/search \(rate_limited\), retry-after \d+ s$/m);
      assert.match(r.stdout, /shared bucket has no token left: limit shop\/search would deny/);

      // Another client has its own bucket.
      r = await explainEtcd('--path', '/search', '--source', '10.1.0.8', '-o', 'json');
      assert.equal(r.code, 0, r.stderr);
      x = JSON.parse(r.stdout);
      bucket = x.rateLimits.limits[0].bucket;
      assert.deepEqual([bucket.consulted, bucket.available], [true, 2]);
      // local limits live in replicas' memory: never consulted.
      r = await explainEtcd('--method', 'POST', '--path', '/x', '--header', 'x-api-key: a', '-o', 'json');
      x = JSON.parse(r.stdout);
      assert.equal(x.rateLimits.limits.find((l: { id: string }) => l.id === 'shop/writes').bucket.consulted, false);
    });

    it('reads the NAT table: rendezvous for a new flow, the mapping for a known one, drained backends skipped', async () => {
      const args = ['--host', 'orders.internal', '--source', '10.2.0.9', '-o', 'json'];
      let x = JSON.parse((await explainEtcd(...args)).stdout);
      const chosen = rendezvous('10.2.0.9', orders.backends);
      assert.deepEqual([x.nat.decision.how, x.nat.decision.backend], ['rendezvous', chosen]);
      assert.match(x.nat.decision.summary, /the NAT table has no mapping for it/);

      // A replica mapped the flow elsewhere (say before the pool changed): the table wins.
      const other = orders.backends.find((b) => b !== chosen)!;
      const table = EtcdNatTable.open({ client, prefix: PREFIX, logger: silentLogger() });
      try {
        for (let i = 0; i < 100 && !table.isLoaded; i++) await new Promise((res) => setTimeout(res, 50));
        assert.equal(await table.assign(orders, '10.2.0.9', other, undefined, Date.now()), other);
      } finally {
        await table.close();
      }
      x = JSON.parse((await explainEtcd(...args)).stdout);
      assert.deepEqual([x.nat.decision.how, x.nat.decision.backend], ['table', other]);
      assert.equal(x.verdict.nat.backend, other);

      // Draining that backend moves the flow: the next request is mapped again without it.
      const drain = await middlebox(['nat', 'drain', other, '--etcd', etcd.endpoint, '--prefix', PREFIX]);
      assert.equal(drain.code, 0, drain.stderr);
      x = JSON.parse((await explainEtcd(...args)).stdout);
      assert.equal(x.nat.decision.how, 'rendezvous');
      assert.deepEqual(x.nat.decision.drained, [other]);
      assert.equal(x.nat.decision.backend, rendezvous('10.2.0.9', orders.backends.filter((b) => b !== other)));
    });

    it('warns about a stored policy that replicas refuse, and explains with the rest', async () => {
      await client.put(`${PREFIX}/policies/broken`).value('{"not": "a policy"');
      try {
        const r = await explainEtcd('--path', '/admin/x');
        assert.equal(r.code, 1, r.stderr);
        assert.match(r.stderr, /^warning: stored policy "broken" is refused by every replica/m);
        assert.match(r.stdout, /^Policies\s+etcd \/explain-test \(2 policies\)$/m);
      } finally {
        await client.delete().key(`${PREFIX}/policies/broken`);
      }
    });
  });
});
