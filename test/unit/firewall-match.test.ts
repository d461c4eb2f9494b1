import assert from 'node:assert/strict';
import {
  allOf,
  destinationMatcher,
  headerMatcher,
  hostMatcher,
  matchAll,
  methodMatcher,
  pathMatcher,
  portMatcher,
  principalMatcher,
  sourceMatcher,
  trafficMatcher,
} from '../../src/middlebox/firewall/match';
import { compilePolicy } from '../../src/policy/compile';
import { parsePolicies } from '../../src/policy/parse';
import type { RequestMatcher } from '../../src/policy/types';
import { request, type RequestShape } from '../harness/request';

/** The matcher of the single firewall rule in `rule` (flow YAML), compiled through the policy path. */
function ruleMatcher(rule: string): RequestMatcher {
  const text = `apiVersion: middlebox.io/v1alpha1\nkind: Policy\nmetadata: { name: t }\nspec:\n  firewall:\n    rules: [${rule}]\n`;
  const { documents, errors } = parsePolicies(text, 'test.yaml');
  assert.deepEqual(errors, []);
  return compilePolicy(documents[0]).firewall!.rules[0].matches;
}

describe('firewall matchers', () => {
  describe('hosts', () => {
    it('matches exact names', () => {
      const m = hostMatcher(['shop.local', 'api.shop.local']);
      assert.ok(m(request({ host: 'shop.local' })));
      assert.ok(m(request({ host: 'api.shop.local' })));
      assert.ok(!m(request({ host: 'www.shop.local' })));
      assert.ok(!m(request({ host: 'shop.local.evil' })));
    });

    it('compares patterns case-insensitively', () => {
      assert.ok(hostMatcher(['Shop.LOCAL'])(request({ host: 'shop.local' })));
      assert.ok(hostMatcher(['*.Shop.Local'])(request({ host: 'a.shop.local' })));
    });

    it('*.suffix matches subdomains at any depth, not the suffix itself', () => {
      const m = hostMatcher(['*.example.com']);
      assert.ok(m(request({ host: 'a.example.com' })));
      assert.ok(m(request({ host: 'a.b.example.com' })));
      assert.ok(!m(request({ host: 'example.com' })));
      assert.ok(!m(request({ host: 'badexample.com' })));
      assert.ok(!m(request({ host: '.example.com' })));
    });

    it('* matches any host but needs one', () => {
      const m = hostMatcher(['*']);
      assert.ok(m(request({ host: 'anything.at.all' })));
      assert.ok(!m(request({ protocol: 'tcp' })));
    });
  });

  describe('paths', () => {
    it('matches exact paths', () => {
      const m = pathMatcher(['/health']);
      assert.ok(m(request({ path: '/health' })));
      assert.ok(!m(request({ path: '/health/' })));
      assert.ok(!m(request({ path: '/healthz' })));
    });

    it('/prefix/* matches the prefix and below, not siblings', () => {
      const m = pathMatcher(['/api/*']);
      assert.ok(m(request({ path: '/api' })));
      assert.ok(m(request({ path: '/api/' })));
      assert.ok(m(request({ path: '/api/v1/items' })));
      assert.ok(!m(request({ path: '/apix' })));
      assert.ok(!m(request({ path: '/ap' })));
      assert.ok(!m(request({ path: '/other/api/x' })));
    });

    it('/* matches every path', () => {
      const m = pathMatcher(['/*']);
      assert.ok(m(request({ path: '/' })));
      assert.ok(m(request({ path: '/a/b' })));
    });

    it('matches regexes as written (unanchored unless anchored)', () => {
      const anchored = pathMatcher([{ regex: '^/v[0-9]+/' }]);
      assert.ok(anchored(request({ path: '/v2/items' })));
      assert.ok(!anchored(request({ path: '/x/v2/items' })));
      const loose = pathMatcher([{ regex: 'secret' }]);
      assert.ok(loose(request({ path: '/a/secret/b' })));
      assert.ok(!loose(request({ path: '/a/b' })));
    });

    it('matches any of a mixed list', () => {
      const m = pathMatcher(['/a', '/b/*', { regex: '^/c$' }]);
      assert.ok(m(request({ path: '/a' })));
      assert.ok(m(request({ path: '/b/1' })));
      assert.ok(m(request({ path: '/c' })));
      assert.ok(!m(request({ path: '/d' })));
    });
  });

  describe('headers', () => {
    it('matches an exact value', () => {
      const m = headerMatcher([{ name: 'x-env', value: 'prod' }]);
      assert.ok(m(request({ headers: { 'x-env': 'prod' } })));
      assert.ok(!m(request({ headers: { 'x-env': 'production' } })));
      assert.ok(!m(request()));
    });

    it('matches a regex over the value', () => {
      const m = headerMatcher([{ name: 'user-agent', regex: '^curl/' }]);
      assert.ok(m(request({ headers: { 'user-agent': 'curl/8.0' } })));
      assert.ok(!m(request({ headers: { 'user-agent': 'Mozilla curl/8.0' } })));
      assert.ok(!m(request()));
    });

    it('for a deny rule, matches a header sent more than once (its values joined with ",") by any one of its values', () => {
      const exact = headerMatcher([{ name: 'x-debug', value: 'true' }], true);
      assert.ok(exact(request({ headers: { 'x-debug': 'true,true' } })), 'twice');
      assert.ok(exact(request({ headers: { 'x-debug': 'false, true' } })));
      assert.ok(!exact(request({ headers: { 'x-debug': 'false,yes' } })));
      const regex = headerMatcher([{ name: 'x-role', regex: '^admin$' }], true);
      assert.ok(regex(request({ headers: { 'x-role': 'user,admin' } })));
      assert.ok(!regex(request({ headers: { 'x-role': 'user,administrator' } })));
      assert.ok(headerMatcher([{ name: 'accept', value: 'a/b, c/d' }], true)(request({ headers: { accept: 'a/b, c/d' } })), 'the whole still matches');
    });

    it('for an allow rule, only by the whole value: a client cannot add a value to earn it', () => {
      const trusted = headerMatcher([{ name: 'x-forwarded-for', regex: '^10\\.0\\.0\\.5$' }]);
      assert.ok(trusted(request({ headers: { 'x-forwarded-for': '10.0.0.5' } })));
      assert.ok(!trusted(request({ headers: { 'x-forwarded-for': '10.0.0.5,192.0.2.9' } })));
    });

    it('matches presence (the default) and absence', () => {
      const present = headerMatcher([{ name: 'authorization' }]);
      assert.ok(present(request({ headers: { authorization: '' } })));
      assert.ok(!present(request()));
      const explicitlyPresent = headerMatcher([{ name: 'authorization', present: true }]);
      assert.ok(explicitlyPresent(request({ headers: { authorization: 'x' } })));
      assert.ok(!explicitlyPresent(request()));
      const absent = headerMatcher([{ name: 'authorization', present: false }]);
      assert.ok(absent(request()));
      assert.ok(!absent(request({ headers: { authorization: 'x' } })));
    });

    it('lower-cases the configured name', () => {
      assert.ok(headerMatcher([{ name: 'X-Env', value: 'prod' }])(request({ headers: { 'x-env': 'prod' } })));
    });

    it('requires every entry to hold', () => {
      const m = headerMatcher([{ name: 'x-a', value: '1' }, { name: 'x-b', present: false }]);
      assert.ok(m(request({ headers: { 'x-a': '1' } })));
      assert.ok(!m(request({ headers: { 'x-a': '1', 'x-b': '2' } })));
      assert.ok(!m(request({ headers: { 'x-a': '2' } })));
    });

    it('never matches a tcp connection, not even absence', () => {
      assert.ok(!headerMatcher([{ name: 'x-a', present: false }])(request({ protocol: 'tcp' })));
    });
  });

  describe('principals', () => {
    it('matches exactly or by trailing-* prefix', () => {
      const m = principalMatcher(['spiffe://mesh/ns/shop/sa/web', 'spiffe://mesh/ns/ops/*']);
      assert.ok(m(request({ principal: 'spiffe://mesh/ns/shop/sa/web' })));
      assert.ok(m(request({ principal: 'spiffe://mesh/ns/ops/sa/anything' })));
      assert.ok(!m(request({ principal: 'spiffe://mesh/ns/shop/sa/web2' })));
      assert.ok(!m(request({ principal: 'spiffe://mesh/ns/opsx' })));
      assert.ok(!m(request()));
    });

    it('* alone matches any principal but needs one', () => {
      const m = principalMatcher(['*']);
      assert.ok(m(request({ principal: 'spiffe://x' })));
      assert.ok(!m(request()));
    });
  });

  describe('addresses', () => {
    it('from matches the source address, mapped or not', () => {
      const m = sourceMatcher(['203.0.113.0/24', '2001:db8::/32']);
      assert.ok(m(request({ from: '203.0.113.9' })));
      assert.ok(m(request({ from: '::ffff:203.0.113.9' })));
      assert.ok(m(request({ from: '2001:db8:1::1' })));
      assert.ok(!m(request({ from: '198.51.100.7' })));
      assert.ok(!m(request({ from: '2001:db9::1' })));
    });

    it('from never matches a request without a source address', () => {
      assert.ok(!sourceMatcher(['0.0.0.0/0', '::/0'])(request({ from: null })));
    });

    it('to matches the destination address', () => {
      const m = destinationMatcher(['10.0.0.0/24']);
      assert.ok(m(request({ to: '10.0.0.5' })));
      assert.ok(!m(request({ to: '10.0.1.5' })));
      assert.ok(!m(request({ from: '10.0.0.5', to: '192.0.2.1' })), 'the source must not count');
    });
  });

  describe('methods and ports', () => {
    it('matches methods from a set', () => {
      const m = methodMatcher(['GET', 'post']);
      assert.ok(m(request({ method: 'GET' })));
      assert.ok(m(request({ method: 'POST' })));
      assert.ok(!m(request({ method: 'DELETE' })));
    });

    it('matches the destination port', () => {
      const m = portMatcher([8080, 9090]);
      assert.ok(m(request({ port: 9090 })));
      assert.ok(!m(request({ port: 80 })));
    });

    it('methods, hosts and paths never match a tcp connection; ports do', () => {
      const tcp = request({ protocol: 'tcp', port: 5432 });
      assert.ok(!methodMatcher(['GET'])(tcp));
      assert.ok(!hostMatcher(['*'])(tcp));
      assert.ok(!pathMatcher(['/*'])(tcp));
      assert.ok(portMatcher([5432])(tcp));
    });
  });

  describe('combinations', () => {
    it('an omitted match block or field matches everything', () => {
      assert.equal(trafficMatcher(undefined), matchAll);
      assert.equal(trafficMatcher({}), matchAll);
      assert.ok(trafficMatcher({})(request({ protocol: 'tcp' })));
    });

    it('a match block is the AND of its fields', () => {
      const m = trafficMatcher({ hosts: ['shop.local'], paths: ['/api/*'], methods: ['POST'], ports: [8080] });
      assert.ok(m(request({ path: '/api/x', method: 'POST' })));
      assert.ok(!m(request({ path: '/api/x', method: 'GET' })));
      assert.ok(!m(request({ path: '/web', method: 'POST' })));
      assert.ok(!m(request({ path: '/api/x', method: 'POST', host: 'other.local' })));
      assert.ok(!m(request({ path: '/api/x', method: 'POST', port: 80 })));
    });

    it('allOf needs every matcher', () => {
      const yes: RequestMatcher = () => true;
      const no: RequestMatcher = () => false;
      assert.ok(allOf([yes, yes, yes])(request()));
      assert.ok(!allOf([yes, yes, no])(request()));
      assert.ok(!allOf([no, yes])(request()));
      assert.equal(allOf([]), matchAll);
    });

    it('a compiled rule is the AND of its fields, each an OR over its list', () => {
      const m = ruleMatcher('{ name: r, action: deny, from: ["10.0.0.0/8", "192.0.2.1"], ports: [80, 443], methods: [get], hosts: ["*.shop.local"], paths: ["/admin/*"], headers: [{ name: X-Debug }], principals: ["spiffe://mesh/*"] }');
      const hit: RequestShape = {
        from: '10.1.2.3', port: 443, method: 'GET', host: 'a.shop.local', path: '/admin/users',
        headers: { 'x-debug': '1' }, principal: 'spiffe://mesh/web',
      };
      assert.ok(m(request(hit)));
      assert.ok(m(request({ ...hit, from: '192.0.2.1', port: 80 })));
      assert.ok(!m(request({ ...hit, from: '192.0.2.2' })));
      assert.ok(!m(request({ ...hit, port: 8080 })));
      assert.ok(!m(request({ ...hit, method: 'POST' })));
      assert.ok(!m(request({ ...hit, host: 'shop.local' })));
      assert.ok(!m(request({ ...hit, path: '/api' })));
      assert.ok(!m(request({ ...hit, headers: {} })));
      assert.ok(!m(request({ ...hit, principal: 'spiffe://other/web' })));
    });

    it('a compiled rule with no fields matches everything, tcp included', () => {
      const m = ruleMatcher('{ name: r, action: deny }');
      assert.ok(m(request()));
      assert.ok(m(request({ protocol: 'tcp', from: null })));
    });

    it('a compiled rule with HTTP fields does not match tcp', () => {
      assert.ok(!ruleMatcher('{ name: r, action: deny, methods: [GET] }')(request({ protocol: 'tcp' })));
      assert.ok(ruleMatcher('{ name: r, action: deny, ports: [8080], from: ["0.0.0.0/0"] }')(request({ protocol: 'tcp' })));
    });

    it('a compiled rule uses the `to` field for the destination', () => {
      const m = ruleMatcher('{ name: r, action: deny, to: ["::ffff:10.0.0.0/120"] }');
      assert.ok(m(request({ to: '10.0.0.200' })));
      assert.ok(!m(request({ to: '10.0.1.1' })));
    });
  });
});
