// Envoy's ext_authz over HTTP (http_service, `serve --http-authz-listen`) end to end: real etcd,
// two real replicas, a real Envoy rendered with `middleboxHttp`, real HTTP traffic. The same
// decisions as over gRPC: firewall, rate limits and their headers, the real client address, and
// nothing a client sends can stand in for what Envoy fills in.
import assert from 'node:assert/strict';
import { httpRequest, type HttpResult } from '../../src/lab/client';
import { SidecarLab } from '../../src/lab/sidecar';
import { waitFor } from '../../src/lab/ports';
import { parsePolicies } from '../../src/policy/parse';
import type { PolicyDocument } from '../../src/policy/types';
import { HTTP_AUTHZ_PEER_HEADER } from '../../src/grpc/authz/http';
import { NO_ADMIN_POLICY } from '../harness/policy';

const POLICY = `
${NO_ADMIN_POLICY}      - { name: blocked-client, action: deny, from: ["127.0.0.66/32"] }
      - { name: orders-read-only, action: deny, paths: ["/orders/*"], methods: [DELETE] }
      - { name: no-debug, action: deny, headers: [{ name: x-debug, value: "1" }] }
      - { name: beta, action: deny, shadow: true, paths: ["/beta/*"] }
      - { name: no-big-uploads, action: deny, paths: ["/upload/*"], headers: [{ name: content-length, regex: "[0-9]{4,}" }] }
  rateLimits:
    - { name: exact, match: { paths: ["/strict/*"] }, limit: 20, per: 1h, algorithm: fixed-window, consistency: strict, headers: true }
    - { name: per-key, match: { paths: ["/keys/*"] }, limit: 2, per: 1h, by: ["header:x-api-key"], algorithm: fixed-window, consistency: strict }
`;

function policy(text: string): PolicyDocument {
  const { documents, errors } = parsePolicies(text, 'test');
  assert.deepEqual(errors, []);
  return documents[0]!;
}

describe('ext_authz over HTTP through a real Envoy with two replicas and etcd', function () {
  this.timeout(90_000);
  let lab: SidecarLab;

  before(async () => {
    lab = await SidecarLab.start({ replicas: 2, httpAuthz: true });
    await lab.applyPolicies([policy(POLICY)]);
    await waitFor(async () => (await httpRequest({ port: lab.httpPort, path: '/admin/x' })).status === 403, {
      timeoutMs: 5000,
      what: 'the policy to be in force',
    });
  });

  after(async () => {
    await lab?.stop();
  });

  const get = (path: string, extra: { method?: string; from?: string; headers?: Record<string, string> } = {}) =>
    httpRequest({ port: lab.httpPort, path, method: extra.method, localAddress: extra.from, headers: extra.headers, timeoutMs: 10_000 });

  it('Envoy asks the replicas over HTTP, not gRPC', async () => {
    const before = await authzCalls(lab);
    assert.equal((await get('/products/1')).status, 200);
    const after = await authzCalls(lab);
    assert.equal(after.http - before.http, 1, 'one HTTP ext_authz call');
    assert.equal(after.grpc, before.grpc, 'no gRPC Check');
  });

  it('a rule on content-length sees the client request\'s, which Envoy passes in the peer header', async () => {
    const small = await httpRequest({ port: lab.httpPort, path: '/upload/1', method: 'POST', body: 'x'.repeat(10), timeoutMs: 10_000 });
    assert.equal(small.status, 200, small.body);
    const big = await httpRequest({ port: lab.httpPort, path: '/upload/1', method: 'POST', body: 'x'.repeat(2000), timeoutMs: 10_000 });
    assert.equal(big.status, 403, big.body);
    assert.equal(JSON.parse(big.body).rule, 'no-big-uploads');
  });

  it('lets an allowed request reach the app, with the decision id upstream and the call header gone', async () => {
    const r = await get('/products/1?x=1', { method: 'POST', headers: { 'x-api-key': 'k' } });
    assert.equal(r.status, 200);
    const echo = JSON.parse(r.body);
    assert.equal(echo.upstream, 'app');
    assert.equal(echo.method, 'POST');
    assert.equal(echo.path, '/products/1?x=1', 'the app sees the path without the call prefix');
    assert.match(echo.headers['x-middlebox-decision'], /\S+/);
    assert.equal(echo.headers[HTTP_AUTHZ_PEER_HEADER], undefined);
  });

  it('denies by path with 403, a JSON body naming policy and rule, and the decision id', async () => {
    const r = await get('/admin/users');
    assert.equal(r.status, 403);
    assert.equal(r.headers['content-type'], 'application/json');
    assert.match(String(r.headers['x-middlebox-decision']), /\S+/);
    const body = JSON.parse(r.body);
    assert.deepEqual([body.policy, body.rule, body.middlebox, body.reason], ['shop', 'no-admin', 'firewall', 'firewall_rule_deny']);
    assert.equal(body.decision, r.headers['x-middlebox-decision']);
  });

  it('a path rule cannot be dodged with dot segments or doubled slashes', async () => {
    for (const p of ['/x/../admin/users', '//admin/users', '/admin//users', '/%61dmin/users']) {
      assert.equal((await get(p)).status, 403, p);
    }
  });

  it('denies by method and by header value, not by other methods or values', async () => {
    const del = await get('/orders/7', { method: 'DELETE' });
    assert.equal(del.status, 403);
    assert.equal(JSON.parse(del.body).rule, 'orders-read-only');
    assert.equal((await get('/orders/7')).status, 200);
    assert.equal((await get('/products/1', { headers: { 'x-debug': '1' } })).status, 403);
    assert.equal((await get('/products/1', { headers: { 'x-debug': '0' } })).status, 200);
  });

  it('decides on the real client address: neither x-forwarded-for nor a forged call header changes it', async () => {
    assert.equal((await get('/products/1', { from: '127.0.0.66' })).status, 403);
    assert.equal((await get('/products/1', { from: '127.0.0.65' })).status, 200);
    assert.equal((await get('/products/1', { headers: { 'x-forwarded-for': '127.0.0.66' } })).status, 200);
    // Envoy replaces the client's header of that name with what it knows of the connection.
    const forgedBlocked = await get('/products/1', { from: '127.0.0.66', headers: { [HTTP_AUTHZ_PEER_HEADER]: 'src=127.0.0.1:1 dst=127.0.0.1:2 len= uri=' } });
    assert.equal(forgedBlocked.status, 403);
    const forgedOther = await get('/products/1', { headers: { [HTTP_AUTHZ_PEER_HEADER]: 'src=127.0.0.66:1 dst=127.0.0.1:2 len= uri=spiffe://forged' } });
    assert.equal(forgedOther.status, 200);
    // Nor does the forged header reach the app, which may trust every x-middlebox-* it gets.
    assert.equal(JSON.parse(forgedOther.body).headers[HTTP_AUTHZ_PEER_HEADER], undefined);
  });

  it('a shadow rule lets the request through and says so; a client cannot forge the middlebox headers', async () => {
    const shadow = await get('/beta/feature');
    assert.equal(shadow.status, 200);
    assert.equal(JSON.parse(shadow.body).headers['x-middlebox-shadow-deny'], 'firewall/shop/beta');
    const forged = JSON.parse((await get('/products/1', { headers: { 'x-middlebox-shadow-deny': 'forged', 'x-middlebox-decision': 'forged', 'x-middlebox-nat': 'forged' } })).body);
    assert.equal(forged.headers['x-middlebox-shadow-deny'], undefined);
    assert.equal(forged.headers['x-middlebox-nat'], undefined);
    assert.notEqual(forged.headers['x-middlebox-decision'], 'forged');
  });

  it('strict: a burst of 60 admits exactly the limit (20); 429s carry retry-after and ratelimit-*, 200s ratelimit-*', async () => {
    const rs = await Promise.all(Array.from({ length: 60 }, () => get('/strict/a')));
    assert.equal(rs.filter((r) => r.status === 200).length, 20, statuses(rs));
    assert.equal(rs.filter((r) => r.status === 429).length, 40, statuses(rs));
    const denied = rs.find((r) => r.status === 429)!;
    assert.match(String(denied.headers['retry-after']), /^\d+$/);
    assert.equal(denied.headers['ratelimit-limit'], '20');
    assert.equal(denied.headers['ratelimit-remaining'], '0');
    assert.equal(JSON.parse(denied.body).rule, 'exact');
    const allowed = rs.find((r) => r.status === 200)!;
    assert.equal(allowed.headers['ratelimit-limit'], '20');
    assert.match(String(allowed.headers['ratelimit-remaining']), /^\d+$/);
  });

  it('keys from `by` count separately, read from the client\'s headers', async () => {
    const a = [await get('/keys/1', { headers: { 'x-api-key': 'a' } }), await get('/keys/1', { headers: { 'x-api-key': 'a' } }), await get('/keys/1', { headers: { 'x-api-key': 'a' } })];
    assert.deepEqual(a.map((r) => r.status), [200, 200, 429]);
    assert.equal((await get('/keys/1', { headers: { 'x-api-key': 'b' } })).status, 200);
  });

  it('a replica stopped under load costs no request: it drains, Envoy\'s HTTP health checks take it out', async () => {
    const results: HttpResult[] = [];
    let running = true;
    const load = (async () => {
      for (let i = 0; running && i < 2000; i++) results.push(await get('/products/1'));
    })();
    await new Promise((r) => setTimeout(r, 300));
    await lab.replicas[0]!.stop();
    await waitFor(async () => (await lab.envoy.clusterHealthy('middlebox_http')) === 1, { timeoutMs: 10_000, what: 'Envoy to see one healthy HTTP listener' });
    await new Promise((r) => setTimeout(r, 300));
    running = false;
    await load;
    assert.ok(results.length > 20, `only ${results.length} requests ran`);
    assert.equal(results.filter((r) => r.status !== 200).length, 0, statuses(results));
  });
});

/** Calls Envoy made to the replicas over HTTP (cluster middlebox_http) and over gRPC (middlebox). */
async function authzCalls(lab: SidecarLab): Promise<{ http: number; grpc: number }> {
  const stats = await lab.envoy.stats('^cluster\\.middlebox(_http)?\\.upstream_rq_total$');
  const count = (name: string) => {
    const n = stats.get(name);
    // A stat that is not there would make "no calls" pass with nothing measured.
    assert.ok(n !== undefined, `Envoy has no ${name}: ${[...stats.keys()].join(', ')}`);
    return n;
  };
  return { http: count('cluster.middlebox_http.upstream_rq_total'), grpc: count('cluster.middlebox.upstream_rq_total') };
}

function statuses(rs: HttpResult[]): string {
  const counts = new Map<number, number>();
  for (const r of rs) counts.set(r.status, (counts.get(r.status) ?? 0) + 1);
  return [...counts].map(([s, n]) => `${s}×${n}`).join(' ');
}

