// The firewall end to end: real etcd, two real replicas, a real Envoy, real HTTP and TCP traffic.
import assert from 'node:assert/strict';
import { Etcd3 } from 'etcd3';
import { httpRequest, tcpProbe } from '../../src/lab/client';
import { SidecarLab } from '../../src/lab/sidecar';
import { EnvoyProcess } from '../../src/lab/envoy';
import { freePort, waitFor } from '../../src/lab/ports';
import { renderBootstrapYaml } from '../../src/envoy/bootstrap';
import { parsePolicies } from '../../src/policy/parse';
import type { PolicyDocument } from '../../src/policy/types';
import { CheckClient, httpCheck, statusOf } from '../harness/check';
import { NO_ADMIN_POLICY } from '../harness/policy';

const POLICY = `
${NO_ADMIN_POLICY}      - { name: blocked-client, action: deny, from: ["127.0.0.66/32"] }
      - { name: orders-read-only, action: deny, paths: ["/orders/*"], methods: [DELETE] }
      - { name: no-debug, action: deny, headers: [{ name: x-debug, value: "1" }] }
      - { name: beta, action: deny, shadow: true, paths: ["/beta/*"] }
`;

function policy(text: string): PolicyDocument {
  const { documents, errors } = parsePolicies(text, 'test');
  assert.deepEqual(errors, []);
  return documents[0]!;
}

describe('firewall through a real Envoy with two replicas and etcd', function () {
  this.timeout(60_000);
  let lab: SidecarLab;
  let etcd: Etcd3;

  before(async () => {
    lab = await SidecarLab.start({ replicas: 2, tcp: true });
    etcd = new Etcd3({ hosts: lab.etcd.endpoint });
    await lab.applyPolicies([policy(POLICY)]);
    await waitFor(async () => (await httpRequest({ port: lab.httpPort, path: '/admin/x' })).status === 403, {
      timeoutMs: 5000,
      what: 'the policy to be in force',
    });
  });

  after(async () => {
    etcd?.close();
    await lab?.stop();
  });

  const get = (path: string, extra: { method?: string; from?: string; headers?: Record<string, string> } = {}) =>
    httpRequest({ port: lab.httpPort, path, method: extra.method, localAddress: extra.from, headers: extra.headers });

  it('lets an allowed request reach the app, with the decision id upstream', async () => {
    const r = await get('/products/1');
    assert.equal(r.status, 200);
    const echo = JSON.parse(r.body);
    assert.equal(echo.upstream, 'app');
    assert.match(echo.headers['x-middlebox-decision'], /\S+/);
  });

  it('denies by path with 403 and a JSON body naming policy and rule', async () => {
    const r = await get('/admin/users');
    assert.equal(r.status, 403);
    assert.equal(r.headers['content-type'], 'application/json');
    const body = JSON.parse(r.body);
    assert.deepEqual([body.policy, body.rule, body.middlebox, body.reason], ['shop', 'no-admin', 'firewall', 'firewall_rule_deny']);
  });

  it('a path rule cannot be dodged with dot segments, doubled or escaped slashes', async () => {
    for (const p of ['/x/../admin/users', '//admin/users', '/admin//users', '/./admin/users', '/%61dmin/users', '/%2e%2e/admin/users']) {
      assert.equal((await get(p)).status, 403, p);
    }
    // An escaped slash is redirected to its canonical form rather than passed on.
    const escaped = await get('/admin%2Fusers');
    assert.notEqual(escaped.status, 200, '/admin%2Fusers must not reach the app');
  });

  it('denies by method but not other methods on the same path', async () => {
    assert.equal((await get('/orders/7', { method: 'DELETE' })).status, 403);
    assert.equal(JSON.parse((await get('/orders/7', { method: 'DELETE' })).body).rule, 'orders-read-only');
    assert.equal((await get('/orders/7')).status, 200);
  });

  it('denies by source CIDR using the real client address', async () => {
    const r = await get('/products/1', { from: '127.0.0.66' });
    assert.equal(r.status, 403);
    assert.equal(JSON.parse(r.body).rule, 'blocked-client');
    assert.equal((await get('/products/1', { from: '127.0.0.65' })).status, 200);
  });

  it('does not trust a spoofed x-forwarded-for', async () => {
    const r = await get('/products/1', { headers: { 'x-forwarded-for': '127.0.0.66' } });
    assert.equal(r.status, 200);
  });

  it('denies by header value, not by a different value', async () => {
    assert.equal((await get('/products/1', { headers: { 'x-debug': '1' } })).status, 403);
    assert.equal((await get('/products/1', { headers: { 'x-debug': '0' } })).status, 200);
  });

  it('a shadow rule lets the request through and says what it would have done', async () => {
    const r = await get('/beta/feature');
    assert.equal(r.status, 200);
    assert.equal(JSON.parse(r.body).headers['x-middlebox-shadow-deny'], 'firewall/shop/beta');
  });

  it('a client cannot forge the middlebox headers', async () => {
    const r = await get('/products/1', { headers: { 'x-middlebox-shadow-deny': 'forged', 'x-middlebox-decision': 'forged' } });
    const echo = JSON.parse(r.body);
    assert.equal(echo.headers['x-middlebox-shadow-deny'], undefined);
    assert.notEqual(echo.headers['x-middlebox-decision'], 'forged');
  });

  it('Envoy closes an idle connection to the app itself, before the app\'s keep-alive timeout (Node\'s 5 s) would', async () => {
    // Had the app closed it, a request Envoy sent on it at that moment would fail with a 503.
    const before = lab.app.closedByPeer();
    assert.equal((await get('/products/1')).status, 200);
    await waitFor(() => lab.app.closedByPeer() > before, { timeoutMs: 3500, what: 'Envoy to close its idle connection to the app (after 1 s)' });
  });

  it('refuses a TCP connection by rule while another is let through', async () => {
    const ok = await tcpProbe({ port: lab.tcpPort!, localAddress: '127.0.0.1' });
    assert.equal(ok.echoed, true, ok.detail);
    const before = lab.tcpApp!.accepted();
    const refused = await tcpProbe({ port: lab.tcpPort!, localAddress: '127.0.0.66' });
    assert.equal(refused.echoed, false);
    // Envoy's default (--tcp-connect immediate): the app sees the denied client connect, and close.
    await waitFor(() => lab.tcpApp!.accepted() > before, { timeoutMs: 3000, what: 'the app to see the denied connection' });
  });

  it('with --tcp-connect on-data, a denied client never reaches the app; an allowed one does, its first bytes delivered', async () => {
    // A second sidecar in front of the same replicas and TCP app, its TCP listener connecting on data.
    const [adminPort, tcpPort] = [await freePort(), await freePort()];
    const config = renderBootstrapYaml({
      adminPort,
      inboundHttp: false,
      inboundTcp: { address: '127.0.0.1', port: tcpPort, appAddress: '127.0.0.1', appPort: lab.tcpApp!.port },
      inboundTcpConnect: 'on-data',
      middlebox: lab.replicas.map((r) => r.address),
      timeoutMs: 1000,
    });
    const envoy = await EnvoyProcess.start({ config, adminPort });
    try {
      await waitFor(async () => (await tcpProbe({ port: tcpPort, localAddress: '127.0.0.1', timeoutMs: 1000 })).echoed, { timeoutMs: 5000, what: 'the on-data sidecar to serve' });
      const before = lab.tcpApp!.accepted();
      for (let i = 0; i < 3; i++) {
        const refused = await tcpProbe({ port: tcpPort, localAddress: '127.0.0.66' });
        assert.equal(refused.echoed, false, refused.detail);
      }
      // Nothing is on its way to the app either: give a late connect time to show.
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(lab.tcpApp!.accepted(), before, 'the app saw a denied client connect');
      // The probe writes as soon as it connects, before Envoy has an answer: held, then delivered.
      const ok = await tcpProbe({ port: tcpPort, localAddress: '127.0.0.1' });
      assert.equal(ok.echoed, true, ok.detail);
      assert.equal(lab.tcpApp!.accepted(), before + 1);
    } finally {
      await envoy.stop();
    }
  });

  it('both replicas apply a policy change within one second', async () => {
    const clients = lab.replicas.map((r) => new CheckClient(r.address));
    try {
      for (const c of clients) assert.equal(statusOf(await c.check(httpCheck({ path: '/reports/q3' }))), 200);
      const changed = policy(POLICY.replace('paths: ["/admin/*"]', 'paths: ["/admin/*", "/reports/*"]'));
      // From the moment etcd has it: the time to open a client and write is not the replicas'.
      await lab.applyPolicies([changed]);
      const t0 = Date.now();
      const latencies = await Promise.all(
        clients.map(async (c) => {
          await waitFor(async () => statusOf(await c.check(httpCheck({ path: '/reports/q3' }))) === 403, {
            timeoutMs: 3000,
            intervalMs: 10,
            what: 'a replica to apply the change',
          });
          return Date.now() - t0;
        }),
      );
      for (const ms of latencies) assert.ok(ms < 1000, `a replica took ${ms} ms`);
      // And through Envoy, whichever replica it picks.
      for (let i = 0; i < 6; i++) assert.equal((await get('/reports/q3')).status, 403);
    } finally {
      for (const c of clients) c.close();
    }
  });

  it('a corrupt policy written straight into etcd leaves the last good one in force', async () => {
    const key = `${lab.prefix}/policies/shop`;
    await etcd.put(key).value('{"apiVersion": "middlebox.io/v1alpha1", "kind": "Policy", "spec": ');
    await waitFor(async () => (await lab.replicas[0]!.health.check('middlebox.policy')) === 'NOT_SERVING', {
      timeoutMs: 3000,
      what: 'the replica to report the rejected policy in health',
    });
    for (const r of lab.replicas) {
      assert.equal(await r.health.check('middlebox.policy'), 'NOT_SERVING');
      assert.equal(await r.health.check(''), 'SERVING', 'a rejected update must not stop the replica serving');
      // The log line comes through the child's stdout, which may trail the health change a little.
      await waitFor(async () => /stored policy rejected; the last good version stays in force/.test(r.output()), { timeoutMs: 3000, what: 'the refusal in the log' });
    }
    for (let i = 0; i < 4; i++) assert.equal((await get('/admin/users')).status, 403);
    // A valid write heals it.
    await lab.applyPolicies([policy(POLICY)]);
    await waitFor(async () => (await lab.replicas[1]!.health.check('middlebox.policy')) === 'SERVING', {
      timeoutMs: 3000,
      what: 'the replica to accept the fixed policy',
    });
  });
});
