// Which headers a policy's ext_authz rules read (src/policy/headers.ts), and which of them a sidecar
// that sends only some leaves out.
import assert from 'node:assert/strict';
import { compileSnapshot } from '../../src/policy/compile';
import { headersReadBy, isHeaderName, readHeaderList, unsentHeaders } from '../../src/policy/headers';
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
      { name: ':authority', rule: 'b-shop/pseudo' },
      { name: 'x-api-key', rule: 'b-shop/per-key' },
      { name: 'x-debug', rule: 'a-edge/debug-first' },
      { name: 'x-middlebox-probe', rule: 'a-edge/own' },
      { name: 'x-tenant', rule: 'b-shop/no-debug' },
    ]);
  });

  it('leaves out NAT affinity headers: ext_proc carries every header anyway', () => {
    assert.equal(headersReadBy(docs()).some((h) => h.name === 'x-session'), false);
  });

  it('a policy without header rules reads none', () => {
    assert.deepEqual(headersReadBy(docs('apiVersion: middlebox.io/v1alpha1\nkind: Policy\nmetadata: { name: p }\nspec:\n  firewall: { default: allow, rules: [ { name: a, action: deny, paths: ["/a"] } ] }\n')), []);
  });
});

describe('headers a sidecar leaves out', () => {
  const snapshot = compileSnapshot(docs(), 1);

  it('every header read is in the list (any case, any spacing): nothing missing', () => {
    assert.deepEqual(unsentHeaders(snapshot, ':authority, X-Api-Key,x-debug,x-tenant'), []);
  });

  it('names each header left out with the rule that reads it; x-middlebox-* always counts as sent', () => {
    assert.deepEqual(unsentHeaders(snapshot, ':authority,x-debug'), [
      { name: 'x-api-key', rule: 'b-shop/per-key' },
      { name: 'x-tenant', rule: 'b-shop/no-debug' },
    ]);
    assert.deepEqual(unsentHeaders(snapshot, '').map((h) => h.name), [':authority', 'x-api-key', 'x-debug', 'x-tenant']);
  });

  it('works the answer out once per snapshot and list, and again for a new snapshot', () => {
    const first = unsentHeaders(snapshot, 'x-debug');
    assert.equal(unsentHeaders(snapshot, 'x-debug'), first);
    const next = compileSnapshot(docs().filter((d) => d.metadata.name === 'a-edge'), 2);
    assert.deepEqual(unsentHeaders(next, 'x-debug'), []);
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
