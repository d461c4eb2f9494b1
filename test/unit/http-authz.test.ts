// The HTTP ext_authz listener (src/grpc/authz/http.ts) on loopback, asked as Envoy's http_service
// asks it, with the real decision (AuthorizationService) behind it: what it reads from the call,
// what it answers, and what it refuses. Envoy's side is tested in test/integration/http-authz-envoy.
import assert from 'node:assert/strict';
import http from 'node:http';
import {
  HTTP_AUTHZ_PATH_PREFIX,
  HTTP_AUTHZ_PEER_HEADER,
  parsePeer,
  startHttpAuthzListener,
  type HttpAuthzListener,
} from '../../src/grpc/authz/http';
import type { Translation } from '../../src/grpc/authz/request';
import { AuthorizationService } from '../../src/grpc/authz/service';
import { silentLogger } from '../../src/observability/logger';
import { StaticPolicySource } from '../../src/state/port';
import { LocalRateLimitStore } from '../../src/state/ratelimit/local';
import { MemoryNatTable } from '../../src/state/nat/memory';
import { parsePolicies } from '../../src/policy/parse';
import { compileSnapshot } from '../../src/policy/compile';
import { NO_ADMIN_POLICY } from '../harness/policy';

const POLICY = `${NO_ADMIN_POLICY}      - { name: office, action: allow, paths: ["/office/*"], from: ["2001:db8::/32"], ports: [8443] }
      - { name: office-only, action: deny, paths: ["/office/*"], from: ["0.0.0.0/0", "::/0"] }
      - { name: payments, action: deny, paths: ["/pay/*"], principals: ["spiffe://evil/*"] }
      - { name: pseudo, action: deny, headers: [{ name: ":authority", value: "blocked.local" }] }
  rateLimits:
    - { name: tight, match: { paths: ["/limited/*"] }, limit: 1, per: 1m, algorithm: fixed-window, consistency: local, headers: true }
`;

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

describe('HTTP ext_authz listener', () => {
  let listener: HttpAuthzListener;
  let ready = true;
  let seen: Translation | undefined;

  before(async () => {
    const { documents, errors } = parsePolicies(POLICY, 'test');
    assert.deepEqual(errors, []);
    const service = new AuthorizationService({
      policies: new StaticPolicySource(compileSnapshot(documents, 1)),
      ports: { rateLimits: new LocalRateLimitStore({ replicas: () => 1 }), nat: new MemoryNatTable() },
      logger: silentLogger(),
    });
    listener = await startHttpAuthzListener({
      where: { host: '127.0.0.1', port: 0 },
      limits: { maxHeaderBytes: 2048 },
      decide: (t) => {
        seen = t;
        return service.decideTranslated(t);
      },
      readiness: () => (ready ? { ready: true } : { ready: false, reason: 'draining' }),
      logger: silentLogger(),
    });
  });

  after(() => listener?.close(1000));

  /** One call as Envoy makes it: prefix + path, the client's headers, the peer header. */
  function ask(path: string, opts: { method?: string; headers?: Record<string, string>; peer?: string | null; raw?: boolean } = {}): Promise<Answer> {
    const headers: Record<string, string> = { host: 'shop.local', 'x-request-id': 'req-1', ...opts.headers };
    if (opts.peer !== null) headers[HTTP_AUTHZ_PEER_HEADER] = opts.peer ?? 'src=10.0.0.7:40000 dst=10.0.0.1:8080 len= uri=';
    return new Promise((resolve, reject) => {
      const req = http.request(
        { host: '127.0.0.1', port: listener.port, method: opts.method ?? 'GET', path: opts.raw ? path : HTTP_AUTHZ_PATH_PREFIX + path, headers, timeout: 5000 },
        (res) => {
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (c) => (body += c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
        },
      );
      req.on('timeout', () => req.destroy(new Error('no answer in 5 s')));
      req.on('error', reject);
      req.end();
    });
  }

  function request() {
    assert.ok(seen?.ok, `translation refused: ${JSON.stringify(seen)}`);
    return seen.request;
  }

  it('allows with 200, the decision id (the request id) and nothing else to copy', async () => {
    const r = await ask('/products/1?q=2', { method: 'POST', headers: { 'x-api-key': 'k' } });
    assert.equal(r.status, 200);
    assert.equal(r.headers['x-middlebox-decision'], 'req-1');
    // The peer header, as a client may have sent it on the request itself, is always removed.
    assert.equal(r.headers['x-envoy-auth-headers-to-remove'], HTTP_AUTHZ_PEER_HEADER);
    assert.equal(r.headers.date, undefined);
    assert.equal(r.headers['keep-alive'], undefined);
    assert.equal(r.body, '');
    const req = request();
    assert.deepEqual([req.method, req.host, req.path, req.requestId], ['POST', 'shop.local', '/products/1', 'req-1']);
    assert.deepEqual([req.source.ip?.text, req.source.port, req.destination.ip?.text, req.destination.port], ['10.0.0.7', 40000, '10.0.0.1', 8080]);
    assert.equal(req.source.principal, undefined);
    assert.equal(req.headers.get('x-api-key'), 'k');
    assert.equal(req.headers.get(':path'), '/products/1?q=2');
    assert.equal(req.headers.get(':method'), 'POST');
    assert.equal(req.headers.get(':authority'), 'shop.local');
    for (const callHeader of [HTTP_AUTHZ_PEER_HEADER, 'content-length', 'host']) assert.equal(req.headers.has(callHeader), false, callHeader);
  });

  it('takes the client request\'s content-length from the peer header, not the call\'s, and header values as UTF-8', async () => {
    await ask('/upload', { method: 'POST', peer: 'src=10.0.0.7:1 dst=10.0.0.1:2 len=1234 uri=', headers: { 'x-name': Buffer.from('café', 'utf8').toString('latin1') } });
    assert.equal(request().headers.get('content-length'), '1234');
    assert.equal(request().headers.get('x-name'), 'café');
  });

  it('denies with the rule\'s status, JSON body and decision id', async () => {
    const r = await ask('/admin/x');
    assert.equal(r.status, 403);
    assert.equal(r.headers['content-type'], 'application/json');
    const body = JSON.parse(r.body);
    assert.deepEqual([body.rule, body.policy, body.decision], ['no-admin', 'shop', 'req-1']);
  });

  it('reads IPv6 addresses, destination ports and the peer certificate\'s URI from the peer header', async () => {
    assert.equal((await ask('/office/a', { peer: 'src=[2001:db8::5]:1234 dst=[2001:db8::1]:8443 len= uri=' })).status, 200);
    assert.equal(request().source.ip?.text, '2001:db8::5');
    assert.equal((await ask('/office/a', { peer: 'src=[2001:db8::5]:1234 dst=[2001:db8::1]:8080 len= uri=' })).status, 403, 'another port');
    assert.equal((await ask('/office/a', { peer: 'src=[2001:dead::5]:1234 dst=[2001:db8::1]:8443 len= uri=' })).status, 403, 'another network');
    assert.equal((await ask('/pay/1', { peer: 'src=10.0.0.7:1 dst=10.0.0.1:2 len= uri=spiffe://evil/ns/x' })).status, 403);
    assert.equal(request().source.principal, 'spiffe://evil/ns/x');
    assert.equal((await ask('/pay/1', { peer: 'src=10.0.0.7:1 dst=10.0.0.1:2 len= uri=spiffe://good/ns/x' })).status, 200);
    // Several URI SANs: the first, as Envoy's gRPC Check reports the principal.
    assert.equal((await ask('/pay/1', { peer: 'src=10.0.0.7:1 dst=10.0.0.1:2 len= uri=spiffe://good/ns/x,spiffe://evil/ns/x' })).status, 200);
    assert.equal(request().source.principal, 'spiffe://good/ns/x');
  });

  it('a rule on a pseudo-header means what it means over gRPC', async () => {
    assert.equal((await ask('/x', { headers: { host: 'blocked.local' } })).status, 403);
    assert.equal((await ask('/x', { headers: { host: 'open.local' } })).status, 200);
  });

  it('a sidecar that sends only some headers lists them in the peer header; a request reaching a rule on one left out gets 403 headers_not_sent', async () => {
    const sent = await ask('/x', { headers: { host: 'open.local' }, peer: 'src=10.0.0.7:1 dst=10.0.0.1:2 hdrs=:authority,:method,:path,x-request-id len=12 uri=spiffe://a' });
    assert.equal(sent.status, 200, sent.body);
    assert.ok(seen?.ok);
    assert.equal(seen.sentHeaders, ':authority,:method,:path,x-request-id');
    assert.deepEqual([seen.request.destination.ip?.text, seen.request.headers.get('content-length'), seen.request.source.principal], ['10.0.0.1', '12', 'spiffe://a']);
    // The policy's "pseudo" rule reads :authority, which this list leaves out.
    const left = await ask('/x', { headers: { host: 'open.local' }, peer: 'src=10.0.0.7:1 dst=10.0.0.1:2 hdrs=x-request-id len= uri=' });
    assert.equal(left.status, 403);
    const body = JSON.parse(left.body);
    assert.deepEqual([body.reason, body.policy, body.rule, body.error], ['headers_not_sent', 'shop', 'pseudo', 'forbidden']);
    // A request an earlier rule decides never reaches it: decided as usual.
    const admin = await ask('/admin/x', { peer: 'src=10.0.0.7:1 dst=10.0.0.1:2 hdrs=x-request-id len= uri=' });
    assert.equal(JSON.parse(admin.body).reason, 'firewall_rule_deny');
  });

  it('rate-limit headers go on allowed answers; a denial carries retry-after', async () => {
    const first = await ask('/limited/a');
    assert.equal(first.status, 200);
    assert.equal(first.headers['ratelimit-limit'], '1');
    const second = await ask('/limited/a');
    assert.equal(second.status, 429);
    assert.match(String(second.headers['retry-after']), /^\d+$/);
  });

  it('names the client\'s own x-middlebox-* headers for Envoy to remove', async () => {
    const r = await ask('/products/1', { headers: { 'x-middlebox-nat': 'forged', 'x-middlebox-decision': 'forged' } });
    assert.equal(r.status, 200);
    // x-middlebox-decision is overwritten by the answer, so only the other is removed.
    assert.equal(r.headers['x-envoy-auth-headers-to-remove'], `${HTTP_AUTHZ_PEER_HEADER},x-middlebox-nat`);
  });

  it('refuses a call without a valid peer header, or with an address that is not an IP, with 400', async () => {
    for (const peer of [null, 'garbage', 'src=10.0.0.7:1 dst=10.0.0.1:2 uri=']) {
      const r = await ask('/products/1', { peer });
      assert.equal(r.status, 400, String(peer));
      assert.equal(JSON.parse(r.body).reason, 'missing_attributes');
    }
    const bad = await ask('/products/1', { peer: 'src=not-an-ip:1 dst=10.0.0.1:2 len= uri=' });
    assert.deepEqual([bad.status, JSON.parse(bad.body).reason], [400, 'invalid_source_address']);
  });

  it('refuses headers past --max-header-bytes with 431 headers_too_large, and past the parser\'s limit with 431 too', async () => {
    const r = await ask('/products/1', { headers: { 'x-big': 'a'.repeat(3000) } });
    assert.deepEqual([r.status, JSON.parse(r.body).reason], [431, 'headers_too_large']);
    const huge = await ask('/products/1', { headers: { 'x-huge': 'a'.repeat(40 * 1024) } });
    assert.equal(huge.status, 431);
  });

  it('/healthz says SERVING (200) or why not (503); other paths are 404, never a decision', async () => {
    const ok = await ask('/healthz', { raw: true });
    assert.deepEqual([ok.status, JSON.parse(ok.body).status], [200, 'SERVING']);
    ready = false;
    try {
      const draining = await ask('/healthz', { raw: true });
      assert.deepEqual([draining.status, JSON.parse(draining.body).reason], [503, 'draining']);
    } finally {
      ready = true;
    }
    seen = undefined;
    assert.equal((await ask('/admin/x', { raw: true })).status, 404);
    assert.equal(seen, undefined);
  });

  it('parsePeer takes the URI as the rest of the value and refuses anything else', () => {
    assert.deepEqual(parsePeer('src=1.2.3.4:5 dst= len=12 uri=spiffe://a/b c'), { src: '1.2.3.4:5', dst: '', len: '12', uri: 'spiffe://a/b c' });
    assert.deepEqual(parsePeer('src= dst= len= uri='), { src: '', dst: '', len: '', uri: '' });
    assert.deepEqual(parsePeer('src= dst=1.2.3.4:5 hdrs=a,:path len=3 uri=x hdrs=b'), { src: '', dst: '1.2.3.4:5', len: '3', hdrs: 'a,:path', uri: 'x hdrs=b' });
    assert.deepEqual(parsePeer('src= dst= hdrs= len= uri='), { src: '', dst: '', len: '', hdrs: '', uri: '' });
    // Only Envoy's part, before len=, can carry the list: the client's length and SANs cannot.
    assert.deepEqual(parsePeer('src= dst= len= uri=a hdrs=b'), { src: '', dst: '', len: '', uri: 'a hdrs=b' });
    for (const v of [undefined, '', 'dst=1 src=2 len= uri=', 'src=1 len= uri=2 dst=3', 'src= dst= uri=', 'src= dst= len=x uri=', 'src= dst= len=1 hdrs=a uri=', 'src= dst= hdrs=A,b len= uri=', 'src= dst= hdrs=a;b len= uri=', ['src= dst= len= uri=']]) {
      assert.equal(parsePeer(v), undefined, JSON.stringify(v));
    }
  });
});
