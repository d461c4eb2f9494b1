import assert from 'node:assert/strict';
import { hostWithoutPort } from '../../src/grpc/authz/request';
import { decideFirewall } from '../../src/middlebox/firewall/engine';
import { compileSnapshot } from '../../src/policy/compile';
import { snapshot } from '../harness/policy';
import { request } from '../harness/request';

const OFFICE_ONLY = `{ firewall: { default: deny, rules: [
  { name: office, action: allow, from: ["203.0.113.0/24"] },
  { name: no-admin, action: deny, paths: ["/admin/*"] } ] } }`;

describe('compileSnapshot', () => {
  it('orders policies by name and keeps the generation', () => {
    const snap = snapshot({ zeta: '{}', alpha: '{}', 'alpha-2': '{}', beta: '{}' }, 7);
    assert.equal(snap.generation, 7);
    assert.deepEqual(snap.policies.map((p) => p.name), ['alpha', 'alpha-2', 'beta', 'zeta']);
  });

  it('keeps the document and compiles shadow and firewall defaults', () => {
    const [policy] = snapshot({ p: '{ shadow: true, firewall: {} }' }).policies;
    assert.equal(policy.document.metadata.name, 'p');
    assert.equal(policy.shadow, true);
    assert.deepEqual(policy.firewall, { defaultAction: 'allow', rules: [] });
  });
});

describe('decideFirewall', () => {
  it('allows when there is no policy', () => {
    assert.deepEqual(decideFirewall(snapshot({}), request()), { allow: true, reason: 'allowed' });
  });

  it('ignores policies without a firewall', () => {
    const snap = snapshot({ limits: '{ rateLimits: [{ name: l, limit: 1, per: 1s }] }' });
    assert.deepEqual(decideFirewall(snap, request()), { allow: true, reason: 'allowed' });
  });

  it('lets the first matching rule decide', () => {
    const snap = snapshot({ shop: OFFICE_ONLY });
    // The office allow comes first, so the office may reach /admin.
    assert.deepEqual(decideFirewall(snap, request({ from: '203.0.113.9', path: '/admin/x' })), {
      allow: true, reason: 'allowed', policy: 'shop', rule: 'office',
    });
    assert.deepEqual(decideFirewall(snap, request({ path: '/admin/x' })), {
      allow: false, status: 403, middlebox: 'firewall', policy: 'shop', rule: 'no-admin', reason: 'firewall_rule_deny',
    });
  });

  // Regression: policies wrote IPv6 hosts in brackets, requests carried them without, so such a
  // rule never matched.
  it('matches an IPv6 host rule whatever form the request\'s authority takes', () => {
    const snap = snapshot({ v6: '{ firewall: { rules: [ { name: loopback, action: deny, hosts: ["[0:0::1]"] } ] } }' });
    for (const authority of ['[::1]:8080', '[0:0:0:0:0:0:0:1]', '[::1]']) {
      const req = request({ host: hostWithoutPort(authority) });
      assert.equal(decideFirewall(snap, req).rule, 'loopback', authority);
    }
    assert.equal(decideFirewall(snap, request({ host: hostWithoutPort('[::2]:8080') })).allow, true);
  });

  it('falls back to the policy default when no rule matches', () => {
    assert.deepEqual(decideFirewall(snapshot({ shop: OFFICE_ONLY }), request({ path: '/shop' })), {
      allow: false, status: 403, middlebox: 'firewall', policy: 'shop', rule: 'default', reason: 'firewall_default_deny',
    });
    const permissive = snapshot({ shop: '{ firewall: { rules: [{ name: r, action: deny, ports: [22] }] } }' });
    assert.deepEqual(decideFirewall(permissive, request()), { allow: true, reason: 'allowed' });
  });

  it('denies when a later policy denies, whatever earlier ones allowed', () => {
    const snap = snapshot({
      'b-strict': '{ firewall: { rules: [{ name: no-post, action: deny, methods: [POST] }] } }',
      'a-open': '{ firewall: { rules: [{ name: everyone, action: allow }] } }',
    });
    assert.deepEqual(decideFirewall(snap, request({ method: 'POST' })), {
      allow: false, status: 403, middlebox: 'firewall', policy: 'b-strict', rule: 'no-post', reason: 'firewall_rule_deny',
    });
    assert.deepEqual(decideFirewall(snap, request({ method: 'GET' })), {
      allow: true, reason: 'allowed', policy: 'a-open', rule: 'everyone',
    });
  });

  it('reports the first denying policy in name order', () => {
    const snap = snapshot({
      zz: '{ firewall: { default: deny } }',
      aa: '{ firewall: { rules: [{ name: all, action: deny }] } }',
    });
    const verdict = decideFirewall(snap, request());
    assert.equal(verdict.policy, 'aa');
    assert.equal(verdict.rule, 'all');
  });

  it('names the first matching allow rule across policies', () => {
    const snap = snapshot({
      a: '{ firewall: { rules: [{ name: other-port, action: allow, ports: [9] }] } }',
      b: '{ firewall: { rules: [{ name: first, action: allow }] } }',
      c: '{ firewall: { rules: [{ name: second, action: allow }] } }',
    });
    assert.deepEqual(decideFirewall(snap, request()), { allow: true, reason: 'allowed', policy: 'b', rule: 'first' });
  });

  it('evaluates a policy only for traffic its selector matches', () => {
    const snap = snapshot({ shop: '{ selector: { hosts: ["shop.local"], paths: ["/api/*"] }, firewall: { default: deny } }' });
    assert.equal(decideFirewall(snap, request({ path: '/api/items' })).allow, false);
    assert.equal(decideFirewall(snap, request({ path: '/web' })).allow, true);
    assert.equal(decideFirewall(snap, request({ host: 'blog.local', path: '/api/items' })).allow, true);
    assert.equal(decideFirewall(snap, request({ protocol: 'tcp' })).allow, true, 'an HTTP selector never matches tcp');
  });

  it('applies a selector-less policy to tcp connections too', () => {
    const snap = snapshot({ db: '{ firewall: { default: deny, rules: [{ name: app, action: allow, from: ["10.0.0.0/8"], ports: [5432] }] } }' });
    assert.equal(decideFirewall(snap, request({ protocol: 'tcp', from: '10.1.1.1', port: 5432 })).allow, true);
    assert.equal(decideFirewall(snap, request({ protocol: 'tcp', from: '192.0.2.1', port: 5432 })).rule, 'default');
  });

  describe('shadow', () => {
    it('a shadow policy records its deny and allows', () => {
      const snap = snapshot({ trial: `{ shadow: true, firewall: { rules: [{ name: no-admin, action: deny, paths: ["/admin/*"] }] } }` });
      assert.deepEqual(decideFirewall(snap, request({ path: '/admin' })), {
        allow: true, reason: 'allowed',
        shadowDenials: [{ middlebox: 'firewall', policy: 'trial', rule: 'no-admin', status: 403 }],
      });
      assert.deepEqual(decideFirewall(snap, request({ path: '/shop' })), { allow: true, reason: 'allowed' });
    });

    it('a shadow policy records a default deny as rule "default"', () => {
      const snap = snapshot({ trial: '{ shadow: true, firewall: { default: deny } }' });
      assert.deepEqual(decideFirewall(snap, request()).shadowDenials, [
        { middlebox: 'firewall', policy: 'trial', rule: 'default', status: 403 },
      ]);
    });

    it('an enforced deny after a shadow deny carries the shadow record', () => {
      const snap = snapshot({
        a: '{ shadow: true, firewall: { default: deny } }',
        b: '{ firewall: { default: deny } }',
      });
      assert.deepEqual(decideFirewall(snap, request()), {
        allow: false, status: 403, middlebox: 'firewall', policy: 'b', rule: 'default', reason: 'firewall_default_deny',
        shadowDenials: [{ middlebox: 'firewall', policy: 'a', rule: 'default', status: 403 }],
      });
    });

    it('a shadow allow rule does not name the allowed verdict', () => {
      const snap = snapshot({ trial: '{ shadow: true, firewall: { rules: [{ name: ok, action: allow }] } }' });
      assert.deepEqual(decideFirewall(snap, request()), { allow: true, reason: 'allowed' });
    });

    it('a shadow rule records its deny and evaluation goes on with the next rule', () => {
      const snap = snapshot({
        shop: `{ firewall: { rules: [
          { name: new-block, action: deny, shadow: true, paths: ["/beta/*"] },
          { name: everyone, action: allow } ] } }`,
      });
      assert.deepEqual(decideFirewall(snap, request({ path: '/beta/x' })), {
        allow: true, reason: 'allowed', policy: 'shop', rule: 'everyone',
        shadowDenials: [{ middlebox: 'firewall', policy: 'shop', rule: 'new-block', status: 403 }],
      });
    });

    it('a shadow rule never weakens the rules after it', () => {
      const snap = snapshot({
        shop: `{ firewall: { default: deny, rules: [
          { name: trial, action: deny, shadow: true, paths: ["/admin/*"] },
          { name: no-admin, action: deny, paths: ["/admin/*"] },
          { name: trial-allow, action: allow, shadow: true } ] } }`,
      });
      const verdict = decideFirewall(snap, request({ path: '/admin' }));
      assert.equal(verdict.allow, false);
      assert.equal(verdict.rule, 'no-admin');
      assert.deepEqual(verdict.shadowDenials, [{ middlebox: 'firewall', policy: 'shop', rule: 'trial', status: 403 }]);
      // The shadow allow does not override the default deny either.
      assert.equal(decideFirewall(snap, request({ path: '/shop' })).rule, 'default');
    });

    it('rules in a shadow policy are all shadow', () => {
      const snap = snapshot({ trial: '{ shadow: true, firewall: { rules: [{ name: r1, action: deny, shadow: true }, { name: r2, action: deny }] } }' });
      assert.deepEqual(decideFirewall(snap, request()), {
        allow: true, reason: 'allowed',
        shadowDenials: [
          { middlebox: 'firewall', policy: 'trial', rule: 'r1', status: 403 },
          { middlebox: 'firewall', policy: 'trial', rule: 'r2', status: 403 },
        ],
      });
    });
  });

  it('builds no shadow list on a plain allow', () => {
    const verdict = decideFirewall(snapshot({ shop: OFFICE_ONLY }), request({ from: '203.0.113.1' }));
    assert.equal(verdict.allow, true);
    assert.ok(!('shadowDenials' in verdict));
  });
});
