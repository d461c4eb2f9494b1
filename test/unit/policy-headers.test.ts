// Which headers a policy's ext_authz rules read (src/policy/headers.ts), and what a decision does
// when its sidecar left out one that an enforced rule reads.
import assert from 'node:assert/strict';
import { compileSnapshot } from '../../src/policy/compile';
import { decide } from '../../src/middlebox/pipeline';
import { parseRequestIp } from '../../src/middlebox/ip';
import type { RequestAttributes } from '../../src/middlebox/types';
import { GuardedHeaders, headerGuard, headersReadBy, isHeaderName, readHeaderList, UnsentHeaderRead } from '../../src/policy/headers';
import { LocalRateLimitStore } from '../../src/state/ratelimit/local';
import { MemoryNatTable } from '../../src/state/nat/memory';
import { parsePolicies } from '../../src/policy/parse';
import type { PolicyDocument } from '../../src/policy/types';

const POLICIES = `apiVersion: middlebox.io/v1alpha1
kind: Policy
metadata: { name: b-shop }
spec:
  firewall:
    default: allow
    rules:
      - { name: no-debug, action: deny, headers: [{ name: X-Debug, value: "1" }, { name: x-tenant, present: false }] }
      - { name: debug-too, action: deny, shadow: true, headers: [{ name: x-debug, regex: "^2" }] }
      - { name: trial, action: deny, shadow: true, headers: [{ name: x-shadow }] }
      - { name: pseudo, action: deny, headers: [{ name: ":authority", value: "blocked.local" }] }
  rateLimits:
    - { name: per-key, limit: 5, per: 1s, by: ["header:X-Api-Key", "sourceIp"], algorithm: fixed-window, consistency: local }
  nat:
    - { name: sticky, to: ["10.0.0.1:80"], affinity: "header:x-session" }
---
apiVersion: middlebox.io/v1alpha1
kind: Policy
metadata: { name: a-edge }
spec:
  firewall:
    default: allow
    rules:
      - { name: own, action: deny, headers: [{ name: x-middlebox-probe }] }
      - { name: debug-first, action: deny, paths: ["/x"], headers: [{ name: x-debug }] }
`;

function docs(text = POLICIES): PolicyDocument[] {
  const { documents, errors } = parsePolicies(text, 'test');
  assert.deepEqual(errors, []);
  return documents;
}

describe('headers a policy reads', () => {
  it('lists firewall rule headers and rate-limit keys, lower-cased, once each, with the first rule in evaluation order', () => {
    // Evaluation order is by policy name (a-edge before b-shop), whatever order the files give.
    const snapshot = compileSnapshot(docs(), 1);
    assert.deepEqual(headersReadBy(snapshot.policies.map((p) => p.document)), [
      { name: ':authority', policy: 'b-shop', rule: 'pseudo', enforced: true },
      { name: 'x-api-key', policy: 'b-shop', rule: 'per-key', enforced: true },
      { name: 'x-debug', policy: 'a-edge', rule: 'debug-first', enforced: true },
      { name: 'x-middlebox-probe', policy: 'a-edge', rule: 'own', enforced: true },
      { name: 'x-shadow', policy: 'b-shop', rule: 'trial', enforced: false },
      { name: 'x-tenant', policy: 'b-shop', rule: 'no-debug', enforced: true },
    ]);
  });

  it('a header only shadow rules or shadow policies read is not enforced; one an enforced rule reads too is', () => {
    const shadowPolicy = POLICIES.replace('metadata: { name: a-edge }\nspec:', 'metadata: { name: a-edge }\nspec:\n  shadow: true');
    const read = headersReadBy(docs(shadowPolicy));
    assert.equal(read.find((h) => h.name === 'x-middlebox-probe')!.enforced, false, 'read only in a shadow policy');
    assert.equal(read.find((h) => h.name === 'x-debug')!.enforced, true, 'b-shop/no-debug reads it too');
  });

  it('leaves out NAT affinity headers: ext_proc carries every header anyway', () => {
    assert.equal(headersReadBy(docs()).some((h) => h.name === 'x-session'), false);
  });

  it('a policy without header rules reads none', () => {
    assert.deepEqual(headersReadBy(docs('apiVersion: middlebox.io/v1alpha1\nkind: Policy\nmetadata: { name: p }\nspec:\n  firewall: { default: allow, rules: [ { name: a, action: deny, paths: ["/a"] } ] }\n')), []);
  });
});

describe('a sidecar that sends only some headers', () => {
  const snapshot = compileSnapshot(docs(), 1);
  const req = (headers: Record<string, string>): RequestAttributes => ({
    protocol: 'http',
    source: { ip: parseRequestIp('10.0.0.1')! },
    destination: {},
    method: 'GET',
    host: 'shop.local',
    path: '/y',
    headers: new Map(Object.entries(headers)),
  });

  it('nothing to guard when the list has every header enforced rules read (any case, any spacing)', () => {
    assert.equal(headerGuard(snapshot, ':authority, X-Api-Key,x-debug,x-tenant'), undefined);
  });

  it('guards the enforced headers left out, not x-middlebox-* (always sent) nor shadow-only ones', () => {
    const guard = headerGuard(snapshot, ':authority,x-debug')!;
    assert.deepEqual([...guard.unsent.keys()], ['x-api-key', 'x-tenant']);
    assert.deepEqual([...headerGuard(snapshot, '')!.unsent.keys()], [':authority', 'x-api-key', 'x-debug', 'x-tenant']);
  });

  it('works the guard out once per snapshot and list, and again for a new snapshot', () => {
    assert.equal(headerGuard(snapshot, 'x-debug'), headerGuard(snapshot, 'x-debug'));
    const next = compileSnapshot(docs().filter((d) => d.metadata.name === 'a-edge'), 2);
    assert.equal(headerGuard(next, 'x-debug'), undefined);
  });

  it('reading a guarded header throws before anything is decided; the others read as they are', () => {
    const headers = new GuardedHeaders(new Map([['x-debug', '1'], ['cookie', 'c']]), headerGuard(snapshot, ':authority,x-debug')!);
    assert.equal(headers.get('x-debug'), '1');
    assert.equal(headers.has('x-shadow'), false, 'shadow-only: read as absent');
    assert.deepEqual([...headers.keys()], ['x-debug', 'cookie']);
    assert.equal(headers.size, 2);
    assert.throws(() => headers.get('x-tenant'), (e: unknown) => e instanceof UnsentHeaderRead && e.read.rule === 'no-debug' && e.read.policy === 'b-shop');
    assert.throws(() => headers.has('x-api-key'), UnsentHeaderRead);
  });

  it('through the real decision: a request that never reaches a guarded rule is decided; one that does is not', () => {
    const guard = headerGuard(snapshot, ':authority,x-debug,x-api-key')!; // leaves out x-tenant
    const ports = { rateLimits: new LocalRateLimitStore({ replicas: () => 1 }), nat: new MemoryNatTable() };
    const decideWith = (headers: Record<string, string>) => {
      const r = req(headers);
      return decide(snapshot, { ...r, headers: new GuardedHeaders(r.headers, guard) }, ports, Date.now());
    };
    // a-edge/debug-first (paths /x) does not match /y; b-shop/no-debug reads x-debug (sent) and,
    // when x-debug is 1, x-tenant (not sent): allOf stops at the first condition that fails.
    assert.equal((decideWith({ 'x-debug': '0', 'x-api-key': 'k' }) as { allow: boolean }).allow, true);
    assert.throws(() => decideWith({ 'x-debug': '1', 'x-api-key': 'k' }), UnsentHeaderRead);
  });

  it('names the rule that read the header, not merely the first that reads it', () => {
    const ports = { rateLimits: new LocalRateLimitStore({ replicas: () => 1 }), nat: new MemoryNatTable() };
    const attempt = (sent: string) => {
      const r = req({ 'x-debug': '0', 'x-api-key': 'k' });
      try {
        decide(snapshot, { ...r, headers: new GuardedHeaders(r.headers, headerGuard(snapshot, sent)!) }, ports, Date.now());
      } catch (e) {
        return e as UnsentHeaderRead;
      }
      assert.fail('nothing thrown');
    };
    // a-edge/debug-first reads x-debug first in evaluation order, but only for /x: /y reaches b-shop/no-debug.
    const fw = attempt(':authority,x-api-key,x-tenant');
    assert.deepEqual([fw.read.policy, fw.read.rule], ['a-edge', 'debug-first']);
    assert.deepEqual([fw.policy, fw.rule], ['b-shop', 'no-debug']);
    const rl = attempt(':authority,x-debug,x-tenant');
    assert.deepEqual([rl.policy, rl.rule], ['b-shop', 'per-key']);
  });
});

describe('shadow rules and a header the sidecar left out', () => {
  const SHADOWED = `apiVersion: middlebox.io/v1alpha1
kind: Policy
metadata: { name: p }
spec:
  firewall:
    default: allow
    rules:
      - { name: trial, action: deny, shadow: true, headers: [{ name: x-t, value: b }] }
      - { name: enforced, action: deny, paths: ["/t/*"], headers: [{ name: x-t, value: b }] }
  rateLimits:
    - { name: measure, limit: 1, per: 1m, by: ["header:x-t"], algorithm: fixed-window, consistency: local, shadow: true }
`;
  const snapshot = compileSnapshot(docs(SHADOWED), 1);
  const guard = headerGuard(snapshot, '')!;
  const ports = { rateLimits: new LocalRateLimitStore({ replicas: () => 1 }), nat: new MemoryNatTable() };
  const ask = (path: string) =>
    decide(
      snapshot,
      { protocol: 'http', source: {}, destination: {}, method: 'GET', host: 'h', path, headers: new GuardedHeaders(new Map([['x-t', 'b']]), guard) },
      ports,
      Date.now(),
    ) as { allow: boolean; shadowDenials?: unknown[] };

  it('a shadow rule or shadow limit that needs it matches nothing and counts nothing: the request is decided', () => {
    for (let i = 0; i < 3; i++) {
      const v = ask('/y');
      assert.equal(v.allow, true);
      assert.equal(v.shadowDenials, undefined, 'neither the shadow rule nor the shadow limit (1 a minute) saw the header');
    }
  });

  it('an enforced rule that needs it refuses', () => {
    assert.throws(() => ask('/t/1'), (e: unknown) => e instanceof UnsentHeaderRead && e.rule === 'enforced');
  });
});

describe('header lists as operators write them', () => {
  it('reads comma-separated names, lower-cased, and names the ones that are not header names', () => {
    assert.deepEqual(readHeaderList(' X-Api-Key, ,x-debug,'), { names: ['x-api-key', 'x-debug'], bad: [] });
    assert.deepEqual(readHeaderList('x-ok,bad name,x%y,a:b').bad, ['bad name', 'x%y', 'a:b']);
    assert.equal(isHeaderName(':authority'), true);
    assert.equal(isHeaderName(''), false);
  });
});
