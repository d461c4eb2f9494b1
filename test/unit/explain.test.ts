// explain() against the live pipeline: for a table of requests (and for random ones), explain's
// verdict must be the verdict decide() gives for the same snapshot and request, and its traces must
// agree with that verdict.
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { explain, flowRef, limitRef, stateToConsult, type ExplainState, type Explanation } from '../../src/middlebox/explain';
import { decide } from '../../src/middlebox/pipeline';
import { take, windowIndex } from '../../src/middlebox/ratelimit/algorithms';
import { rendezvous } from '../../src/middlebox/nat/rendezvous';
import type { RequestAttributes, Verdict } from '../../src/middlebox/types';
import type { PolicySnapshot } from '../../src/policy/types';
import { MemoryNatTable } from '../../src/state/nat/memory';
import { LocalRateLimitStore } from '../../src/state/ratelimit/local';
import { snapshot } from '../harness/policy';
import { request, type RequestShape } from '../harness/request';
import { FUZZ_TIME_LIMIT_MS, fuzzAsync } from '../harness/fuzz';

const NOW = Date.UTC(2025, 0, 1, 12, 0, 30);

const POLICIES = {
  // Evaluated first (name order): a default-deny policy that only sees the admin host.
  'a-admin': `{ selector: { hosts: ["admin.local"] }, firewall: { default: deny, rules: [
      { name: office, action: allow, from: ["203.0.113.0/24", "2001:db8::/32"], methods: [GET, POST] },
      { name: ops, action: allow, principals: ["spiffe://cluster.local/ns/ops/*"] } ] } }`,
  'b-shadow': `{ shadow: true, firewall: { default: allow, rules: [
      { name: no-put, action: deny, methods: [PUT] } ] } }`,
  shop: `{ firewall: { default: allow, rules: [
      { name: no-admin, action: deny, paths: ["/admin/*"] },
      { name: beta-trial, action: deny, shadow: true, paths: [{ regex: "^/beta(/|$)" }] },
      { name: blocked, action: deny, from: ["192.0.2.0/24", "::ffff:198.51.100.66/128"] },
      { name: tcp-ports, action: deny, ports: [22, 23] },
      { name: internal, action: deny, to: ["10.9.0.0/16"] },
      { name: no-debug, action: deny, headers: [{ name: x-debug }] },
      { name: api-key, action: allow, hosts: ["*.shop.local"], headers: [{ name: x-api-key, regex: "^k[0-9]+$" }, { name: x-block, present: false }] },
      { name: read-only, action: deny, paths: ["/orders/*"], methods: [DELETE, PUT] } ] },
    rateLimits: [
      { name: search, match: { paths: ["/search"] }, limit: 3, per: 1m, by: [sourceIp], algorithm: fixed-window, consistency: strict, headers: true },
      { name: writes, match: { methods: [POST] }, limit: 20, per: 1m, by: ["header:x-api-key", host], algorithm: token-bucket, burst: 5 },
      { name: shadowed, match: { paths: ["/shadow"] }, limit: 1, per: 1h, shadow: true, consistency: local } ] }`,
  'z-egress': `{ selector: { hosts: ["orders.internal", "users.internal", "rr.internal"] }, nat: [
      { name: orders, match: { hosts: ["orders.internal"] }, to: ["10.0.1.1:8080", "10.0.1.2:8080", "10.0.1.3:8080"], affinity: sourceIp },
      { name: users, match: { hosts: ["users.internal"] }, to: ["10.0.2.1:80", "[2001:db8::2]:80"], affinity: "header:x-user" },
      { name: rr, to: ["10.0.3.1:80", "10.0.3.2:80"] } ] }`,
};

/** The requests of the table; each names what it exercises. */
const TABLE: [string, RequestShape][] = [
  ['a plain read', {}],
  ['the admin area', { path: '/admin/users' }],
  ['the admin prefix itself', { path: '/admin' }],
  ['not under the admin prefix', { path: '/administrator' }],
  ['a blocked client', { from: '192.0.2.44' }],
  ['a blocked client, IPv4-mapped', { from: '::ffff:198.51.100.66' }],
  ['no source address', { from: null }],
  ['a TCP connection to a denied port', { protocol: 'tcp', port: 22 }],
  ['a TCP connection elsewhere', { protocol: 'tcp', port: 5432 }],
  ['a TCP connection from a blocked client', { protocol: 'tcp', from: '192.0.2.1' }],
  ['to an internal destination', { to: '10.9.3.4' }],
  ['a debug header', { headers: { 'x-debug': '1' } }],
  ['an allowed API key on a subdomain', { host: 'api.shop.local', path: '/admin/x', headers: { 'x-api-key': 'k12' } }],
  ['a bad API key', { host: 'api.shop.local', headers: { 'x-api-key': 'nope' } }],
  ['an API key with the forbidden header', { host: 'api.shop.local', headers: { 'x-api-key': 'k1', 'x-block': '' } }],
  ['deleting an order', { method: 'DELETE', path: '/orders/7' }],
  ['reading an order', { path: '/orders/7' }],
  ['a shadow rule', { path: '/beta/new' }],
  ['a shadow rule, then a real deny', { path: '/beta', headers: { 'x-debug': '1' } }],
  ['a shadow policy', { method: 'PUT', path: '/things/1' }],
  ['a shadow policy and a real deny', { method: 'PUT', path: '/orders/1' }],
  ['the admin host from the office', { host: 'admin.local', from: '203.0.113.9' }],
  ['the admin host from the office over IPv6', { host: 'admin.local', from: '2001:db8::7' }],
  ['the admin host, wrong method', { host: 'admin.local', from: '203.0.113.9', method: 'DELETE' }],
  ['the admin host from elsewhere', { host: 'admin.local' }],
  ['the admin host, an ops principal', { host: 'admin.local', principal: 'spiffe://cluster.local/ns/ops/sa/x' }],
  ['a search', { path: '/search' }],
  ['a write', { method: 'POST', path: '/cart', headers: { 'x-api-key': 'k9' } }],
  ['a shadow limit', { path: '/shadow' }],
  ['NAT by source address', { host: 'orders.internal', from: '10.1.0.7' }],
  ['NAT by source address, another client', { host: 'orders.internal', from: '10.1.0.8' }],
  ['NAT by header', { host: 'users.internal', headers: { 'x-user': 'alice' } }],
  ['NAT by header, header missing', { host: 'users.internal' }],
  ['NAT round robin', { host: 'rr.internal', path: '/x' }],
  ['NAT of a denied request', { host: 'orders.internal', path: '/admin/x' }],
  ['a host no NAT rule names', { host: 'other.internal' }],
];

function livePorts() {
  return { rateLimits: new LocalRateLimitStore({ replicas: () => 1 }), nat: new MemoryNatTable() };
}

async function live(snap: PolicySnapshot, req: RequestAttributes, ports = livePorts(), nat = true): Promise<Verdict> {
  return decide(snap, req, ports, NOW, { nat });
}

/** responseHeaders carry counts that explain does not know without state. */
function comparable(v: Verdict): Verdict {
  const { responseHeaders: _h, ...rest } = v;
  return JSON.parse(JSON.stringify(rest)) as Verdict;
}

/** The traces must tell the same story as the verdict. */
function assertConsistent(x: Explanation): void {
  assert.deepEqual(x.notes.filter((n) => n.startsWith('internal')), []);
  for (const p of x.firewall.policies) {
    for (const r of p.rules) assert.equal(r.matched, r.mismatches.length === 0, `${p.policy}/${r.name}: matched vs reasons`);
    assert.equal(p.selector.matched, p.selector.mismatches.length === 0);
  }
  for (const l of x.rateLimits.limits) assert.equal(l.applies, l.mismatches.length === 0, `${l.id}: applies vs reasons`);
  for (const r of x.nat.rules) assert.equal(r.matched, r.mismatches.length === 0, `${r.id}: matched vs reasons`);
  const v = x.verdict;
  if (!v.allow && v.middlebox === 'firewall') {
    const deciding = x.firewall.policies.find((p) => p.outcome === 'deny' && p.reached);
    assert.ok(deciding, 'a firewall denial has a denying policy in the trace');
    assert.equal(deciding.policy, v.policy);
    assert.equal(deciding.decidingRule ?? 'default', v.rule);
  }
  if (!v.allow && v.middlebox === 'ratelimit') {
    const denying = x.rateLimits.limits.find((l) => l.id === `${v.policy}/${v.rule}`);
    assert.equal(denying?.bucket?.wouldGrant, false);
  }
  if (v.nat) {
    assert.ok(x.nat.reached);
    assert.equal(x.nat.decision?.backend, v.nat.backend);
    assert.deepEqual(x.nat.rules.filter((r) => r.first).map((r) => `${r.policy}/${r.name}`), [`${v.nat.policy}/${v.nat.rule}`]);
  }
  assert.equal(x.rateLimits.reached, x.firewall.verdict.allow);
}

describe('explain', () => {
  const snap = snapshot(POLICIES);

  describe('agrees with the live verdict for a table of requests', () => {
    for (const [what, shape] of TABLE) {
      it(what, async () => {
        const req = request(shape);
        const x = explain(snap, req, { now: NOW });
        assert.deepEqual(comparable(x.verdict), comparable(await live(snap, req)));
        assertConsistent(x);
        // And on the ext_authz path, which has no NAT.
        const { nat: _nat, ...withoutNat } = comparable(x.verdict);
        assert.deepEqual(withoutNat, comparable(await live(snap, req, livePorts(), false)));
      });
    }
  });

  it('the table covers every outcome', async () => {
    const verdicts = TABLE.map(([, shape]) => explain(snap, request(shape), { now: NOW }).verdict);
    const reasons = new Set(verdicts.map((v) => v.reason));
    for (const r of ['allowed', 'firewall_rule_deny', 'firewall_default_deny']) assert.ok(reasons.has(r), r);
    assert.ok(verdicts.some((v) => v.shadowDenials?.length));
    assert.ok(verdicts.some((v) => v.nat));
  });

  it('explains a firewall rule: every rule in order, the deciding one, and why the others do not match', () => {
    const x = explain(snap, request({ method: 'DELETE', path: '/orders/7', headers: { 'x-debug': '1' } }), { now: NOW });
    const shop = x.firewall.policies.find((p) => p.policy === 'shop')!;
    assert.deepEqual(
      shop.rules.map((r) => [r.name, r.role]),
      [
        ['no-admin', 'no-match'],
        ['beta-trial', 'no-match'],
        ['blocked', 'no-match'],
        ['tcp-ports', 'no-match'],
        ['internal', 'no-match'],
        ['no-debug', 'decides'],
        ['api-key', 'after-decision'],
        ['read-only', 'after-decision'],
      ],
    );
    assert.equal(shop.rules[7]!.matched, true, 'rules after the decision are still evaluated for information');
    assert.deepEqual(shop.rules[0]!.mismatches, ['paths: "/orders/7" matches none of [/admin/*]']);
    assert.deepEqual(shop.rules[1]!.mismatches, ['paths: "/orders/7" matches none of [{regex: ^/beta(/|$)}]']);
    assert.deepEqual(shop.rules[2]!.mismatches, ['from: source 198.51.100.7 is in none of [192.0.2.0/24, 198.51.100.66/32]']);
    assert.deepEqual(shop.rules[3]!.mismatches, ['ports: destination port 8080 is not one of [22, 23]']);
    assert.deepEqual(shop.rules[6]!.mismatches, ['hosts: "shop.local" matches none of [*.shop.local]', 'headers: x-api-key is absent (must match /^k[0-9]+$/)']);
    assert.equal(shop.outcome, 'deny');
    const admin = x.firewall.policies.find((p) => p.policy === 'a-admin')!;
    assert.deepEqual(admin.selector.mismatches, ['selector hosts: "shop.local" matches none of [admin.local]']);
    assert.equal(admin.outcome, 'not-selected');
    assert.ok(admin.rules.every((r) => r.role === 'not-evaluated'));
    assert.equal(x.verdict.rule, 'no-debug');
  });

  it('marks the policies after an enforced deny as not reached', () => {
    const x = explain(snap, request({ host: 'admin.local', method: 'PUT' }), { now: NOW });
    assert.deepEqual(
      x.firewall.policies.map((p) => [p.policy, p.reached, p.outcome]),
      [
        ['a-admin', true, 'deny'],
        ['b-shadow', false, 'shadow-deny'],
        ['shop', false, 'allow'],
      ],
    );
    assert.equal(x.verdict.rule, 'default');
    assert.equal(x.rateLimits.reached, false);
  });

  it('names the limits that apply with their keys, without consuming tokens', () => {
    const req = request({ method: 'POST', path: '/search', host: 'api.shop.local', headers: { 'x-api-key': 'k7' } });
    for (let i = 0; i < 10; i++) assert.equal(explain(snap, req, { now: NOW }).verdict.allow, true, 'explaining never uses the limit up');
    const x = explain(snap, req, { now: NOW });
    const applying = x.rateLimits.limits.filter((l) => l.applies);
    assert.deepEqual(applying.map((l) => [l.id, l.key]), [
      ['shop/search', [{ by: 'sourceIp', value: '198.51.100.7' }]],
      ['shop/writes', [{ by: 'header:x-api-key', value: 'k7' }, { by: 'host', value: 'api.shop.local' }]],
    ]);
    assert.equal(applying[0]!.bucket?.summary, 'would consume 1 token of limit shop/search (state not consulted)');
    assert.deepEqual([applying[1]!.algorithm, applying[1]!.burst, applying[1]!.consistency, applying[1]!.per], ['token-bucket', 5, 'leased', '1m']);
    assert.deepEqual(x.rateLimits.limits.find((l) => l.id === 'shop/shadowed')?.mismatches, ['paths: "/search" matches none of [/shadow]']);
    assert.equal(x.verdict.responseHeaders, undefined, 'no made-up ratelimit-remaining');
  });

  it('says why a limit keyed by HTTP fields never applies to a TCP connection', () => {
    const x = explain(snap, request({ protocol: 'tcp' }), { now: NOW });
    const writes = x.rateLimits.limits.find((l) => l.id === 'shop/writes')!;
    assert.equal(writes.applies, false);
    assert.deepEqual(writes.mismatches, ['by: this TCP connection has no header:x-api-key, host, so the limit does not apply to it']);
  });

  it('with peeked state, agrees with the live store when a limit is used up', async () => {
    const req = request({ path: '/search' });
    const ports = livePorts();
    for (let i = 0; i < 3; i++) assert.equal((await live(snap, req, ports)).allow, true);
    const liveVerdict = await live(snap, req, ports);
    assert.equal(liveVerdict.status, 429);

    const rule = snap.policies.find((p) => p.name === 'shop')!.rateLimits[0]!;
    const full = { w: windowIndex(rule.perMs, NOW), c: 3 };
    const x = explain(snap, req, { now: NOW, state: { buckets: new Map([[limitRef(rule.id, '198.51.100.7'), full]]) } });
    assert.deepEqual(comparable(x.verdict), comparable(liveVerdict));
    assertConsistent(x);
    const peeked = x.rateLimits.limits.find((l) => l.id === 'shop/search')!.bucket!;
    assert.deepEqual([peeked.consulted, peeked.available, peeked.wouldGrant], [true, 0, false]);
    assert.match(peeked.summary, /no token left: limit shop\/search would deny \(retry after 30 s\)/);

    // A bucket with tokens left: granted, and the advertised headers are real numbers.
    const two = take({ algorithm: 'fixed-window', limit: 3, perMs: rule.perMs }, undefined, 1, NOW).state;
    const y = explain(snap, req, { now: NOW, state: { buckets: new Map([[limitRef(rule.id, '198.51.100.7'), two]]) } });
    assert.equal(y.verdict.allow, true);
    assert.equal(y.rateLimits.limits[0]!.bucket!.available, 2);
    assert.deepEqual(y.verdict.responseHeaders?.find((h) => h.key === 'ratelimit-remaining')?.value, '1');
    // An absent key is a full bucket.
    const z = explain(snap, req, { now: NOW, state: { buckets: new Map([[limitRef(rule.id, '198.51.100.7'), null]]) } });
    assert.equal(z.rateLimits.limits[0]!.bucket!.available, 3);
  });

  it('a shadow limit that is used up is recorded, never enforced, as live', async () => {
    const req = request({ path: '/shadow' });
    const ports = livePorts();
    await live(snap, req, ports);
    const liveVerdict = await live(snap, req, ports);
    assert.equal(liveVerdict.allow, true);
    assert.equal(liveVerdict.shadowDenials?.[0]?.rule, 'shadowed');
    // local consistency: explain cannot see a replica's memory, and says so.
    const x = explain(snap, req, { now: NOW, state: { buckets: new Map() } });
    assert.match(x.rateLimits.limits.find((l) => l.applies)!.bucket!.summary, /local consistency/);
  });

  it('NAT: the rendezvous choice for a new flow, the table for a known one, drained backends skipped', async () => {
    const req = request({ host: 'orders.internal', from: '10.1.0.7' });
    const rule = snap.policies.find((p) => p.name === 'z-egress')!.nat[0]!;
    const x = explain(snap, req, { now: NOW });
    assert.equal(x.nat.decision?.how, 'rendezvous');
    assert.equal(x.nat.decision?.backend, rendezvous('10.1.0.7', rule.backends));
    assert.deepEqual(x.nat.decision?.pool, [...rule.backends]);

    // A mapping in the table wins, as live.
    const other = rule.backends.find((b) => b !== x.nat.decision!.backend)!;
    const table = new MemoryNatTable();
    table.assign(rule, '10.1.0.7', other, undefined, NOW);
    const liveMapped = await live(snap, req, { rateLimits: new LocalRateLimitStore({ replicas: () => 1 }), nat: table });
    const mapped = explain(snap, req, { now: NOW, state: { natFlows: new Map([[flowRef(rule.id, '10.1.0.7'), other]]), natTableConsulted: true } });
    assert.deepEqual(comparable(mapped.verdict), comparable(liveMapped));
    assert.equal(mapped.nat.decision?.how, 'table');
    assert.equal(mapped.nat.decision?.backend, other);

    // Draining the chosen backend moves a new flow elsewhere, as live.
    const drainedTable = new MemoryNatTable();
    drainedTable.drain(x.nat.decision!.backend);
    const liveDrained = await live(snap, req, { rateLimits: new LocalRateLimitStore({ replicas: () => 1 }), nat: drainedTable });
    const state: ExplainState = { drained: new Set([x.nat.decision!.backend]), natFlows: new Map(), natTableConsulted: true };
    const drained = explain(snap, req, { now: NOW, state });
    assert.deepEqual(comparable(drained.verdict), comparable(liveDrained));
    assert.notEqual(drained.nat.decision?.backend, x.nat.decision!.backend);
    assert.deepEqual(drained.nat.decision?.drained, [x.nat.decision!.backend]);
  });

  it('NAT without a flow key is round robin, and says so', () => {
    const x = explain(snap, request({ host: 'users.internal' }), { now: NOW });
    assert.equal(x.nat.decision?.how, 'round-robin');
    assert.match(x.nat.decision!.summary, /no x-user header/);
  });

  it('stateToConsult lists the shared buckets (not local ones) and the NAT flow to read', () => {
    const wanted = stateToConsult(snap, request({ method: 'POST', path: '/search', host: 'orders.internal', headers: { 'x-api-key': 'k1' } }), NOW);
    assert.deepEqual(wanted.buckets.map((b) => [b.rule.id, b.key]), [['shop/search', '198.51.100.7'], ['shop/writes', 'k1\u0001orders.internal']]);
    assert.deepEqual(wanted.flows.map((f) => [f.rule.id, f.flow]), [['z-egress/orders', '198.51.100.7']]);
    assert.deepEqual(stateToConsult(snap, request({ path: '/shadow' }), NOW).buckets, []);
  });

  it('an empty snapshot allows everything, as live', async () => {
    const empty = snapshot({});
    const x = explain(empty, request(), { now: NOW });
    assert.deepEqual(comparable(x.verdict), comparable(await live(empty, request())));
    assert.deepEqual([x.firewall.policies, x.rateLimits.limits, x.nat.rules], [[], [], []]);
  });

  it('agrees with the live verdict for random requests', async function () {
    this.timeout(FUZZ_TIME_LIMIT_MS * 2 + 20_000);
    const octet = fc.integer({ min: 0, max: 255 });
    const v4 = fc.oneof(
      fc.tuple(octet, octet, octet, octet).map((o) => o.join('.')),
      fc.constantFrom('192.0.2.9', '203.0.113.5', '198.51.100.66', '10.9.1.1', '10.1.0.7'),
    );
    const v6 = fc.oneof(fc.ipV6(), fc.constantFrom('2001:db8::1', '::ffff:192.0.2.3', '::ffff:198.51.100.66'));
    const shape: fc.Arbitrary<RequestShape> = fc.record(
      {
        protocol: fc.constantFrom<'http' | 'tcp'>('http', 'http', 'http', 'tcp'),
        from: fc.option(fc.oneof(v4, v6), { nil: null }),
        to: fc.oneof(v4, v6),
        port: fc.constantFrom(22, 23, 80, 8080, 5432),
        principal: fc.constantFrom('spiffe://cluster.local/ns/ops/sa/a', 'spiffe://cluster.local/ns/shop/sa/b'),
        method: fc.constantFrom('GET', 'POST', 'PUT', 'DELETE', 'PATCH'),
        host: fc.constantFrom('shop.local', 'api.shop.local', 'admin.local', 'orders.internal', 'users.internal', 'rr.internal', 'x.example'),
        path: fc.oneof(
          fc.constantFrom('/', '/admin', '/admin/x', '/administrator', '/beta', '/beta/x', '/orders/1', '/search', '/shadow'),
          fc.webPath().map((p) => (p.startsWith('/') ? p : `/${p}`)),
        ),
        headers: fc.dictionary(fc.constantFrom('x-debug', 'x-api-key', 'x-block', 'x-user'), fc.constantFrom('', 'k1', 'k22', 'nope', 'alice')),
      },
      { requiredKeys: ['protocol'] },
    );
    await fuzzAsync(
      fc.asyncProperty(shape, async (s) => {
        const req = request(s);
        const x = explain(snap, req, { now: NOW });
        assert.deepEqual(comparable(x.verdict), comparable(await live(snap, req)));
        assertConsistent(x);
      }),
      300,
    );
  });
});
