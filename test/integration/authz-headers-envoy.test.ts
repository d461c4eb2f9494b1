// `envoy bootstrap --authz-headers`: a real Envoy that sends the middlebox only the headers the
// rules read, over gRPC and over HTTP, with a real replica and etcd. Rules on the listed headers
// decide as before, the app still gets every header, the others never reach the replica, and a rule
// on a header left out gets 503 headers_not_sent rather than a decision made without it.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { httpRequest } from '../../src/lab/client';
import { waitFor } from '../../src/lab/ports';
import { SidecarLab } from '../../src/lab/sidecar';
import { parsePolicies } from '../../src/policy/parse';
import type { PolicyDocument } from '../../src/policy/types';

const POLICY = `
apiVersion: middlebox.io/v1alpha1
kind: Policy
metadata: { name: shop }
spec:
  firewall:
    default: allow
    rules:
      - { name: no-admin, action: deny, paths: ["/admin/*"] }
      - { name: no-debug, action: deny, headers: [{ name: x-debug, value: "1" }] }
  rateLimits:
    - { name: per-key, match: { paths: ["/keys/*"] }, limit: 2, per: 1m, by: ["header:x-api-key"], algorithm: fixed-window, consistency: local }
`;

/** The same, plus a rule on a header the sidecar does not send. */
const WITH_TENANT_RULE = POLICY.replace(
  '      - { name: no-debug',
  '      - { name: tenant-a-only, action: deny, headers: [{ name: x-tenant, value: b }] }\n      - { name: no-debug',
);

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
          const file = path.join(lab.logDir, 'middlebox-1.log');
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
      assert.equal(seen['x-middlebox-ext-authz-headers'], undefined, 'the list itself is not a client header');
    });

    it('a client still cannot hand the app x-middlebox-* headers', async () => {
      const r = await get('/products/1', { 'x-middlebox-shadow-deny': 'forged', 'x-middlebox-decision': 'forged' });
      const app = JSON.parse(r.body).headers as Record<string, string>;
      assert.equal(app['x-middlebox-shadow-deny'], undefined);
      assert.notEqual(app['x-middlebox-decision'], 'forged');
    });

    it('a rule on a header the sidecar does not send: 503 headers_not_sent, never a decision without it; fixed when the rule goes', async () => {
      await lab.applyPolicies(docs(WITH_TENANT_RULE));
      await waitFor(async () => (await get('/products/2')).status !== 200, { timeoutMs: 10_000, what: 'the new policy to be in force' });
      // Over gRPC Envoy hands the client the replica's 503 and body; over HTTP a 5xx from the
      // service is an error to Envoy, which answers status_on_error (403). Either way: refused.
      const r = await get('/products/2', { 'x-tenant': 'a' });
      assert.equal(r.status, transport === 'grpc' ? 503 : 403, r.body);
      const line = await decisionFor('/products/2');
      assert.deepEqual([line.allow, line.status, line.reason, line.policy, line.rule], [false, 503, 'headers_not_sent', 'shop', 'tenant-a-only']);
      await lab.applyPolicies(docs(POLICY));
      await waitFor(async () => (await get('/products/3', { 'x-tenant': 'b' })).status === 200, { timeoutMs: 10_000, what: 'the rule to be gone' });
    });
  });
}
