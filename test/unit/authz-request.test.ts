import assert from 'node:assert/strict';
import { checkResponse } from '../../src/grpc/authz/response';
import { hostWithoutPort, pathWithoutQuery, translateCheckRequest } from '../../src/grpc/authz/request';
import { httpCheck } from '../harness/check';

describe('CheckRequest translation', () => {
  it('reads an HTTP request: method, host without port, path without query, lower-case headers', () => {
    const req = httpCheck({ method: 'post', path: '/a/b?x=1#f', host: 'Shop.Local:8080', headers: { 'X-Key': 'v' } });
    const t = translateCheckRequest(req);
    assert.ok(t.ok);
    assert.equal(t.request.protocol, 'http');
    assert.equal(t.request.method, 'POST');
    assert.equal(t.request.host, 'shop.local');
    assert.equal(t.request.path, '/a/b');
    assert.equal(t.request.headers.get('x-key'), 'v');
    assert.equal(t.request.source.ip?.text, '127.0.0.1');
    assert.equal(t.request.destination.port, 15006);
  });

  it('a request without HTTP attributes is a TCP connection', () => {
    const t = translateCheckRequest({ attributes: { source: { address: { socket_address: { address: '::ffff:10.1.2.3', port_value: 5 } } } } });
    assert.ok(t.ok);
    assert.equal(t.request.protocol, 'tcp');
    assert.equal(t.request.source.ip?.family, 4, 'IPv4-mapped addresses are unmapped');
    assert.equal(t.request.method, undefined);
  });

  it('reads header_map (encode_raw_headers) as well as headers', () => {
    const t = translateCheckRequest({
      attributes: {
        source: {},
        request: { http: { method: 'GET', path: '/', header_map: { headers: [{ key: 'X-A', raw_value: Buffer.from('1') }, { key: 'x-a', value: '2' }] } } },
      },
    });
    assert.ok(t.ok);
    assert.equal(t.request.headers.get('x-a'), '1,2');
  });

  it('keeps the peer principal', () => {
    const req = httpCheck();
    req.attributes!.source!.principal = 'spiffe://cluster.local/ns/shop/sa/web';
    const t = translateCheckRequest(req);
    assert.ok(t.ok);
    assert.equal(t.request.source.principal, 'spiffe://cluster.local/ns/shop/sa/web');
  });

  it('refuses missing attributes, bad addresses and oversized headers with reasons', () => {
    const cases: Array<[unknown, string, number]> = [
      [{}, 'missing_attributes', 400],
      [{ attributes: {} }, 'missing_attributes', 400],
      [{ attributes: { source: { address: { socket_address: { address: '999.1.1.1', port_value: 1 } } } } }, 'invalid_source_address', 400],
      [{ attributes: { source: {}, destination: { address: { socket_address: { address: 'x', port_value: 1 } } } } }, 'invalid_destination_address', 400],
    ];
    for (const [msg, reason, status] of cases) {
      const t = translateCheckRequest(msg as never);
      assert.ok(!t.ok, reason);
      assert.equal(t.reason, reason);
      assert.equal(t.status, status);
    }
    const big = translateCheckRequest(httpCheck({ headers: { 'x-big': 'a'.repeat(70_000) } }), { maxHeaderBytes: 64 * 1024 });
    assert.ok(!big.ok);
    assert.equal(big.reason, 'headers_too_large');
    assert.equal(big.status, 431);
  });

  it('strips ports from hosts, including IPv6 literals', () => {
    assert.equal(hostWithoutPort('[::1]:8080'), '::1');
    assert.equal(hostWithoutPort('[0:0:0::1]:8080'), '::1', 'IPv6 literals in canonical form');
    assert.equal(hostWithoutPort('[2001:DB8:0::1]'), '2001:db8::1');
    assert.equal(hostWithoutPort('example.com.'), 'example.com');
    assert.equal(hostWithoutPort('a.b:1'), 'a.b');
    assert.equal(pathWithoutQuery('/x?y'), '/x');
  });
});

describe('CheckResponse building', () => {
  it('an HTTP denial carries status, JSON body and overwriting headers', () => {
    const res = checkResponse({ allow: false, status: 403, middlebox: 'firewall', policy: 'p', rule: 'r', reason: 'firewall_rule_deny' }, 'd1', 'http');
    assert.equal(res.status.code, 7);
    assert.equal(res.denied_response?.status.code, 403);
    assert.deepEqual(JSON.parse(res.denied_response!.body), { error: 'forbidden', reason: 'firewall_rule_deny', middlebox: 'firewall', policy: 'p', rule: 'r', decision: 'd1' });
    assert.ok(res.denied_response!.headers.every((h) => h.append_action === 2));
  });

  it('a TCP denial is a bare PERMISSION_DENIED; a TCP allow is OK', () => {
    assert.deepEqual(checkResponse({ allow: true, reason: 'allowed' }, 'd', 'tcp').status, { code: 0 });
    const denied = checkResponse({ allow: false, status: 403, reason: 'firewall_rule_deny', policy: 'p', rule: 'r' }, 'd', 'tcp');
    assert.equal(denied.status.code, 7);
    assert.equal(denied.denied_response, undefined);
  });
});
