// `envoy bootstrap --authz-headers`: a real Envoy that sends the middlebox only the headers the
// rules read, over gRPC and over HTTP, with a real replica and etcd. Rules on the listed headers
// decide as before, the app still gets every header, the others never reach the replica, and a
// request that reaches an enforced rule on a header left out gets 403 headers_not_sent rather than a
// decision made without it — even where Envoy fails open, and whatever the client sends.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { httpRequest } from '../../src/lab/client';
import { waitFor } from '../../src/lab/ports';
import { SidecarLab } from '../../src/lab/sidecar';
import { parsePolicies } from '../../src/policy/parse';
import type { PolicyDocument } from '../../src/policy/types';
import { NO_ADMIN_POLICY } from '../harness/policy';

const POLICY = `
${NO_ADMIN_POLICY}      - { name: no-debug, action: deny, headers: [{ name: x-debug, value: "1" }] }
  rateLimits:
    - { name: per-key, match: { paths: ["/keys/*"] }, limit: 2, per: 1h, by: ["header:x-api-key"], algorithm: fixed-window, consistency: local }
`;

/** The same, plus a rule on a header the sidecar does not send, for paths under /t/. */
const WITH_TENANT_RULE = POLICY.replace(
  '      - { name: no-debug',
  '      - { name: tenant-a-only, action: deny, paths: ["/t/*"], headers: [{ name: x-tenant, value: b }] }\n      - { name: no-debug',
);

/** Rules on a header the sidecar does not send that no request here can be refused for. */
const HARMLESS = `
apiVersion: middlebox.io/v1alpha1
kind: Policy
metadata: { name: other-service }
spec:
  selector: { hosts: ["other.local"] }
  firewall:
    default: allow
    rules:
      - { name: tenant, action: deny, headers: [{ name: x-tenant, value: b }] }
---
apiVersion: middlebox.io/v1alpha1
kind: Policy
metadata: { name: trial }
spec:
  firewall:
    default: allow
    rules:
      - { name: tenant, action: deny, shadow: true, headers: [{ name: x-tenant, value: b }] }
`;

function docs(text: string): PolicyDocument[] {
  const { documents, errors } = parsePolicies(text, 'test');
  assert.deepEqual(errors, []);
  return documents;
}

for (const transport of ['grpc', 'http'] as const) {
  describe(`--authz-headers through a real Envoy, ext_authz over ${transport}`, function () {
    this.timeout(90_000);
    let lab: SidecarLab;

    before(async () => {
      lab = await SidecarLab.start({
        replicas: 1,
        httpAuthz: transport === 'http',
        bootstrap: { authzHeaders: ['x-debug', 'x-api-key'] },
        serveArgs: ['--decision-log', 'all'],
      });
      await lab.applyPolicies(docs(POLICY));
      await waitFor(async () => (await get('/admin/x')).status === 403, { timeoutMs: 10_000, what: 'the policy to be in force' });
    });

    after(async () => {
      await lab?.stop();
    });

    const get = (p: string, headers: Record<string, string> = {}) => httpRequest({ port: lab.httpPort, path: p, headers, timeoutMs: 10_000 });

    /** The replica's decision log line for a path (written for every decision: --decision-log all). */
    const decisionFor = async (p: string) => {
      let found: Record<string, unknown> | undefined;
      await waitFor(
        async () => {
          const file = lab.replicaLogFile(0);
          const lines = fs.existsSync(file) ? fs.readFileSync(file, 'utf8').split('\n').filter((l) => l.startsWith('{')) : [];
          found = lines.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.path === p && 'allow' in l);
          return found !== undefined;
        },
        { timeoutMs: 5000, what: `the decision log line for ${p}` },
      );
      return found!;
    };

    it('rules on listed headers decide as before', async () => {
      assert.equal((await get('/products/1', { 'x-debug': '1' })).status, 403);
      assert.equal((await get('/products/1', { 'x-debug': '0' })).status, 200);
      const a = [];
      for (let i = 0; i < 3; i++) a.push((await get('/keys/1', { 'x-api-key': 'a' })).status);
      assert.deepEqual(a, [200, 200, 429]);
      assert.equal((await get('/keys/1', { 'x-api-key': 'b' })).status, 200, 'another key, another bucket');
    });

    it('the replica sees the listed headers and not the others; the app still gets them all', async () => {
      const r = await get('/seen/1', { 'x-debug': '0', 'x-unlisted': 'yes', cookie: 'sid=1' });
      assert.equal(r.status, 200);
      const app = JSON.parse(r.body).headers as Record<string, string>;
      assert.equal(app['x-unlisted'], 'yes');
      assert.equal(app.cookie, 'sid=1');
      const seen = (await decisionFor('/seen/1')).headers as Record<string, string>;
      assert.equal(seen['x-debug'], '0');
      assert.equal(seen['x-unlisted'], undefined, JSON.stringify(seen));
      assert.equal(seen.cookie, undefined, JSON.stringify(seen));
    });

    it('a client still cannot hand the app x-middlebox-* headers', async () => {
      const r = await get('/products/1', { 'x-middlebox-shadow-deny': 'forged', 'x-middlebox-decision': 'forged' });
      const app = JSON.parse(r.body).headers as Record<string, string>;
      assert.equal(app['x-middlebox-shadow-deny'], undefined);
      assert.notEqual(app['x-middlebox-decision'], 'forged');
    });

    it('a request that reaches a rule on a header the sidecar does not send: 403 headers_not_sent; others are decided; fixed when the rule goes', async () => {
      await lab.applyPolicies([...docs(WITH_TENANT_RULE), ...docs(HARMLESS)]);
      await waitFor(async () => (await get('/t/probe')).status === 403, { timeoutMs: 10_000, what: 'the new policy to be in force' });
      const r = await get('/t/2', { 'x-tenant': 'a' });
      assert.equal(r.status, 403, r.body);
      const body = JSON.parse(r.body);
      assert.deepEqual([body.reason, body.policy, body.rule], ['headers_not_sent', 'shop', 'tenant-a-only']);
      const line = await decisionFor('/t/2');
      assert.deepEqual([line.allow, line.status, line.reason], [false, 403, 'headers_not_sent']);
      // Outside /t/ no enforced rule reads x-tenant: the shadow rule and the other service's policy
      // read it as absent and refuse nothing.
      const outside = await get('/products/2', { 'x-tenant': 'b' });
      assert.equal(outside.status, 200, outside.body);
      if (transport === 'http') {
        // The list rides in the peer header, which Envoy overwrites: a client claiming x-tenant is sent gets nowhere.
        const forged = await get('/t/3', { 'x-tenant': 'a', 'x-middlebox-ext-authz-peer': 'src=127.0.0.1:1 dst=127.0.0.1:2 hdrs=x-tenant,x-debug,x-api-key,:authority,:method,:path len= uri=' });
        assert.equal(JSON.parse(forged.body).reason, 'headers_not_sent');
      }
      await lab.applyPolicies(docs(POLICY));
      await waitFor(async () => (await get('/t/4', { 'x-tenant': 'b' })).status === 200, { timeoutMs: 10_000, what: 'the rule to be gone' });
    });
  });
}

describe('--authz-headers with --failure-mode-allow, over HTTP: a rule on a header left out still refuses', function () {
  this.timeout(90_000);
  let lab: SidecarLab;

  before(async () => {
    lab = await SidecarLab.start({ replicas: 1, httpAuthz: true, bootstrap: { authzHeaders: ['x-debug'], failureModeAllow: true } });
    await lab.applyPolicies(docs(WITH_TENANT_RULE));
    await waitFor(async () => (await httpRequest({ port: lab.httpPort, path: '/admin/x' })).status === 403, { timeoutMs: 10_000, what: 'the policy to be in force' });
  });

  after(async () => {
    await lab?.stop();
  });

  it('answers 403, which Envoy enforces, not a 5xx it would take for a failed call and let through', async () => {
    const r = await httpRequest({ port: lab.httpPort, path: '/t/1', headers: { 'x-tenant': 'b' }, timeoutMs: 10_000 });
    assert.equal(r.status, 403, r.body);
    assert.equal(JSON.parse(r.body).reason, 'headers_not_sent');
  });
});
